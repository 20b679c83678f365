//! `POST /api/admin/guest/{guestId}/disconnect`: an organization admin
//! soft-locks a guest and cuts them off every socket on every node. The
//! Origin guard in front of it refuses cross-site posts. Only parses and
//! answers: who is asking is `session::auth`'s decision, who may lock whom
//! and the lock itself are `guests`'s.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::guests::{self, LockError, ReasonError};
use crate::live::fleet::FleetError;
use crate::session::auth::{AuthError, Credentials};
use crate::session::rules::UserId;
use crate::state::AppState;

/// Every refusal of the admin route, with its status and message here only.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("Authentication required")]
    Unauthenticated,
    #[error("Guest not found")]
    UnknownGuest,
    #[error("Forbidden")]
    NotAdmin,
    #[error("Invalid request body: {0}")]
    BadBody(String),
    #[error("Service unavailable")]
    Database(#[from] sea_orm::DbErr),
    #[error("Service unavailable")]
    Store,
    #[error("Guest locked, but their sockets could not all be reached")]
    Fleet(#[from] FleetError),
}

impl From<LockError> for AdminError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::NotAdmin => AdminError::NotAdmin,
            LockError::UnknownGuest => AdminError::UnknownGuest,
            LockError::Database(e) => AdminError::Database(e),
            LockError::Fleet(e) => AdminError::Fleet(e),
        }
    }
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AdminError::UnknownGuest => StatusCode::NOT_FOUND,
            AdminError::NotAdmin => StatusCode::FORBIDDEN,
            AdminError::BadBody(_) => StatusCode::BAD_REQUEST,
            AdminError::Database(_) | AdminError::Store | AdminError::Fleet(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl AdminError {
    /// Failures on sockgate's side reach the log; refusals of the caller
    /// are the caller's answer (and the guests module's warnings).
    fn log(&self) {
        match self {
            AdminError::Database(e) => tracing::error!(error = %e, "admin route: database error"),
            AdminError::Fleet(e) => {
                tracing::error!(error = %e, "admin route: guest locked but disconnect failed")
            }
            _ => {}
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(json!({ "success": false, "error": self.to_string() })),
        )
            .into_response()
    }
}

#[derive(Deserialize, Default)]
struct Body {
    reason: Option<String>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Disconnected {
    pub success: bool,
    pub disconnected: usize,
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Body, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body::default());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(AdminError::BadBody("expected application/json".into()));
    }
    serde_json::from_slice(body).map_err(|e| AdminError::BadBody(e.to_string()))
}

/// The caller, from their session cookie only.
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<UserId, AdminError> {
    let cookie = crate::session::cookie::cookie_header(headers);
    let creds = Credentials {
        cookie_header: cookie.as_deref(),
        auth: None,
    };
    match state.auth.authenticate(&creds, Utc::now()).await {
        Ok(ok) => Ok(ok.user_id),
        Err((AuthError::StoreUnavailable(e), _)) => {
            tracing::error!(error = %e, "admin route: session store unreachable");
            Err(AdminError::Store)
        }
        // A locked guest is no admin either.
        Err(_) => Err(AdminError::Unauthenticated),
    }
}

pub async fn disconnect_guest(
    State(state): State<AppState>,
    Path(guest_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Disconnected>, AdminError> {
    lock_guest(&state, &guest_id, &headers, &body)
        .await
        .inspect_err(AdminError::log)
}

async fn lock_guest(
    state: &AppState,
    guest_id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Json<Disconnected>, AdminError> {
    let admin = caller(state, headers).await?;
    let guest = guests::authorize(&state.db, &state.tables, &admin, guest_id).await?;
    // The body only once the caller may act on this guest.
    let body = parse_body(headers, body)?;
    let message = guests::lock_message(body.reason.as_deref())
        .map_err(|e: ReasonError| AdminError::BadBody(e.to_string()))?;
    let disconnected = guests::lock_and_disconnect(
        &state.db,
        &state.tables,
        &state.fleet,
        &state.events,
        &admin,
        &guest,
        &message,
    )
    .await?;
    Ok(Json(Disconnected {
        success: true,
        disconnected,
    }))
}
