//! Connecting to the session database: SQLite in development, PostgreSQL in
//! production, both behind one sea-orm connection. Knows nothing of what a
//! session row means, nor of HTTP or sockets.
//!
//! On PostgreSQL the zone the Node app's connections use is detected once
//! (or configured) and every statement on `expire` names it (see
//! `session::store`): `expire` is a timestamp WITHOUT time zone, written by
//! connect-pg-simple as `to_timestamp(..)` in that zone. No connection's
//! `TimeZone` is relied on: sqlx opens every connection with `TimeZone=UTC`,
//! and a pooler may reset whatever a session sets.

use std::str::FromStr;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, SqlxPostgresConnector, SqlxSqliteConnector,
    Statement,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    BadUrl(String),
    #[error(
        "could not detect the database's default time zone ({0}); set SESSION_TIMEZONE to the zone the Node app's connections use"
    )]
    ZoneDetection(String),
    #[error(
        "time zone {zone:?} (SESSION_TIMEZONE or the database default) is not one PostgreSQL knows: {error}"
    )]
    BadZone { zone: String, error: String },
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("session table {table}: {problem}")]
    SessionTable { table: String, problem: String },
    #[error(transparent)]
    Schema(#[from] crate::db::tables::SchemaError),
}

/// The session table's name as connect-pg-simple quotes it.
pub fn quoted_table(schema: Option<&str>, table: &str) -> String {
    match schema {
        Some(schema) => format!("\"{schema}\".\"{table}\""),
        None => format!("\"{table}\""),
    }
}

pub struct Database {
    pub conn: DatabaseConnection,
    /// The zone `expire` is written in (PostgreSQL only).
    pub session_zone: Option<String>,
}

pub async fn connect(config: &Config) -> Result<Database, DbError> {
    if config.is_sqlite() {
        connect_sqlite(config).await
    } else {
        connect_postgres(config).await
    }
}

async fn connect_sqlite(config: &Config) -> Result<Database, DbError> {
    let options = SqliteConnectOptions::from_str(&config.database_url)
        .map_err(|e| DbError::BadUrl(e.to_string()))?
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(config.db_max_connections.max(1))
        .acquire_timeout(config.db_acquire_timeout())
        .connect_with(options)
        .await?;
    Ok(Database {
        conn: SqlxSqliteConnector::from_sqlx_sqlite_pool(pool),
        session_zone: None,
    })
}

async fn connect_postgres(config: &Config) -> Result<Database, DbError> {
    let options = PgConnectOptions::from_str(&config.database_url)
        .map_err(|e| DbError::BadUrl(e.to_string()))?
        .application_name("sockgate");
    let zone = match &config.session_timezone {
        Some(zone) => zone.clone(),
        None => detect_default_zone(&config.database_url).await?,
    };
    let pool = PgPoolOptions::new()
        .max_connections(config.db_max_connections.max(1))
        .acquire_timeout(config.db_acquire_timeout())
        .connect_with(options)
        .await?;
    // A zone PostgreSQL does not know would fail every session query.
    sqlx::query("SELECT now() AT TIME ZONE $1")
        .bind(&zone)
        .execute(&pool)
        .await
        .map_err(|e| DbError::BadZone {
            zone: zone.clone(),
            error: e.to_string(),
        })?;
    tracing::info!(session_zone = %zone, "session expiry is read and written in this zone");
    Ok(Database {
        conn: SqlxPostgresConnector::from_sqlx_postgres_pool(pool),
        session_zone: Some(zone),
    })
}

/// Connections of the session database's pool: (open, idle). An
/// operator's view of whether the pool keeps up (`/metrics`).
pub fn pool_stats(db: &DatabaseConnection) -> (u32, usize) {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => (0, 0),
    }
}

/// A small pool of its own for the Socket.IO PostgreSQL adapter (its LISTEN
/// holds one connection, NOTIFY and attachments use the rest), so cluster traffic
/// never waits behind handshakes for a connection, nor they behind it.
pub fn adapter_pool(config: &Config) -> Result<sqlx::PgPool, DbError> {
    let options = PgConnectOptions::from_str(&config.database_url)
        .map_err(|e| DbError::BadUrl(e.to_string()))?
        .application_name("sockgate-adapter");
    // The adapter creates and uses its attachments table by a bare name:
    // on these connections that name resolves in sockgate's schema, never
    // beside the app's tables.
    //
    // All of them stay open: a guest lock sends three notifications back
    // to back, and sqlx checks each connection it takes back before it is
    // idle again, so the second takes the other free connection. Opened only when
    // first needed (or again after the idle timeout), that one costs the
    // lock a connect, TLS and `SET search_path` (about 90 ms measured here).
    //
    // sqlx fills `min_connections` at start, in the background, only when
    // neither an idle timeout nor a lifetime is set (with either, it opens
    // them only after it has closed one). Its fill opens one connection at
    // a time and holds no other slot while it waits, so the subscription's
    // connection and a first notification are never queued behind it, and
    // a database that is down at start does not stop the server starting.
    // A connection that breaks is dropped and replaced by the same fill.
    let pool = in_own_schema(config, ADAPTER_CONNECTIONS)
        .min_connections(ADAPTER_CONNECTIONS)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    Ok(pool)
}

