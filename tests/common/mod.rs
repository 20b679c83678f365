//! Test support: a real sockgate server on loopback over a real database
//! (SQLite file or PostgreSQL), and a real rust_socketio client.
#![allow(dead_code)]

pub mod app_schemas;
pub mod client;
pub mod containers;
pub mod engine_io;
pub mod node_app;
pub mod pg;
pub mod process;
pub mod redis;
pub mod unlimited_env;
pub mod wire;

use std::time::Duration;

use chrono::Utc;
use sockgate::Config;
use sockgate::server::{self, RunningServer};
use sockgate::session::UserId;
use sockgate::session::{Minted, mint_session};
use sqlx::Connection;

pub const SECRET: &str = "test-secret-new";
pub const OLD_SECRET: &str = "test-secret-old";

pub use pg::PgServer;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    /// A fresh database on that server whose default TimeZone is the given
    /// zone (the server's own when `None`).
    Postgres(PgServer, Option<&'static str>),
}

impl Backend {
    /// The primary PostgreSQL, its default zone.
    pub const PG: Backend = Backend::Postgres(PgServer::Primary, None);
    /// The second PostgreSQL major version, its default zone.
    pub const PG_SECOND: Backend = Backend::Postgres(PgServer::Second, None);
}

/// A database made for one test, dropped with it.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn create(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("sockgate.db").display()
                );
                Some(TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                    pg: None,
                })
            }
            Backend::Postgres(server, zone) => {
                let admin = pg::admin_url_of(server)?;
                let name = format!(
                    "sgt_{}",
                    sockgate::session::new_sid()
                        .to_lowercase()
                        .replace(['-', '_'], "x")
                );
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to the admin database");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                if let Some(zone) = zone {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "ALTER DATABASE \"{name}\" SET timezone TO '{zone}'"
                    )))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                }
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&format!("/{name}"));
                Some(TestDb {
                    url: url.to_string(),
                    backend,
                    _dir: None,
                    pg: Some((admin, name)),
                })
            }
        }
    }

    /// A PostgreSQL database the test does not own (on a test's own
    /// cluster, which goes away with it): nothing is dropped.
    pub fn existing_postgres(url: String) -> TestDb {
        TestDb {
            url,
            backend: Backend::PG,
            _dir: None,
            pg: None,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(..))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs inside the test's runtime: do the async work elsewhere.
            let _ = containers::on_own_runtime(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
                Ok(())
            });
        }
    }
}

/// The one test generator behind the macros below: a module `$name` with
/// a test `$test` per backend, each running `$run(backend)`.
#[allow(unused_macros)]
macro_rules! backend_tests {
    ($name:ident, $run:expr, [$($test:ident => $backend:expr),+ $(,)?]) => {
        mod $name {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    ($run)($backend).await;
                }
            )+
        }
    };
}

/// A server on `backend` configured by `$tweak`, handed to `$body`; a
/// PostgreSQL that cannot be found skips loudly (fails under
/// SOCKGATE_REQUIRE_PG), SQLite never skips.
#[allow(unused_macros)]
macro_rules! with_env {
    ($tweak:expr, $body:expr) => {
        |backend: Backend| async move {
            let Some(env) = TestEnv::start_with(backend, $tweak).await else {
                assert!(!matches!(backend, Backend::Sqlite), "SQLite always starts");
                return;
            };
            ($body)(env).await;
        }
    };
}

/// A test module `$name` with the same test on SQLite and on the primary
/// PostgreSQL.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        on_both_backends!($name, |_: &mut sockgate::Config| {}, $body);
    };
    ($name:ident, $tweak:expr, $body:expr) => {
        on_both_backends_raw!($name, with_env!($tweak, $body));
    };
}

/// As `on_both_backends!`, and once more on the second PostgreSQL major
/// version (`postgres_second`), for behaviour a version difference could
/// change.
#[allow(unused_macros)]
macro_rules! on_every_backend {
    ($name:ident, $body:expr) => {
        on_every_backend!($name, |_: &mut sockgate::Config| {}, $body);
    };
    ($name:ident, $tweak:expr, $body:expr) => {
        on_every_backend_raw!($name, with_env!($tweak, $body));
    };
}

/// A test per backend (SQLite, the primary PostgreSQL) for a body that sets
/// up its own database: `|backend| async { .. }`.
#[allow(unused_macros)]
macro_rules! on_both_backends_raw {
    ($name:ident, $body:expr) => {
        backend_tests!($name, $body, [sqlite => Backend::Sqlite, postgres => Backend::PG]);
    };
}

