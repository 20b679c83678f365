//! HTTP routes around the Socket.IO layer.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::AppState;

pub fn router(state: AppState) -> Router {
    let (socket_layer, _io) = crate::socket::layer(state.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::web::routes(&state))
        .layer(socket_layer)
        .layer(crate::origin_guard::cors(state.allowlist.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::origin_guard::guard,
        ))
        .with_state(state)
}

/// Ready when the session database answers.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: session database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "session database unreachable",
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let m = &state.metrics;
    m.audit_buffer_depth.set(state.audit.depth() as i64);
    m.audit_dropped.set(state.audit.dropped() as i64);
    m.audit_written.set(state.audit.written() as i64);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}
