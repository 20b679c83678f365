//! HTTP routes around the Socket.IO layer.

use axum::Router;
use axum::routing::get;

use crate::server::AppState;

pub fn router(state: AppState) -> Router {
    let (socket_layer, _io) = crate::socket::layer(state.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .layer(socket_layer)
        .with_state(state)
}
