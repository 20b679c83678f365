//! HTTP routes around the Socket.IO layer: health, readiness, metrics, the
//! admin route and the browser client, the Socket.IO layer over the
//! configured adapter, and the layers in front of them, ordered so that a
//! panic anywhere is a counted 500 and the Origin guard sees every request
//! before engine.io does. Holds no rules: a route's work is its own module's,
//! a socket's is `socket::layer`'s.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use socketioxide::adapter::{Adapter, Emitter, LocalAdapter};
use socketioxide::layer::SocketIoLayer;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::config::AdapterKind;
use crate::socket::handshake_request;
use crate::socket::layer as socket;
use anyhow::Context;

use crate::state::AppState;

/// The whole application, as the listener serves it: one service, cloned
/// per request.
pub type App = BoxCloneSyncService<http::Request<Incoming>, Response, Infallible>;

/// The routes, the Socket.IO layer over the configured adapter, and the
/// Origin guard in front of both.
pub async fn router(state: AppState) -> anyhow::Result<App> {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/api/admin/guest/{guest_id}/disconnect",
            post(crate::http::admin::disconnect_guest),
        )
        .merge(crate::http::web::routes(&state))
        .with_state(state.clone());
    let kind = state.config.adapter()?;
    let app = match kind {
        AdapterKind::Local | AdapterKind::Auto => {
            let (layer, io) = socket::layer::<LocalAdapter>(&state, ());
            socket::register(&io);
            stack(&state, layer, routes)
        }
        AdapterKind::Postgres => {
            let pool = crate::db::connect::adapter_pool(&state.config)?;
            let ctr = socketioxide_postgres::PostgresAdapterCtr::new_with_driver(
                crate::db::adapter::ListenDriver::new(pool),
                Default::default(),
            );
            let (layer, io) = socket::layer::<
                socketioxide_postgres::CustomPostgresAdapter<
                    Emitter,
                    crate::db::adapter::ListenDriver,
                >,
            >(&state, ctr);
            socket::register(&io)
                .await
                .context("starting the PostgreSQL adapter")?;
            stack(&state, layer, routes)
        }
        AdapterKind::Redis => {
            use socketioxide_redis::drivers::redis::redis_client;
            let client = redis_client::Client::open(crate::config::resp3(
                state.config.redis_url.as_deref().unwrap_or_default(),
            ))
            .context("REDIS_URL")?;
            let ctr = socketioxide_redis::RedisAdapterCtr::new_with_redis(&client)
                .await
                .context("connecting to Redis")?;
            let (layer, io) =
                socket::layer::<socketioxide_redis::RedisAdapter<Emitter>>(&state, ctr);
            socket::register(&io)
                .await
                .context("starting the Redis adapter")?;
            stack(&state, layer, routes)
        }
    };
    tracing::info!(adapter = ?kind, "Socket.IO adapter");
    Ok(app)
}

/// The layers in front of the routes, outermost first, wrapped once around
/// the whole router. `Router::layer` would wrap each route in each layer
/// instead, boxing every layer's future (and cloning every layer) per
/// request: a held long-poll kept six boxes alive where it now keeps one.
fn stack<A: Adapter>(state: &AppState, socket_io: SocketIoLayer<A>, routes: Router) -> App {
    // The `map_response`s turn the panic catcher's and engine.io's own body
    // types back into axum's: the guard answers with axum's `Response`, and
    // CORS needs a body it can make empty.
    let app = ServiceBuilder::new()
        .map_request(|req: http::Request<Incoming>| req.map(Body::new))
        .map_response(IntoResponse::into_response)
        .layer(catch_panics(state.metrics.clone()))
        .layer(crate::http::origin_guard::GuardLayer::new(state.clone()))
        .layer(crate::http::origin_guard::cors(state.allowlist.clone()))
        .map_response(IntoResponse::into_response)
        .map_request(handshake_request::compact)
        .map_request({
            let state = state.clone();
            move |req| crate::socket::early_lookup::start(&state, req)
        })
        .layer(socket_io)
        // engine.io's response future is an enum one of whose variants is
        // the router's future (its request inline until called): boxed,
        // it costs an allocation on the routes' own requests instead of
        // 0.25 KiB in every held long-poll.
        .map_future(|route| -> BoxFuture<'static, Result<Response, Infallible>> { Box::pin(route) })
        .service(routes);
    BoxCloneSyncService::new(app)
}

/// Outermost layer: a panic anywhere below is a 500, counted, and logged
/// (rate-limited) by the panic hook, never a dropped connection.
pub fn catch_panics(
    metrics: crate::metrics::Metrics,
) -> tower_http::catch_panic::CatchPanicLayer<
    impl tower_http::catch_panic::ResponseForPanic<ResponseBody = axum::body::Body>,
> {
    tower_http::catch_panic::CatchPanicLayer::custom(move |_: Box<dyn std::any::Any + Send>| {
        metrics.panics.inc();
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::messages::INTERNAL_ERROR,
        )
            .into_response()
    })
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
    m.audit_buffer_depth
        .set(state.events.audit().depth() as i64);
    m.audit_dropped.set(state.events.audit().dropped() as i64);
    m.audit_written.set(state.events.audit().written() as i64);
    let (lookups, statements) = state.auth.store.lookup_counts();
    m.session_lookups
        .set(i64::try_from(lookups).unwrap_or(i64::MAX));
    m.session_lookup_statements
        .set(i64::try_from(statements).unwrap_or(i64::MAX));
    let (open, idle) = crate::db::connect::pool_stats(&state.db);
    m.db_pool_open.set(i64::from(open));
    m.db_pool_idle.set(i64::try_from(idle).unwrap_or(i64::MAX));
    m.db_pool_max
        .set(i64::from(state.config.db_max_connections.max(1)));
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_is_a_counted_500() {
        let metrics = crate::metrics::Metrics::new();
        let app: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    let v: Vec<u8> = Vec::new();
                    #[allow(clippy::indexing_slicing)]
                    let _ = v[3];
                    "unreachable"
                }),
            )
            .layer(catch_panics(metrics.clone()));
        for _ in 0..3 {
            let resp = app
                .clone()
                .oneshot(
                    axum::http::Request::get("/boom")
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
        assert!(metrics.render().contains("sockgate_panics_total 3"));
    }
}
