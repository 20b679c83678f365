//! Listening for `@socket.io/redis-emitter` with `ADAPTER=redis`: one
//! Redis pub/sub connection, PSUBSCRIBEd to the broadcast channels
//! `<key>#/#*` and SUBSCRIBEd to the request channel `<key>-request#/#`,
//! reconnecting with backoff; each message decoded and applied in arrival
//! order. Owns that connection only. Knows nothing of the wire format's
//! details (`message`) or of how an operation reaches sockets (`apply`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use socketioxide_redis::drivers::redis::redis_client;

use crate::emitter::apply::{self, LocalSockets};
use crate::emitter::message::{self, Notice};
use crate::metrics::Metrics;

const SOURCE: &str = "redis";
/// The only namespace sockgate serves, as for PostgreSQL.
const NAMESPACE: &str = "/";

/// The channels the emitter publishes on, from its `key` option.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    broadcast: String,
    request: String,
}

impl Channels {
    pub(crate) fn of(key: &str) -> Self {
        Self {
            broadcast: format!("{key}#{NAMESPACE}#"),
            request: format!("{key}-request#{NAMESPACE}#"),
        }
    }
}

/// Subscribes for the emitter for as long as the process runs.
pub(crate) async fn listen(
    client: redis_client::Client,
    channels: Channels,
    sockets: Arc<dyn LocalSockets>,
    metrics: Metrics,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            // `#/#*` also matches one-room channels (`#/#user:42#`).
            pubsub
                .psubscribe(format!("{}*", channels.broadcast))
                .await?;
            pubsub.subscribe(&channels.request).await?;
            Ok::<_, redis_client::RedisError>(pubsub)
        };
        let mut pubsub = match subscribed.await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "emitter listener cannot subscribe on Redis; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        tracing::info!(channel = %channels.broadcast, "listening for @socket.io/redis-emitter");
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let payload = msg.get_payload_bytes();
            let decoded = if msg.get_channel_name() == channels.request {
                message::redis_request(payload)
            } else {
                message::redis_broadcast(payload).map(Notice::Inline)
            };
            match decoded {
                Ok(Notice::Inline(op)) => {
                    apply::record_and_apply(&*sockets, &metrics, SOURCE, NAMESPACE, &op).await;
                }
                Ok(_) => {}
                Err(e) => {
                    metrics.emitter_malformed(SOURCE);
                    tracing::warn!(error = %e, bytes = payload.len(), "malformed emitter message ignored");
                }
            }
        }
        // What the app publishes meanwhile is lost, as with a Node adapter.
        tracing::warn!("emitter listener lost its Redis connection; resubscribing");
        tokio::time::sleep(backoff).await;
    }
}
