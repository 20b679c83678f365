//! Assembling and running the server: the database opened and checked, the
//! shared state built, the audit writer, the background tasks, the Socket.IO
//! layer and the HTTP routes mounted on the listener. The top of the house:
//! nothing below imports it. It handles no request and no socket itself; that
//! is `http`'s and `socket`'s once mounted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::audit::event::{Client, Event, Events};
use crate::audit::writer::AuditLog;
use crate::background::watcher::Watcher;
use crate::config::Config;
use crate::db::prepare::{self, Opened, Purpose};
use crate::limits::{PerClientRate, RefusalLog};
use crate::live::fleet::FleetCell;
use crate::live::registry::Registry;
use crate::metrics::Metrics;
use crate::session::auth::Authenticator;
use crate::session::signature::Secrets;
use crate::session::store::SessionStore;
use crate::state::{AppState, Shared};

/// Connects, prepares the database and starts the audit writer.
pub async fn prepare(config: Config) -> anyhow::Result<AppState> {
    config.validate()?;
    let allowlist = config.allowlist()?;
    let Opened { db, tables } = prepare::open(&config, Purpose::Serve).await?;
    let tables = Arc::new(tables.expect("serve checks the tables"));
    let store = SessionStore::new(
        &db,
        config.session_schema.as_deref(),
        &config.session_table,
        Some(tables.clone()),
    );
    let auth = Authenticator {
        store,
        secrets: Secrets::of(&config)?,
        cookie_name: config.cookie_name.clone(),
    };
    let metrics = Metrics::new();
    let audit = AuditLog::spawn(
        db.conn.clone(),
        tables.clone(),
        config.audit_buffer,
        config.limits.audit_buffer_bytes,
        metrics.clone(),
    );
    let limits = &config.limits;
    let refusals = Arc::new(RefusalLog::new(
        limits.refusal_log_per_ip_per_sec,
        limits.refusal_log_burst_per_ip,
    ));
    // The node-wide cap is what 50 clients at their full rate would make.
    let handshakes = Arc::new(PerClientRate::new(
        limits.handshakes_per_ip_per_sec,
        limits.handshake_burst_per_ip,
        limits.handshakes_per_ip_per_sec.saturating_mul(50),
    ));
    let registry = Registry::default();
    let fleet = FleetCell::default();
    let proxy = crate::proxy::client::Proxy::of(&config)?.map(Arc::new);
    let events = Events::new(audit, metrics.clone(), refusals, Default::default());
    let watcher = Watcher {
        fleet: fleet.clone(),
        registry: registry.clone(),
        store: auth.store.clone(),
        events: events.clone(),
        interval: config.session_check_interval,
        refresh_window: config.session_refresh_window,
        default_ttl: config.session_ttl(),
        wake: Default::default(),
        metrics: metrics.clone(),
        heard: Default::default(),
    };
    Ok(AppState::new(Shared {
        config: Arc::new(config),
        db: db.conn,
        tables,
        auth,
        events,
        registry,
        watcher,
        metrics,
        allowlist: Arc::new(allowlist),
        handshakes,
        fleet,
        local_sockets: Default::default(),
        proxy,
    }))
}

pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.join).await;
    }

    pub async fn wait_for_ctrl_c(self) -> anyhow::Result<()> {
        tokio::signal::ctrl_c().await?;
        tracing::info!("shutting down");
        self.shutdown().await;
        Ok(())
    }
}

/// Prepares the database, binds `config.listen` and serves in the
/// background.
pub async fn spawn(config: Config) -> anyhow::Result<RunningServer> {
    let listen = config.listen;
    let state = prepare(config).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    serve(listener, state).await
}

