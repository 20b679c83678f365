//! The Origin allowlist as an HTTP layer, in front of the Socket.IO layer so
//! that both transports (the long-polling requests and the websocket
//! upgrade) are checked before engine.io sees them, and in front of every
//! state-changing route (CSRF). CORS response headers alone never protect a
//! websocket: this layer refuses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::audit::writer::{self as audit, AuditEvent, Severity};
use crate::engine_path::is_engine_path;
use crate::origin::{Allowlist, Rejection, Verdict};
use crate::state::AppState;

fn transport(req: &Request) -> &'static str {
    if !is_engine_path(req.uri().path()) {
        return "http";
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade
        || req
            .uri()
            .query()
            .is_some_and(|q| q.contains("transport=websocket"))
    {
        "websocket"
    } else {
        "polling"
    }
}

fn needs_check(req: &Request) -> bool {
    is_engine_path(req.uri().path())
        || !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
}

pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !needs_check(&req) {
        return next.run(req).await;
    }
    match state.allowlist.check_headers(req.headers()) {
        Verdict::Allowed | Verdict::NoOrigin => {
            if is_engine_path(req.uri().path())
                && crate::limits::is_handshake(req.uri().query())
                && !state
                    .handshakes
                    .allow(client_addr(&req).unwrap_or(crate::limits::UNKNOWN_CLIENT))
            {
                return too_many_handshakes(&state, &req);
            }
            next.run(req).await
        }
        Verdict::Rejected(rejection) => {
            record_violation(&state, &req, &rejection);
            (StatusCode::FORBIDDEN, crate::messages::ORIGIN_NOT_ALLOWED).into_response()
        }
    }
}

fn client_addr(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

/// Over the per-IP rate of new engine.io sessions: 429 before the engine
/// allocates anything.
fn too_many_handshakes(state: &AppState, req: &Request) -> Response {
    state.metrics.refused("handshakes_per_ip");
    let ip = client_addr(req);
    let limits = &state.config.limits;
    let mut event = crate::audit::refusal::limit_event(
        "handshakes_per_ip",
        ip,
        serde_json::json!({
            "per_second": limits.handshakes_per_ip_per_sec,
            "burst": limits.handshake_burst_per_ip,
            "transport": transport(req),
        }),
    );
    event.headers = Some(audit::audit_headers(req.headers()));
    crate::audit::refusal::record(state, ip, event, |suppressed| {
        tracing::warn!(ip = ?ip, suppressed_since_last = suppressed, "handshake refused: too many from this IP");
    });
    (
        StatusCode::TOO_MANY_REQUESTS,
        crate::messages::TOO_MANY_HANDSHAKES,
    )
        .into_response()
}

fn record_violation(state: &AppState, req: &Request, rejection: &Rejection) {
    let transport = transport(req);
    state
        .metrics
        .origin_violations
        .get_or_create(&vec![("transport", transport)])
        .inc();
    let Some(suppressed) = state.violations.admit() else {
        return;
    };
    let client_ip = client_addr(req).map(|ip| ip.to_string());
    let shown = rejection.shown();
    let allowlist = state.allowlist.describe();
    tracing::warn!(origin = %shown, transport, ip = ?client_ip, path = req.uri().path(), allowlist = %allowlist,
        reason = rejection.reason(), suppressed_since_last = suppressed, "origin rejected");
    let mut event = AuditEvent::new(audit::action::ORIGIN_REJECTED, Severity::Warn);
    event.reason = Some(rejection.reason().to_owned());
    event.client_ip = client_ip;
    event.headers = Some(audit::audit_headers(req.headers()));
    event.details = Some(serde_json::json!({
        "origin": shown,
        "transport": transport,
        "path": req.uri().path(),
        "allowlist": allowlist,
        "suppressed_since_last": suppressed,
    }));
    state.audit.record(event);
}

/// CORS for allowed origins, with credentials, so a browser page on an
/// allowed origin can long-poll with its cookie.
pub fn cors(allowlist: Arc<Allowlist>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            allowlist.allows(origin.as_bytes())
        }))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
}
