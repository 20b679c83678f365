//! Operations on a user's sockets on every node. They go through Socket.IO
//! rooms (`user:<id>`), so the configured adapter (local, PostgreSQL or
//! Redis) carries them to the other nodes; on each node an emit and a
//! disconnect to the same room keep their order per socket. Decides nothing:
//! why a user's sockets end is the caller's (`guests`), and it knows nothing
//! of HTTP or the database.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value as Json;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::socket::Sid;

use crate::live::fence;
use crate::live::registry::{self, Registry};
use crate::session::rules::UserId;

/// An event a client is told before its socket is closed.
#[derive(Debug, Clone)]
pub struct Notice {
    pub event: &'static str,
    pub payload: Json,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the adapter could not reach the other nodes: {0}")]
    Adapter(String),
    #[error("the Socket.IO layer is not running yet")]
    NotStarted,
}

/// Which sockets an operation reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every node, through the adapter (an admin's request).
    Cluster,
    /// This node only (each node's watcher handles its own sockets).
    Local,
}

/// The cluster's sockets, whatever adapter carries operations between nodes.
pub trait Fleet: Send + Sync + 'static {
    /// Tells every socket of `user` in `scope` `notice`, then closes it.
    /// Returns how many sockets there were.
    fn disconnect_user<'a>(
        &'a self,
        user: &'a UserId,
        notice: &'a Notice,
        scope: Scope,
    ) -> BoxFuture<'a, Result<usize, FleetError>>;
}

/// The adapter-backed fleet, with this node's registry as a safety net: a
/// socket whose buffer was full refused the close; it is retried locally
/// until it drains (a remote node's watcher does the same for its own).
pub struct Cluster<A: Adapter> {
    pub io: SocketIo<A>,
    pub registry: Registry,
}

impl<A: Adapter> Fleet for Cluster<A> {
    fn disconnect_user<'a>(
        &'a self,
        user: &'a UserId,
        notice: &'a Notice,
        scope: Scope,
    ) -> BoxFuture<'a, Result<usize, FleetError>> {
        Box::pin(async move {
            let room = user.room();
            let adapter = |e: &dyn std::fmt::Display| FleetError::Adapter(e.to_string());
            let to = || match scope {
                Scope::Cluster => self.io.to(room.clone()),
                Scope::Local => self.io.local().to(room.clone()),
            };
            // This node's sockets are counted before anything is closed:
            // the cluster count below runs alongside the closes.
            let here: HashSet<Sid> = self
                .io
                .local()
                .to(room.clone())
                .fetch_sockets()
                .await
                .map_err(|e| adapter(&e))?
                .iter()
                .map(|s| s.data().id)
                .collect();
            // The other nodes' count is asked for first and waited for last:
            // the notice and the close go out as soon as the request for it
            // is committed, so every node counts its sockets before it closes
            // them, and nobody waits for the answer but the caller.
            let elsewhere = match scope {
                Scope::Local => None,
                Scope::Cluster => {
                    let (fetch, sent) = fence::watch(to().fetch_sockets());
                    // Ended with this future: an adapter failure below
                    // returns early, and nothing would wait for the count.
                    let fetch = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(fetch));
                    let _ = sent.await;
                    Some(fetch)
                }
            };
            // Per-socket send errors (a full buffer) are left to the sweep below;
            // only an adapter failure means other nodes were not reached.
            let emitted = to().emit(notice.event, &notice.payload).await;
            if let Err(socketioxide::BroadcastError::Adapter(e)) = &emitted {
                return Err(adapter(e));
            }
            let closed = to().disconnect().await;
            if let Err(socketioxide::BroadcastError::Adapter(e)) = &closed {
                return Err(adapter(e));
            }
            // Only a socket whose buffer was full missed the notice or the
            // close; retry those on this node. (A blanket sweep of "still
            // connected" sockets would tell some twice: the adapter may still
            // be closing them when its future returns.)
            let buffer_full = |r: &Result<(), socketioxide::BroadcastError>| {
                matches!(r, Err(socketioxide::BroadcastError::Socket(errors))
                    if errors.iter().any(|e| matches!(e, socketioxide::SocketError::InternalChannelFull)))
            };
            if buffer_full(&emitted) || buffer_full(&closed) {
                let stuck: Vec<_> = self
                    .registry
                    .sockets_of_user(user)
                    .into_iter()
                    .filter(|s| s.connected())
                    .collect();
                tracing::warn!(user = %user, sockets = stuck.len(), "sockets with a full buffer: notice and close retried");
                registry::notify_and_disconnect_all(stuck, notice.event, notice.payload.clone());
            }
            let count = match elsewhere {
                None => here.len(),
                Some(fetch) => {
                    let all = fetch
                        .await
                        .map_err(|e| adapter(&e))?
                        .map_err(|e| adapter(&e))?;
                    let remote = all.iter().filter(|s| !here.contains(&s.data().id)).count();
                    here.len() + remote
                }
            };
            Ok(count)
        })
    }
}

/// Set once the Socket.IO layer is built (it needs the state the fleet
/// lives in).
pub type FleetCell = Arc<std::sync::OnceLock<Arc<dyn Fleet>>>;