pub async fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<RunningServer> {
    let local_addr = listener.local_addr()?;
    let app = crate::http::router::router(state.clone()).await?;
    let watcher = {
        let watcher = state.watcher.clone();
        crate::supervise::spawn("session_watcher", state.metrics.clone(), move || {
            watcher.clone().run()
        })
    };
    let revocations =
        (state.db.get_database_backend() == sea_orm::DbBackend::Postgres).then(|| {
            let (db, watcher) = (state.db.clone(), state.watcher.clone());
            crate::supervise::spawn("revocation_listener", state.metrics.clone(), move || {
                crate::background::revocation::listen(db.clone(), watcher.clone())
            })
        });
    let emitters = spawn_emitter_listeners(&state)?;
    let (tx, rx) = oneshot::channel::<()>();
    let limits = state.config.limits.clone();
    let refused_state = state.clone();
    let on_refused = move |remote: SocketAddr| {
        let max = refused_state.config.limits.max_connections_per_ip;
        refused_state.events.report(
            Client {
                ip: Some(remote.ip()),
                ..Default::default()
            },
            Event::LimitRefused {
                limit: "connections_per_ip",
                socket: None,
                details: serde_json::json!({ "max": max }),
            },
        );
    };
    let join = tokio::spawn(async move {
        let result = crate::server::listener::serve(listener, app, &limits, on_refused, async {
            let _ = rx.await;
        })
        .await;
        watcher.abort();
        if let Some(task) = revocations {
            task.abort();
        }
        for task in emitters {
            task.abort();
        }
        result
    });
    announce(&state, local_addr);
    Ok(RunningServer {
        local_addr,
        state,
        shutdown: Some(tx),
        join,
    })
}

/// Every node hears the app's emitters: `@socket.io/postgres-emitter` on
/// PostgreSQL (SQLite has no NOTIFY: no emitter in development), and
/// `@socket.io/redis-emitter` with `ADAPTER=redis`.
fn spawn_emitter_listeners(state: &AppState) -> anyhow::Result<Vec<JoinHandle<()>>> {
    // The router built the Socket.IO layer, which set the cell.
    let sockets = state
        .local_sockets
        .get()
        .cloned()
        .context("the Socket.IO layer is not built")?;
    let mut tasks = Vec::new();
    if state.db.get_database_backend() == sea_orm::DbBackend::Postgres {
        let settings = crate::emitter::postgres::Settings::of(&state.config)?;
        let pool = crate::db::connect::emitter_pool(&state.config)?;
        let (sockets, metrics) = (sockets.clone(), state.metrics.clone());
        tasks.push(crate::supervise::spawn(
            "postgres_emitter_listener",
            state.metrics.clone(),
            move || {
                crate::emitter::postgres::listen(
                    pool.clone(),
                    settings.clone(),
                    sockets.clone(),
                    metrics.clone(),
                )
            },
        ));
    }
    if state.config.adapter()? == crate::config::AdapterKind::Redis {
        use socketioxide_redis::drivers::redis::redis_client;
        let client =
            redis_client::Client::open(state.config.redis_url.as_deref().unwrap_or_default())
                .context("REDIS_URL")?;
        let channels = crate::emitter::redis::Channels::of(&state.config.emitter_redis_key);
        let metrics = state.metrics.clone();
        tasks.push(crate::supervise::spawn(
            "redis_emitter_listener",
            state.metrics.clone(),
            move || {
                crate::emitter::redis::listen(
                    client.clone(),
                    channels.clone(),
                    sockets.clone(),
                    metrics.clone(),
                )
            },
        ));
    }
    Ok(tasks)
}

fn announce(state: &AppState, addr: SocketAddr) {
    tracing::info!(%addr, "sockgate listening on http://{addr} (Socket.IO at /socket.io/)");
    tracing::info!(
        allowlist = %state.allowlist.describe(),
        require_origin = state.config.require_origin,
        "origin allowlist"
    );
    if let Some(proxy) = &state.proxy {
        tracing::info!(
            url = %proxy.shown_url(),
            events = %proxy.events(),
            forward_cookie = proxy.forwards_cookie(),
            "client events forwarded to the app"
        );
    }
    if let Ok(secrets) = Secrets::of(&state.config) {
        for n in secrets.short() {
            tracing::warn!(
                "session secret #{n} is shorter than {} bytes: use a long random secret in the Node app and here",
                crate::session::signature::MIN_SECRET_BYTES
            );
        }
    }
    if state.config.is_development() {
        let secret = if state.config.secrets.is_empty() {
            "the public development secret"
        } else {
            "SESSION_SECRET"
        };
        tracing::warn!(
            "DEVELOPMENT MODE (DATABASE_URL is SQLite): signing with {secret}, seeded users, POST /dev/login, loopback only, one node. Never a deployment: production runs with DATABASE_URL=postgres://..."
        );
        tracing::info!(
            "development user {} ({}): get a session cookie with `cargo run -- session mint --user {}`",
            crate::db::dev_seed::DEV_USER_ID,
            crate::db::dev_seed::DEV_USERNAME,
            crate::db::dev_seed::DEV_USER_ID
        );
    }
}
