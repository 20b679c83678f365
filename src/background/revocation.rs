//! Instant revocation on PostgreSQL (opt-in): a trigger on the session table
//! NOTIFYs when a row is deleted (logout, regenerate, prune) and every node
//! LISTENs, ending that session's sockets within a second instead of at the
//! next interval check. It only hands the notice to the watcher, which ends
//! the sockets and records it; it knows no socket and writes no audit row.
//!
//! The notice carries the SHA-256 of the session id, never the id itself:
//! any role that can LISTEN on the database can read it.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use sqlx::postgres::PgListener;

use crate::background::watcher::Watcher;
use crate::db::connect::{DbError, quoted_table};

pub const CHANNEL: &str = "sockgate_session_revoked";
const TRIGGER: &str = "sockgate_session_revoked";
const FUNCTION: &str = "sockgate_notify_session_deleted";

fn function_name(schema: Option<&str>) -> String {
    match schema {
        Some(schema) => format!("\"{schema}\".{FUNCTION}"),
        None => FUNCTION.to_owned(),
    }
}

/// Installs (or replaces) the trigger. This is the one change sockgate ever
/// makes to the Node app's table, and only when asked to.
pub async fn install_trigger(
    db: &DatabaseConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<(), DbError> {
    require_postgres(db)?;
    let function = function_name(schema);
    let table = quoted_table(schema, table);
    db.execute_unprepared(&format!(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           PERFORM pg_notify('{CHANNEL}', encode(sha256(convert_to(OLD.sid, 'UTF8')), 'hex')); \
           RETURN OLD; \
         END $$; \
         DROP TRIGGER IF EXISTS {TRIGGER} ON {table}; \
         CREATE TRIGGER {TRIGGER} AFTER DELETE ON {table} \
           FOR EACH ROW EXECUTE FUNCTION {function}();"
    ))
    .await?;
    Ok(())
}

pub async fn remove_trigger(
    db: &DatabaseConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<(), DbError> {
    require_postgres(db)?;
    let function = function_name(schema);
    let table = quoted_table(schema, table);
    db.execute_unprepared(&format!(
        "DROP TRIGGER IF EXISTS {TRIGGER} ON {table}; DROP FUNCTION IF EXISTS {function}();"
    ))
    .await?;
    Ok(())
}

fn require_postgres(db: &DatabaseConnection) -> Result<(), DbError> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Err(DbError::SessionTable {
            table: "session".into(),
            problem: "the revocation trigger needs PostgreSQL (LISTEN/NOTIFY)".into(),
        });
    }
    Ok(())
}

/// LISTENs for revocations for as long as the process runs, reconnecting by
/// itself. After a reconnect it asks the watcher for a full check, since
/// notices sent while it was away are lost.
pub async fn listen(db: DatabaseConnection, watcher: Watcher) {
    let pool = db.get_postgres_connection_pool().clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "revocation listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "revocation LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        tracing::info!(channel = CHANNEL, "listening for session revocations");
        loop {
            // `try_recv` answers None when the connection was lost; the next
            // call reconnects and re-LISTENs.
            match listener.try_recv().await {
                Ok(Some(notice)) => {
                    watcher.session_deleted(notice.payload());
                }
                Ok(None) => {
                    tracing::warn!(
                        "revocation listener lost its connection; reconnecting and re-checking all sessions"
                    );
                    watcher.check_now();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocation listener error; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    watcher.check_now();
                    break;
                }
            }
        }
    }
}