/// As `on_both_backends_raw!`, and on the second PostgreSQL major version.
#[allow(unused_macros)]
macro_rules! on_every_backend_raw {
    ($name:ident, $body:expr) => {
        backend_tests!(
            $name,
            $body,
            [sqlite => Backend::Sqlite, postgres => Backend::PG, postgres_second => Backend::PG_SECOND]
        );
    };
}

/// A test module `$name` run on both PostgreSQL major versions, for a body
/// that needs PostgreSQL itself: `|server: PgServer| async { .. }`.
#[allow(unused_macros)]
macro_rules! on_both_majors {
    ($name:ident, $body:expr) => {
        backend_tests!(
            $name,
            $body,
            [postgres => common::PgServer::Primary, postgres_second => common::PgServer::Second]
        );
    };
}

pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::for_database(db.url.clone());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.secrets = vec![SECRET.into(), OLD_SECRET.into()];
    config.db_acquire_timeout_ms = 1_000;
    unlimited(&mut config);
    config
}

/// The per-client limits out of the way: every test drives the server from
/// one address (127.0.0.1), some with thousands of connections. The tests
/// of the limits set the ones they cross.
pub fn unlimited(config: &mut Config) {
    let l = &mut config.limits;
    l.max_connections_per_ip = 1_000_000;
    l.handshakes_per_ip_per_sec = 1_000_000;
    l.handshake_burst_per_ip = 1_000_000;
    l.max_sockets_per_user = 1_000_000;
    l.max_sockets_per_session = 1_000_000;
    l.refusal_log_per_ip_per_sec = 1_000_000;
    l.refusal_log_burst_per_ip = 1_000_000;
}

/// Plays the Node app's part on PostgreSQL: the session table from
/// connect-pg-simple's table.sql, and sockgate's own tables migrated.
pub async fn prepare_postgres(config: &Config) {
    let db = sockgate::db::connect(config).await.unwrap();
    sockgate::db::migrate(config, &db).await.unwrap();
    sockgate::db::create_session_table(
        &db.conn,
        config.session_schema.as_deref(),
        &config.session_table,
    )
    .await
    .unwrap();
}

pub struct TestEnv {
    pub db: TestDb,
    pub config: Config,
    pub server: RunningServer,
}

impl TestEnv {
    /// `None` when the backend is PostgreSQL and none is available (the
    /// skip was announced loudly; with SOCKGATE_REQUIRE_PG=1 it panics).
    pub async fn start(backend: Backend) -> Option<TestEnv> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestEnv> {
        let db = TestDb::create(backend).await?;
        Some(Self::start_on(db, tweak).await)
    }

    /// A server over `db` (prepared as the Node app and `sockgate migrate`
    /// would on PostgreSQL).
    pub async fn start_on(db: TestDb, tweak: impl FnOnce(&mut Config)) -> TestEnv {
        let mut config = test_config(&db);
        tweak(&mut config);
        if db.is_postgres() {
            prepare_postgres(&config).await;
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let server = Self::serve(&config, listener).await;
        TestEnv { db, config, server }
    }

    async fn serve(config: &Config, listener: tokio::net::TcpListener) -> RunningServer {
        let state = server::prepare(config.clone())
            .await
            .expect("server prepares");
        server::serve(listener, state).await.unwrap()
    }

    /// Stops the server (graceful shutdown) and starts a new one, same
    /// configuration, on the same address, as a process restart would.
    pub async fn restart(self) -> TestEnv {
        let TestEnv { db, config, server } = self;
        let addr = server.local_addr;
        let old_db = server.state.db.clone();
        server.shutdown().await;
        // The old pool would otherwise hold its connections until dropped.
        let _ = old_db.close_by_ref().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebinding {addr}: {e}"),
            }
        };
        let server = Self::serve(&config, listener).await;
        TestEnv { db, config, server }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn conn(&self) -> &sea_orm::DatabaseConnection {
        &self.server.state.db
    }

    /// A logged-in session for `user`, written as connect-pg-simple would.
    pub async fn mint(&self, user: &str) -> Minted {
        self.mint_for(user, Duration::from_secs(3600)).await
    }

    pub async fn mint_for(&self, user: &str, ttl: Duration) -> Minted {
        let auth = &self.server.state.auth;
        mint_session(&auth.store, &auth.secrets, &UserId::new(user), ttl)
            .await
            .unwrap()
    }

