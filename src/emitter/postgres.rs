//! Listening for `@socket.io/postgres-emitter` on the app's PostgreSQL: one
//! LISTEN on `<prefix>#/` (the namespace sockgate serves), reconnecting
//! with backoff, each NOTIFY decoded and applied in arrival order so an
//! app's emits keep their order; an attachment notice is read from the
//! emitter's table by id. Owns the LISTEN connection and the one read of
//! the attachments table; never writes it (the app or the adapter creates
//! and prunes it). Knows nothing of the wire format's details (`message`)
//! or of how an operation reaches sockets (`apply`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::config::Config;
use crate::emitter::apply::{self, LocalSockets};
use crate::emitter::message::{self, Notice};
use crate::metrics::Metrics;

const SOURCE: &str = "postgres";
/// The only namespace sockgate serves; an emitter's `.of("/other")`
/// publishes on a channel no node listens to, as no socket could get it.
const NAMESPACE: &str = "/";

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum SettingsError {
    #[error(
        "EMITTER_POSTGRES_TABLE `{0}` must be a plain table name or schema.table (letters, digits, `_`)"
    )]
    Table(String),
}

/// Where the emitter publishes, as configured in the Node app.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `<channelPrefix>#<namespace>`, as the emitter builds it.
    channel: String,
    /// Read verbatim in SQL, as the emitter writes it: checked to be a name.
    table: String,
}

impl Settings {
    pub(crate) fn of(config: &Config) -> Result<Self, SettingsError> {
        let table = &config.emitter_postgres_table;
        let plain = |part: &str| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if table.split('.').count() > 2 || !table.split('.').all(plain) {
            return Err(SettingsError::Table(table.clone()));
        }
        Ok(Self {
            channel: format!("{}#{NAMESPACE}", config.emitter_postgres_channel),
            table: table.clone(),
        })
    }
}

/// LISTENs for the emitter for as long as the process runs.
pub(crate) async fn listen(
    pool: PgPool,
    settings: Settings,
    sockets: Arc<dyn LocalSockets>,
    metrics: Metrics,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "emitter listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(&settings.channel).await {
            tracing::warn!(error = %e, "emitter LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        tracing::info!(channel = %settings.channel, "listening for @socket.io/postgres-emitter");
        loop {
            match listener.try_recv().await {
                Ok(Some(notice)) => {
                    handle(&pool, &settings, &*sockets, &metrics, notice.payload()).await;
                }
                // Lost and reconnected by sqlx: what the app emitted
                // meanwhile is lost, as with a Node adapter.
                Ok(None) => tracing::warn!(
                    "emitter listener lost its connection; operations sent meanwhile are lost"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "emitter listener error; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
}

async fn handle(
    pool: &PgPool,
    settings: &Settings,
    sockets: &dyn LocalSockets,
    metrics: &Metrics,
    payload: &str,
) {
    let op = match message::notice(payload) {
        Ok(Notice::Inline(op)) => op,
        Ok(Notice::Ignored) => return,
        Ok(Notice::Attachment(id)) => match read_attachment(pool, &settings.table, id).await {
            Ok(op) => op,
            Err(reason) => {
                metrics.emitter_malformed(SOURCE);
                tracing::warn!(attachment = id, %reason, "emitter attachment unusable");
                return;
            }
        },
        Err(e) => {
            metrics.emitter_malformed(SOURCE);
            tracing::warn!(error = %e, bytes = payload.len(), "malformed emitter message ignored");
            return;
        }
    };
    apply::record_and_apply(sockets, metrics, SOURCE, NAMESPACE, &op).await;
}

/// The attachment's operation, or why there is none (gone, unreadable,
/// malformed): each counts as a malformed message.
async fn read_attachment(
    pool: &PgPool,
    table: &str,
    id: i64,
) -> Result<message::Operation, String> {
    // The table name was checked to be a plain (schema.)name in `Settings`.
    let sql = format!("SELECT payload FROM {table} WHERE id = $1");
    let row: Option<(Vec<u8>,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| e.to_string())?;
    let (payload,) = row.ok_or_else(|| "no such row (already pruned?)".to_owned())?;
    message::attachment(&payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn config(args: &[&str]) -> Config {
        Cli::try_parse_from([&["sockgate"], args].concat())
            .unwrap()
            .config
    }

    #[test]
    fn defaults_are_the_emitters() {
        let s = Settings::of(&config(&[])).unwrap();
        assert_eq!(s.channel, "socket.io#/");
        assert_eq!(s.table, "socket_io_attachments");
    }

    #[test]
    fn the_table_must_be_a_name() {
        let s = Settings::of(&config(&[
            "--emitter-postgres-channel",
            "app",
            "--emitter-postgres-table",
            "app.attachments",
        ]))
        .unwrap();
        assert_eq!(s.channel, "app#/");
        assert_eq!(s.table, "app.attachments");
        for bad in ["x; drop table y", "a.b.c", "", "a."] {
            assert!(
                Settings::of(&config(&["--emitter-postgres-table", bad])).is_err(),
                "{bad}"
            );
        }
    }
}
