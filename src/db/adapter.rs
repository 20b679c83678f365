//! The driver under socketioxide's PostgreSQL adapter: its own sqlx driver,
//! except for a LISTEN stream that outlives a database restart. Knows nothing
//! of sessions or of what the adapter carries.
//!
//! socketioxide-postgres 0.2.0's sqlx driver hands the adapter
//! `PgListener::into_stream()`. That stream ends at its first error (sqlx's
//! `try_stream!` stops after yielding one), and a database restart makes
//! one: the listener's reconnect fails while the server is down. The
//! adapter's event task then returns, and the node hears no other node
//! again (broadcasts, guest locks, answers to `fetch_sockets`) until the
//! process restarts. Here the stream reconnects and LISTENs again by itself,
//! with backoff. Notices sent while it was away are lost, as with any
//! LISTEN; the session watcher catches locks made meanwhile at its next tick.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use socketioxide_postgres::drivers::Driver;
use socketioxide_postgres::drivers::sqlx::SqlxDriver;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgNotification};

#[derive(Debug, Clone)]
pub struct ListenDriver {
    inner: SqlxDriver,
    pool: PgPool,
}

impl ListenDriver {
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: SqlxDriver::new(pool.clone()),
            pool,
        }
    }
}

async fn subscribe(pool: &PgPool, channels: &[String]) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all(channels.iter().map(String::as_str))
        .await?;
    Ok(listener)
}

/// Notifications on `channels` for as long as the pool is open, starting
/// with `listener`.
fn notifications(
    listener: PgListener,
    pool: PgPool,
    channels: Vec<String>,
) -> BoxStream<'static, PgNotification> {
    stream::unfold(
        (Some(listener), pool, channels),
        |(mut listener, pool, channels)| async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut current = match listener.take() {
                    Some(l) => l,
                    None => match subscribe(&pool, &channels).await {
                        Ok(l) => {
                            tracing::info!("socket adapter: listening again");
                            l
                        }
                        Err(sqlx::Error::PoolClosed) => return None,
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "socket adapter cannot LISTEN; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    },
                };
                match current.try_recv().await {
                    Ok(Some(notice)) => return Some((notice, (Some(current), pool, channels))),
                    // Lost and already reconnected (eager reconnect).
                    Ok(None) => {
                        tracing::warn!("socket adapter lost its LISTEN connection; reconnected");
                        listener = Some(current);
                    }
                    Err(sqlx::Error::PoolClosed) => return None,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "socket adapter LISTEN connection failed; reconnecting");
                        drop(current);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        },
    )
    .boxed()
}

impl Driver for ListenDriver {
    type Error = sqlx::Error;
    type Notification = PgNotification;
    type NotificationStream = BoxStream<'static, PgNotification>;

    async fn init(&self, table: &str) -> Result<(), Self::Error> {
        self.inner.init(table).await
    }

    async fn listen(&self, channels: &[&str]) -> Result<Self::NotificationStream, Self::Error> {
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        // The first subscription fails as the stock driver's does: the
        // adapter's start reports it.
        let listener = subscribe(&self.pool, &channels).await?;
        Ok(notifications(listener, self.pool.clone(), channels))
    }

    async fn notify(&self, channel: &str, message: &str) -> Result<(), Self::Error> {
        self.inner.notify(channel, message).await?;
        // `pg_notify` runs in a transaction of its own: it is committed now.
        crate::live::fence::sent();
        Ok(())
    }

    async fn push_attachment(&self, table: &str, attachment: &[u8]) -> Result<i64, Self::Error> {
        self.inner.push_attachment(table, attachment).await
    }

    async fn get_attachment(&self, table: &str, id: i64) -> Result<Vec<u8>, Self::Error> {
        self.inner.get_attachment(table, id).await
    }

    async fn cleanup_attachments(
        &self,
        table: &str,
        interval: Duration,
    ) -> Result<(), Self::Error> {
        self.inner.cleanup_attachments(table, interval).await
    }

    async fn close(&self, channels: &[&str]) -> Result<(), Self::Error> {
        self.inner.close(channels).await
    }
}
