//! Assembling and running the server: database, audit writer, Socket.IO
//! layer and HTTP routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::db::{self, Database};
use crate::fleet::FleetCell;
use crate::limits::{PerClientRate, RefusalLog};
use crate::metrics::Metrics;
use crate::origin::Allowlist;
use crate::origin_guard::ViolationLog;
use crate::registry::Registry;
use crate::session::{self, UserId};
use crate::session_store::SessionStore;
use crate::tables::{Namespace, Tables};
use crate::watcher::Watcher;

/// The development user a fresh SQLite database starts with.
pub const DEV_USER_ID: &str = "1";
pub const DEV_USERNAME: &str = "dev";
/// A guest of the development organization, to try the admin route on.
pub const DEV_GUEST_USER_ID: &str = "2";
pub const DEV_GUEST_USERNAME: &str = "guest";
pub const DEV_GUEST_ID: i64 = 1;
pub const DEV_ORGANIZATION_ID: i64 = 1;

/// Everything a request or socket handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: sea_orm::DatabaseConnection,
    /// Guests, members and the audit target, as checked at start.
    pub tables: Arc<Tables>,
    pub auth: Authenticator,
    pub audit: AuditLog,
    pub registry: Registry,
    pub watcher: Watcher,
    pub metrics: Metrics,
    pub allowlist: Arc<Allowlist>,
    pub violations: Arc<ViolationLog>,
    /// Per-client budget for refusals in the log and the audit table.
    pub refusals: Arc<RefusalLog>,
    /// New engine.io sessions per client IP.
    pub handshakes: Arc<PerClientRate>,
    /// This node's view of every node's sockets; set when the Socket.IO
    /// layer is built.
    pub fleet: FleetCell,
}

