//! The browser client (`web/`) and, on SQLite only, the development sign-in
//! that gives a browser a session cookie for a seeded user. Holds no session
//! rules and writes no session row: `session::mint` writes it as the Node app
//! would.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{FromRequest, Request, State};
use axum::handler::HandlerWithoutStateExt;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde::Deserialize;
use tower_http::services::ServeDir;

use crate::config::Config;
use crate::session::mint::mint_session;
use crate::session::rules::{self as session, UserId};
use crate::state::AppState;

pub const DEV_LOGIN_PATH: &str = "/dev/login";
/// Where a browser lands after the development sign-in.
pub const APP_PAGE: &str = "/app.html";

/// The folder served at `/`: `WEB_DIR` when set; else the crate's own
/// `web/` on SQLite (development); else nothing, so a production server
/// never serves files from a path of the machine it was built on.
pub fn web_dir(config: &Config) -> Option<PathBuf> {
    match &config.web_dir {
        Some(dir) => Some(dir.clone()),
        None if config.is_development() => {
            Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/web")))
        }
        None => None,
    }
}

/// The static client, and `POST /dev/login` when the database is SQLite
/// (absent, so 404, on PostgreSQL).
pub fn routes(state: &AppState) -> Router<AppState> {
    let mut router = Router::new();
    if state.config.is_development() {
        router = router.route(DEV_LOGIN_PATH, post(dev_login));
    }
    if let Some(dir) = web_dir(&state.config) {
        if !dir.is_dir() {
            tracing::warn!(dir = %dir.display(), "web client folder not found: nothing is served at /");
        } else {
            tracing::info!(dir = %dir.display(), "serving the browser client at /");
        }
        // Unknown paths and other methods than GET/HEAD are 404, as they
        // would be without the static files.
        let files = ServeDir::new(dir)
            .call_fallback_on_method_not_allowed(true)
            .fallback(not_found.into_service());
        router = router.fallback_service(files);
    }
    router
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, crate::messages::NOT_FOUND)
}

#[derive(Deserialize)]
struct DevLogin {
    user: String,
}

/// Whether `user` is one of the development users (sockgate's own
/// `app_user` table).
async fn dev_user_exists(state: &AppState, user: &str) -> Result<bool, sea_orm::DbErr> {
    use sea_orm::ConnectionTrait;
    let mut sql = crate::db::sql::Sql::new(state.tables.backend);
    let param = sql.bind(user);
    sql.text = format!(
        "SELECT 1 AS one FROM {} WHERE id = {param}",
        state.tables.namespace.table("app_user")
    );
    Ok(state.db.query_one_raw(sql.build()).await?.is_some())
}

/// Development sign-in (SQLite only): a form or JSON body `{user}` naming an
/// existing `app_user`; writes a logged-in session as the Node app would,
/// sets its cookie and sends the browser to the app page.
async fn dev_login(State(state): State<AppState>, req: Request) -> Response {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
    let body = if is_json {
        Json::<DevLogin>::from_request(req, &())
            .await
            .map(|Json(b)| b)
            .map_err(IntoResponse::into_response)
    } else {
        Form::<DevLogin>::from_request(req, &())
            .await
            .map(|Form(b)| b)
            .map_err(IntoResponse::into_response)
    };
    let user = match body {
        Ok(body) => body.user.trim().to_owned(),
        Err(rejection) => return rejection,
    };
    match dev_user_exists(&state, &user).await {
        Ok(true) => {}
        Ok(false) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("no development user {user:?}"),
            )
                .into_response();
        }
        Err(e) => return server_error("reading app_user", &e),
    }
    let ttl: Duration = state.config.session_ttl();
    let auth = &state.auth;
    let minted =
        match mint_session(&auth.store, &auth.secrets, &UserId::new(user.clone()), ttl).await {
            Ok(minted) => minted,
            Err(e) => return server_error("writing the session", &*e),
        };
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax",
        state.config.cookie_name, minted.cookie_value
    );
    let Ok(cookie) = HeaderValue::from_str(&cookie) else {
        return server_error(
            "building the cookie",
            &"SESSION_COOKIE_NAME is not a valid header",
        );
    };
    tracing::info!(user = %user, session = %session::fingerprint(&minted.sid), "development sign-in");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, HeaderValue::from_static(APP_PAGE)),
        ],
    )
        .into_response()
}

fn server_error(what: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "development sign-in failed: {what}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "development sign-in failed",
    )
        .into_response()
}
