//! The Origin allowlist as an HTTP layer, in front of the Socket.IO layer so
//! that both transports (the long-polling requests and the websocket upgrade)
//! are checked before engine.io sees them, and in front of every
//! state-changing route (CSRF). CORS response headers alone never protect a
//! websocket: this layer refuses. It also holds new engine.io sessions to the
//! per-IP handshake rate. Which origins pass and how fast is `origin`'s and
//! `limits`'s to say; this layer only enforces them.

use std::future::Ready;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tower_http::cors::{AllowHeaders, AllowOrigin, Cors, CorsLayer};

use crate::audit::event::{Client, Event};
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

/// The guard over the routes and the Socket.IO layer. A plain service, not
/// `axum::middleware::from_fn`: a long-poll GET is held open for up to the
/// ping interval, and everything its future holds is held per socket. This
/// one decides before calling in and then is the inner future itself: no
/// box, no copy of the state or of the service stack below, per request.
#[derive(Clone)]
pub struct GuardLayer {
    state: AppState,
}

impl GuardLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    state: AppState,
}

impl<S> tower::Service<Request> for Guard<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    /// A refusal is boxed: inline, its response would size the future of
    /// every request let through, held long-polls among them.
    type Future = Either<Pin<Box<Ready<Result<Response, S::Error>>>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match refusal(&self.state, &req) {
            Some(refused) => Either::Left(Box::pin(std::future::ready(Ok(refused)))),
            None => Either::Right(self.inner.call(req)),
        }
    }
}

/// The answer to a request the guard stops, recorded; `None` lets it in.
fn refusal(state: &AppState, req: &Request) -> Option<Response> {
    if !needs_check(req) {
        return None;
    }
    match state.allowlist.check_headers(req.headers()) {
        Verdict::Allowed | Verdict::NoOrigin => {
            if is_engine_path(req.uri().path())
                && crate::limits::is_handshake(req.uri().query())
                && !state
                    .handshakes
                    .allow(client_addr(req).unwrap_or(crate::limits::UNKNOWN_CLIENT))
            {
                return Some(too_many_handshakes(state, req));
            }
            None
        }
        Verdict::Rejected(rejection) => {
            record_violation(state, req, &rejection);
            Some((StatusCode::FORBIDDEN, crate::messages::ORIGIN_NOT_ALLOWED).into_response())
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
    let limits = &state.config.limits;
    state.events.report(
        client(req),
        Event::LimitRefused {
            limit: "handshakes_per_ip",
            socket: None,
            details: serde_json::json!({
                "per_second": limits.handshakes_per_ip_per_sec,
                "burst": limits.handshake_burst_per_ip,
            }),
        },
    );
    (
        StatusCode::TOO_MANY_REQUESTS,
        crate::messages::TOO_MANY_HANDSHAKES,
    )
        .into_response()
}

fn client(req: &Request) -> Client<'_> {
    Client {
        ip: client_addr(req),
        headers: Some(req.headers()),
        transport: Some(transport(req)),
    }
}

fn record_violation(state: &AppState, req: &Request, rejection: &Rejection) {
    state.events.report(
        client(req),
        Event::OriginRejected {
            rejection,
            path: req.uri().path(),
            allowlist: &state.allowlist,
        },
    );
}

/// CORS for allowed origins, with credentials, so a browser page on an
/// allowed origin can long-poll with its cookie. Skipped for a Socket.IO
/// request without an `Origin`, which no browser makes cross-origin (a
/// preflight always carries one): its response would only gain a `Vary` and
/// an `Access-Control-Allow-Credentials` that nothing reads, and engine.io's
/// responses are one session's, which clients poll with a cache-busting
/// `t=`. Building those headers cost
/// every long-polling request of a non-browser client (and a same-origin
/// page's GETs) a header map, kept for as long as a long-poll is held. The
/// other routes always get them, so that a cache keeps `Vary: Origin`.
pub fn cors(allowlist: Arc<Allowlist>) -> CorsWhereAskedLayer {
    CorsWhereAskedLayer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                allowlist.allows(origin.as_bytes())
            }))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(AllowHeaders::mirror_request()),
    )
}

#[derive(Clone)]
pub struct CorsWhereAskedLayer(CorsLayer);

impl<S> tower::Layer<S> for CorsWhereAskedLayer {
    type Service = CorsWhereAsked<S>;

    fn layer(&self, inner: S) -> CorsWhereAsked<S> {
        CorsWhereAsked(self.0.layer(inner))
    }
}

/// [`cors`]'s service: tower-http's CORS, or straight to the inner service.
#[derive(Clone)]
pub struct CorsWhereAsked<S>(Cors<S>);

impl<S, B> tower::Service<Request> for CorsWhereAsked<S>
where
    S: tower::Service<Request, Response = http::Response<B>>,
    B: Default,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Either<tower_http::cors::ResponseFuture<S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if req.headers().contains_key(header::ORIGIN) || !is_engine_path(req.uri().path()) {
            Either::Left(self.0.call(req))
        } else {
            Either::Right(self.0.get_mut().call(req))
        }
    }
}