/// The socket adapter's connections, kept open.
const ADAPTER_CONNECTIONS: u32 = 3;

/// The emitter listener's own connections: its LISTEN and the reads of the
/// emitter's attachments table. Apart from the session pool, so that a
/// listener holding its connection for the process's life, or a burst of
/// the app's large emits, never takes a connection a handshake needs. Bare
/// names resolve as they do for the app (the attachments table is the app's).
pub fn emitter_pool(config: &Config) -> Result<sqlx::PgPool, DbError> {
    let options = PgConnectOptions::from_str(&config.database_url)
        .map_err(|e| DbError::BadUrl(e.to_string()))?
        .application_name("sockgate-emitter");
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(config.db_acquire_timeout())
        .connect_lazy_with(options))
}

/// A pool whose connections resolve bare names in sockgate's schema alone
/// (`search_path` set as each connects).
fn in_own_schema(config: &Config, max_connections: u32) -> PgPoolOptions {
    let set_path = format!(
        "SET search_path TO {}",
        crate::db::sql::ident(&config.sockgate_schema)
    );
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(config.db_acquire_timeout())
        .after_connect(move |conn, _| {
            let set_path = set_path.clone();
            Box::pin(async move {
                sqlx::Executor::execute(conn, sqlx::raw_sql(sqlx::AssertSqlSafe(set_path))).await?;
                Ok(())
            })
        })
}

/// The time zone a client that sends none (node-postgres) gets: the role's,
/// the database's or the server's default (see `zone_probe`).
pub async fn detect_default_zone(url: &str) -> Result<String, DbError> {
    crate::db::zone_probe::default_zone(url)
        .await
        .map(|probe| probe.zone)
        .map_err(|e| DbError::ZoneDetection(e.to_string()))
}

/// A connection that sees sockgate's namespace alone, for the migrations:
/// on PostgreSQL one connection with `search_path` set to sockgate's schema
/// (so nothing they create or look up can land outside it, their
/// bookkeeping table included); on SQLite the pool itself (own names carry
/// a prefix there).
async fn namespace_connection(
    config: &Config,
    db: &Database,
) -> Result<DatabaseConnection, DbError> {
    if db.conn.get_database_backend() != DbBackend::Postgres {
        return Ok(db.conn.clone());
    }
    let options = PgConnectOptions::from_str(&config.database_url)
        .map_err(|e| DbError::BadUrl(e.to_string()))?
        .application_name("sockgate-migrate");
    let pool = in_own_schema(config, 1).connect_with(options).await?;
    Ok(SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
}

/// Creates or updates sockgate's own tables, in its own namespace only
/// (its PostgreSQL schema, created if missing; prefixed names on SQLite).
/// A table of sockgate's that exists with another shape is an error naming
/// it, never adopted. Never touches the session table or any app table.
pub async fn migrate(config: &Config, db: &Database) -> Result<(), DbError> {
    use migration::MigratorTrait;
    let namespace =
        crate::db::tables::Namespace::new(db.conn.get_database_backend(), &config.sockgate_schema);
    crate::db::tables::verify_own_tables(&db.conn, &namespace).await?;
    if db.conn.get_database_backend() == DbBackend::Postgres {
        db.conn
            .execute_unprepared(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                crate::db::sql::ident(&config.sockgate_schema)
            ))
            .await?;
    }
    let conn = namespace_connection(config, db).await?;
    let migrated = migration::Migrator::up(&conn, None).await;
    if db.conn.get_database_backend() == DbBackend::Postgres {
        conn.close().await?;
    }
    migrated?;
    crate::db::tables::verify_own_tables(&db.conn, &namespace).await?;
    Ok(())
}

/// How many of sockgate's migrations have not run (PostgreSQL, where
/// `serve` does not migrate). Reads only.
pub async fn pending_migrations(config: &Config, db: &Database) -> Result<usize, DbError> {
    use migration::MigratorTrait;
    let (schema, table) = (
        Some(config.sockgate_schema.as_str()),
        migration::MIGRATIONS_TABLE,
    );
    if crate::db::catalog::columns(&db.conn, schema, table)
        .await?
        .is_none()
    {
        return Ok(migration::Migrator::migrations().len());
    }
    let conn = namespace_connection(config, db).await?;
    let pending = migration::Migrator::get_pending_migrations(&conn).await;
    if db.conn.get_database_backend() == DbBackend::Postgres {
        conn.close().await?;
    }
    Ok(pending?.len())
}

