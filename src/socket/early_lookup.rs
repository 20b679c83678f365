//! Starts a handshake's session lookup as its engine.io session opens
//! (`session::prefetch` says why), and hands it to the CONNECT.

use std::sync::Arc;
use std::time::Instant;

use http::Method;

use crate::session::prefetch::{Early, Prefetch, Taken};
use crate::state::AppState;

/// In front of the Socket.IO layer, behind `compact` (whose extensions it
/// adds to): a request that opens an engine.io session, with a cookie that
/// names a session, carries that session's lookup from here on. Behind the
/// origin guard and the handshake limits, so a refused request starts none.
pub fn start(state: &AppState, mut req: axum::extract::Request) -> axum::extract::Request {
    if req.method() != Method::GET
        || !crate::engine_path::is_engine_path(req.uri().path())
        || !crate::limits::is_handshake(req.uri().query())
    {
        return req;
    }
    let cookie = crate::session::cookie::cookie_header(req.headers());
    if let Some(early) = state.auth.prefetch(cookie.as_deref()) {
        state.metrics.session_lookups_early.inc();
        req.extensions_mut().insert(Arc::new(Prefetch::new(early)));
    }
    req
}

/// The early lookup of the request a CONNECT came on, if it may answer it:
/// fresh, and its session's deletion not heard since it started.
pub fn take(state: &AppState, parts: &http::request::Parts) -> Option<Early> {
    let prefetch = parts.extensions.get::<Arc<Prefetch>>()?;
    match prefetch.take(Instant::now()) {
        Taken::Fresh(early) if !state.watcher.heard.since(&early.sid, early.started) => Some(early),
        Taken::Fresh(_) | Taken::Stale => {
            state.metrics.session_lookups_stale.inc();
            None
        }
        Taken::Gone => None,
    }
}