    /// Writes a raw session row the way the Node app does: on PostgreSQL
    /// through a connection that sends no TimeZone (as node-postgres), with
    /// connect-pg-simple's own SQL.
    pub async fn write_session(&self, sid: &str, sess: &serde_json::Value, expire_secs: i64) {
        if self.db.is_postgres() {
            let (client, conn) = tokio_postgres::connect(&self.db.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(conn);
            client
                .execute(
                    "INSERT INTO \"session\" (sess, expire, sid) SELECT $1::text::json, to_timestamp($2), $3 \
                     ON CONFLICT (sid) DO UPDATE SET sess = $1::text::json, expire = to_timestamp($2)",
                    &[&sess.to_string(), &(expire_secs as f64), &sid],
                )
                .await
                .unwrap();
            drop(client);
            let _ = task.await;
        } else {
            self.server
                .state
                .auth
                .store
                .upsert(sid, sess, expire_secs)
                .await
                .unwrap();
        }
    }

    /// The signed, URL-encoded cookie value for `sid` (first secret).
    pub fn cookie_value(&self, sid: &str) -> String {
        let signed = format!("s:{}", sockgate::session::sign(sid, SECRET));
        percent_encoding::utf8_percent_encode(&signed, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    }

    /// Waits for audit rows of `action` (the writer is asynchronous), read
    /// back from the audit target (sockgate's own table or the app's).
    pub async fn audit_rows(
        &self,
        action: &str,
        at_least: usize,
    ) -> Vec<sockgate::audit::AuditRow> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let since = chrono::DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        loop {
            let rows = sockgate::audit::rows_since(self.conn(), self.tables(), action, since)
                .await
                .unwrap();
            if rows.len() >= at_least || tokio::time::Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tables the server checked at start.
    pub fn tables(&self) -> &sockgate::db::Tables {
        &self.server.state.tables
    }

    /// One of sockgate's own tables, quoted and qualified for this backend
    /// (`"sockgate"."guest"`, `"sockgate_guest"`).
    pub fn own(&self, table: &str) -> String {
        self.tables().namespace.table(table)
    }

    /// Runs SQL in which `{guest}`, `{member}`, `{organization}`,
    /// `{app_user}` and `{audit_log}` name sockgate's own tables.
    pub async fn exec(&self, sql: &str) {
        use sea_orm::ConnectionTrait;
        let mut sql = sql.to_owned();
        for table in ["guest", "member", "organization", "app_user", "audit_log"] {
            sql = sql.replace(&format!("{{{table}}}"), &self.own(table));
        }
        self.conn()
            .execute_unprepared(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Users, organizations, members and guests in sockgate's own tables.
    pub async fn add_users(&self, ids: &[&str]) {
        let values: Vec<String> = ids
            .iter()
            .map(|id| format!("('{id}', 'user {id}', CURRENT_TIMESTAMP)"))
            .collect();
        self.exec(&format!(
            "INSERT INTO {{app_user}} (id, username, created_at) VALUES {} ON CONFLICT DO NOTHING",
            values.join(", ")
        ))
        .await;
    }

    pub async fn add_org(&self, id: i64, name: &str) {
        self.exec(&format!(
            "INSERT INTO {{organization}} (id, name, created_at) VALUES ({id}, '{name}', CURRENT_TIMESTAMP) ON CONFLICT DO NOTHING"
        ))
        .await;
    }

    pub async fn add_member(&self, org: i64, user: &str, role: &str) {
        self.add_users(&[user]).await;
        self.exec(&format!(
            "INSERT INTO {{member}} (organization_id, user_id, role) VALUES ({org}, '{user}', '{role}')"
        ))
        .await;
    }

    /// Guests `(id, user)` of `org`, not locked; their users are created.
    pub async fn add_guests(&self, org: i64, guests: &[(i64, String)]) {
        for chunk in guests.chunks(200) {
            let users: Vec<&str> = chunk.iter().map(|(_, u)| u.as_str()).collect();
            self.add_users(&users).await;
            let values: Vec<String> = chunk
                .iter()
                .map(|(id, user)| format!("({id}, '{user}', {org}, FALSE, CURRENT_TIMESTAMP)"))
                .collect();
            self.exec(&format!(
                "INSERT INTO {{guest}} (id, user_id, organization_id, soft_locked, created_at) VALUES {}",
                values.join(", ")
            ))
            .await;
        }
    }
}

/// An HTTP client for one request. rustls, not the platform TLS that
/// rust_socketio's dependencies switch on for reqwest as a whole: a client on
/// OpenSSL loads and parses the system's root certificates every time it is
/// built, which under thousands of requests starved the server under test.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .build()
        .expect("an HTTP client")
}

pub fn now_secs() -> i64 {
    Utc::now().timestamp()
}