/// connect-pg-simple's table.sql, for SQLite development databases and for
/// tests. sockgate never runs this against a production PostgreSQL.
pub async fn create_session_table(
    db: &DatabaseConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<(), DbError> {
    let quoted = quoted_table(schema, table);
    let index = format!("\"IDX_{table}_expire\"");
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => format!(
            "CREATE TABLE IF NOT EXISTS {quoted} (\
               \"sid\" varchar NOT NULL COLLATE \"default\", \
               \"sess\" json NOT NULL, \
               \"expire\" timestamp(6) NOT NULL) WITH (OIDS=FALSE); \
             DO $$ BEGIN \
               IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass('{q}') AND contype = 'p') THEN \
                 ALTER TABLE {quoted} ADD CONSTRAINT \"{table}_pkey\" PRIMARY KEY (\"sid\") NOT DEFERRABLE INITIALLY IMMEDIATE; \
               END IF; END $$; \
             CREATE INDEX IF NOT EXISTS {index} ON {quoted} (\"expire\");",
            q = quoted.replace('\'', "''"),
        ),
        _ => format!(
            "CREATE TABLE IF NOT EXISTS {quoted} (\
               \"sid\" varchar NOT NULL PRIMARY KEY, \
               \"sess\" json NOT NULL, \
               \"expire\" timestamp(6) NOT NULL); \
             CREATE INDEX IF NOT EXISTS {index} ON {quoted} (\"expire\");"
        ),
    };
    db.execute_unprepared(&sql).await?;
    Ok(())
}

/// Checks that the session table exists with connect-pg-simple's shape,
/// without changing it. Errors name the table and what is wrong.
pub async fn verify_session_table(
    db: &DatabaseConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<(), DbError> {
    let quoted = quoted_table(schema, table);
    let problem = |problem: String| DbError::SessionTable {
        table: quoted.clone(),
        problem,
    };
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let rows = db
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type, \
                            a.attnotnull AS not_null, \
                            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid \
                                    AND i.indisunique AND i.indnatts = 1 AND i.indkey[0] = a.attnum) AS unique_key \
                     FROM pg_attribute a \
                     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                    [quoted.clone().into()],
                ))
                .await?;
            if rows.is_empty() {
                return Err(problem(
                    "does not exist (create it with connect-pg-simple's table.sql, or set SESSION_SCHEMA/SESSION_TABLE)".into(),
                ));
            }
            let mut columns = Vec::new();
            for row in rows {
                let name: String = row.try_get("", "name")?;
                let ty: String = row.try_get("", "type")?;
                let not_null: bool = row.try_get("", "not_null")?;
                let unique: bool = row.try_get("", "unique_key")?;
                columns.push((name, ty, not_null, unique));
            }
            let find = |n: &str| columns.iter().find(|c| c.0 == n);
            let expect = |name: &str, ok: &dyn Fn(&str) -> bool, wanted: &str| match find(name) {
                None => Err(problem(format!("has no column \"{name}\" ({wanted})"))),
                Some((_, ty, _, _)) if !ok(ty) => Err(problem(format!(
                    "column \"{name}\" is {ty}, expected {wanted}"
                ))),
                Some((_, _, false, _)) => {
                    Err(problem(format!("column \"{name}\" must be NOT NULL")))
                }
                Some(_) => Ok(()),
            };
            expect(
                "sid",
                &|t| t.starts_with("character varying") || t == "text",
                "varchar",
            )?;
            expect("sess", &|t| t == "json" || t == "jsonb", "json or jsonb")?;
            expect(
                "expire",
                &|t| t.starts_with("timestamp"),
                "timestamp(6) without time zone",
            )?;
            if !find("sid").is_some_and(|c| c.3) {
                return Err(problem("column \"sid\" is not the primary key".into()));
            }
            Ok(())
        }
        _ => {
            let rows = db
                .query_all_raw(Statement::from_string(
                    DbBackend::Sqlite,
                    format!(
                        "SELECT name FROM pragma_table_info('{}')",
                        table.replace('\'', "''")
                    ),
                ))
                .await?;
            let names: Vec<String> = rows
                .iter()
                .filter_map(|r| r.try_get::<String>("", "name").ok())
                .collect();
            if names.is_empty() {
                return Err(problem("does not exist".into()));
            }
            for col in ["sid", "sess", "expire"] {
                if !names.iter().any(|n| n == col) {
                    return Err(problem(format!("has no column \"{col}\"")));
                }
            }
            Ok(())
        }
    }
}