/// Connects, prepares the database and starts the audit writer.
pub async fn prepare(config: Config) -> anyhow::Result<AppState> {
    config.validate()?;
    let allowlist = config.allowlist()?;
    let db = db::connect(&config)
        .await
        .context("connecting to the database")?;
    let tables = Arc::new(prepare_tables(&config, &db).await?);
    let store = SessionStore::new(
        &db,
        config.session_schema.as_deref(),
        &config.session_table,
        Some(tables.clone()),
    );
    let auth = Authenticator {
        store,
        secrets: config.secrets()?,
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
    let watcher = Watcher {
        fleet: fleet.clone(),
        registry: registry.clone(),
        store: auth.store.clone(),
        audit: audit.clone(),
        interval: config.session_check_interval,
        refresh_window: config.session_refresh_window,
        default_ttl: config.session_ttl(),
        wake: Default::default(),
        metrics: metrics.clone(),
    };
    Ok(AppState {
        config: Arc::new(config),
        db: db.conn,
        tables,
        auth,
        audit,
        registry,
        watcher,
        metrics,
        allowlist: Arc::new(allowlist),
        violations: Default::default(),
        refusals,
        handshakes,
        fleet,
    })
}

/// On SQLite the session table is sockgate's to create, and a development
/// user is there to log in as.
pub async fn prepare_dev_database(config: &Config, db: &Database) -> anyhow::Result<()> {
    db::create_session_table(&db.conn, None, &config.session_table).await?;
    seed_dev_data(&db.conn, &namespace(config, db)).await
}

/// Where sockgate's own tables live for this configuration.
pub fn namespace(config: &Config, db: &Database) -> Namespace {
    Namespace::new(db.conn.get_database_backend(), &config.sockgate_schema)
}

/// Everything `serve` relies on in the database, checked without writing:
/// the session table's shape, sockgate's schema and migrations, and the
/// mapped (or own) guest, member and audit tables. Development (SQLite)
/// migrates and seeds first.
pub async fn prepare_tables(config: &Config, db: &Database) -> anyhow::Result<Tables> {
    if config.is_development() {
        db::migrate(config, db)
            .await
            .context("migrating the SQLite database")?;
        prepare_dev_database(config, db).await?;
    }
    check_tables(config, db).await
}

/// The checks of [`prepare_tables`], reading only (`sockgate check`).
pub async fn check_tables(config: &Config, db: &Database) -> anyhow::Result<Tables> {
    db::verify_session_table(
        &db.conn,
        config.session_schema.as_deref(),
        &config.session_table,
    )
    .await?;
    let ns = namespace(config, db);
    if ns.backend == sea_orm::DbBackend::Postgres
        && !crate::catalog::schema_exists(&db.conn, &ns.schema).await?
    {
        anyhow::bail!(
            "schema {} (SOCKGATE_SCHEMA) does not exist: run `sockgate migrate` against this database first",
            crate::sql::ident(&ns.schema)
        );
    }
    // A foreign table in the namespace first: migrating would not help.
    crate::tables::verify_own_tables(&db.conn, &ns).await?;
    let pending = db::pending_migrations(config, db).await?;
    if pending > 0 {
        anyhow::bail!(
            "{pending} sockgate migration(s) pending: run `sockgate migrate` against this database first"
        );
    }
    let mapping = config.mapping()?;
    Ok(Tables::resolve(db, &ns, &mapping).await?)
}

/// The development organization: user "1" (dev) is its admin, user "2" is
/// guest 1 in it, in sockgate's own tables. Only missing rows are written,
/// so a lock survives restarts.
pub async fn seed_dev_data(
    conn: &sea_orm::DatabaseConnection,
    ns: &Namespace,
) -> anyhow::Result<()> {
    use sea_orm::{ConnectionTrait, Value};
    let now = Value::from(Utc::now());
    let backend = conn.get_database_backend();
    let insert = |table: &str, columns: &str, values: Vec<Value>| {
        let mut sql = crate::sql::Sql::new(backend);
        let placeholders: Vec<String> = values.into_iter().map(|v| sql.bind(v)).collect();
        sql.text = format!(
            "INSERT INTO {} ({columns}) VALUES ({}) ON CONFLICT DO NOTHING",
            ns.table(table),
            placeholders.join(", ")
        );
        sql.build()
    };
    for (id, name) in [
        (DEV_USER_ID, DEV_USERNAME),
        (DEV_GUEST_USER_ID, DEV_GUEST_USERNAME),
    ] {
        conn.execute_raw(insert(
            "app_user",
            "id, username, created_at",
            vec![id.into(), name.into(), now.clone()],
        ))
        .await?;
    }
    conn.execute_raw(insert(
        "organization",
        "id, name, created_at",
        vec![
            DEV_ORGANIZATION_ID.into(),
            "Dev organization".into(),
            now.clone(),
        ],
    ))
    .await?;
    conn.execute_raw(insert(
        "member",
        "id, organization_id, user_id, role",
        vec![
            1i64.into(),
            DEV_ORGANIZATION_ID.into(),
            DEV_USER_ID.into(),
            crate::tables::OWN_ADMIN_ROLE.into(),
        ],
    ))
    .await?;
    conn.execute_raw(insert(
        "guest",
        "id, user_id, organization_id, soft_locked, created_at",
        vec![
            DEV_GUEST_ID.into(),
            DEV_GUEST_USER_ID.into(),
            DEV_ORGANIZATION_ID.into(),
            false.into(),
            now,
        ],
    ))
    .await?;
    Ok(())
}

pub struct Minted {
    pub sid: String,
    /// `s:<sid>.<signature>`, what `auth.sessionId` carries.
    pub signed: String,
    /// The URL-encoded cookie value, as express-session sets it.
    pub cookie_value: String,
    pub expires_at: DateTime<Utc>,
}

/// A new session id as express-session makes them (uid-safe, 24 bytes).
pub fn new_sid() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Writes a logged-in session for `user`, as express-session + passport +
/// connect-pg-simple would after a login.
pub async fn mint_session(
    store: &SessionStore,
    secrets: &crate::signature::Secrets,
    user: &UserId,
    ttl: Duration,
) -> anyhow::Result<Minted> {
    let sid = new_sid();
    let (expire, sess) = session::new_session_json(user, Utc::now(), ttl);
    store.upsert(&sid, &sess, expire).await?;
    let signed = format!("s:{}", secrets.sign(&sid));
    Ok(Minted {
        cookie_value: cookie_value(&signed),
        signed,
        sid,
        expires_at: Utc.timestamp_opt(expire, 0).single().unwrap_or_default(),
    })
}

/// A signed value (`s:<sid>.<signature>`) URL-encoded as express-session
/// puts it in the cookie.
pub fn cookie_value(signed: &str) -> String {
    percent_encoding::utf8_percent_encode(signed, COOKIE_ENCODE).to_string()
}

/// `encodeURIComponent`'s set, which express-session's cookie serializer
/// uses for the value.
const COOKIE_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

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
    let app = crate::http::router(state.clone()).await?;
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
                crate::revocation::listen(db.clone(), watcher.clone())
            })
        });
    let (tx, rx) = oneshot::channel::<()>();
    let limits = state.config.limits.clone();
    let metrics = state.metrics.clone();
    let refused_state = state.clone();
    let on_refused = move |remote: SocketAddr| {
        let max = refused_state.config.limits.max_connections_per_ip;
        let event = crate::refusal::limit_event(
            "connections_per_ip",
            Some(remote.ip()),
            serde_json::json!({ "max": max }),
        );
        crate::refusal::record(&refused_state, Some(remote.ip()), event, |suppressed| {
            tracing::warn!(ip = %remote.ip(), max, suppressed_since_last = suppressed, "connection refused: too many connections from this IP");
        });
    };
    let join = tokio::spawn(async move {
        let result = crate::listener::serve(listener, app, &limits, metrics, on_refused, async {
            let _ = rx.await;
        })
        .await;
        watcher.abort();
        if let Some(task) = revocations {
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

fn announce(state: &AppState, addr: SocketAddr) {
    tracing::info!(%addr, "sockgate listening on http://{addr} (Socket.IO at /socket.io/)");
    tracing::info!(
        allowlist = %state.allowlist.describe(),
        require_origin = state.config.require_origin,
        "origin allowlist"
    );
    if let Ok(secrets) = state.config.secrets() {
        for n in secrets.short() {
            tracing::warn!(
                "session secret #{n} is shorter than {} bytes: use a long random secret in the Node app and here",
                crate::signature::MIN_SECRET_BYTES
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
            "development user {DEV_USER_ID} ({DEV_USERNAME}): get a session cookie with `cargo run -- session mint --user {DEV_USER_ID}`"
        );
    }
}
