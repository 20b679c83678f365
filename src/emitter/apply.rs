//! Applying an emitter [`Operation`] to this node's sockets, and only
//! them: every node hears every emitter message, so each one acts locally
//! (socketioxide's `local()` operators) and nothing is relayed through the
//! adapter. Knows nothing of where operations come from (PostgreSQL,
//! Redis) or of their wire format; the listeners count what it returns.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use socketioxide::adapter::Adapter;
use socketioxide::operators::BroadcastOperators;
use socketioxide::{BroadcastError, SocketError, SocketIo};

use crate::emitter::message::{Operation, Target};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error("no namespace {0} on this node")]
    Namespace(String),
    #[error("the local adapter failed: {0}")]
    Adapter(String),
    #[error("the event cannot be encoded for Socket.IO: {0}")]
    Encode(String),
}

/// This node's sockets, whatever adapter type the layer was built with.
pub(crate) trait LocalSockets: Send + Sync + 'static {
    /// Applies `op` to this node's sockets in namespace `nsp`.
    fn apply<'a>(
        &'a self,
        nsp: &'a str,
        op: &'a Operation,
    ) -> BoxFuture<'a, Result<(), ApplyError>>;
}

/// Set when the Socket.IO layer is built, like the fleet (the state exists
/// before the layer); the listeners start after it.
pub(crate) type LocalSocketsCell = Arc<OnceLock<Arc<dyn LocalSockets>>>;

/// Hands the layer's `io` to the emitter listeners.
pub(crate) fn attach<A: Adapter>(cell: &LocalSocketsCell, io: &SocketIo<A>) {
    // A second layer on one state is already warned about by the fleet.
    let _ = cell.set(Arc::new(io.clone()));
}

fn scoped<A: Adapter>(ops: BroadcastOperators<A>, target: &Target) -> BroadcastOperators<A> {
    let mut ops = ops.local();
    // No rooms means every socket of the namespace, as in a Node server.
    if !target.rooms.is_empty() {
        ops = ops.to(target.rooms.clone());
    }
    if !target.except.is_empty() {
        ops = ops.except(target.except.clone());
    }
    ops
}

impl<A: Adapter> LocalSockets for SocketIo<A> {
    fn apply<'a>(
        &'a self,
        nsp: &'a str,
        op: &'a Operation,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            let ns = self
                .of(nsp)
                .ok_or_else(|| ApplyError::Namespace(nsp.to_owned()))?;
            let adapter = |e: &dyn std::fmt::Display| ApplyError::Adapter(e.to_string());
            match op {
                Operation::Emit {
                    target,
                    event,
                    args,
                    volatile,
                } => {
                    let mut ops = scoped(ns, target);
                    if *volatile {
                        ops = ops.volatile();
                    }
                    match ops.emit(event, args).await {
                        Ok(()) => Ok(()),
                        // A full or closed socket misses this event as it
                        // would on a Node server; the others got it.
                        Err(BroadcastError::Socket(errors)) => {
                            let full = errors
                                .iter()
                                .filter(|e| matches!(e, SocketError::InternalChannelFull))
                                .count();
                            if full > 0 && !*volatile {
                                tracing::warn!(
                                    event = %event,
                                    sockets = full,
                                    "emitter event dropped for sockets with a full buffer"
                                );
                            }
                            Ok(())
                        }
                        Err(BroadcastError::Serialize(e)) => Err(ApplyError::Encode(e.to_string())),
                        Err(BroadcastError::Adapter(e)) => Err(adapter(&e)),
                    }
                }
                Operation::Join { target, rooms } => scoped(ns, target)
                    .join(rooms.clone())
                    .await
                    .map_err(|e| adapter(&e)),
                Operation::Leave { target, rooms } => scoped(ns, target)
                    .leave(rooms.clone())
                    .await
                    .map_err(|e| adapter(&e)),
                // Each sockgate socket is alone on its connection (one
                // namespace), so closing it closes the connection whatever
                // `close` says.
                Operation::Disconnect { target, .. } => match scoped(ns, target).disconnect().await
                {
                    Ok(()) | Err(BroadcastError::Socket(_)) => Ok(()),
                    Err(BroadcastError::Serialize(e)) => Err(ApplyError::Encode(e.to_string())),
                    Err(BroadcastError::Adapter(e)) => Err(adapter(&e)),
                },
                // Never reaches sockets: `record_and_apply` stops it first.
                Operation::ServerSideEmit { .. } => Ok(()),
            }
        })
    }
}

/// Counts `op` as received from `source`, applies it, and counts it as
/// applied or logs why not. `serverSideEmit` is received but never applied:
/// no app code runs on a sockgate node to hear it.
pub(crate) async fn record_and_apply(
    sockets: &dyn LocalSockets,
    metrics: &Metrics,
    source: &'static str,
    nsp: &str,
    op: &Operation,
) {
    let kind = op.kind();
    metrics.emitter_received(source, kind);
    if let Operation::ServerSideEmit { event } = op {
        tracing::debug!(%event, "emitter serverSideEmit ignored: no server-side listeners on sockgate");
        return;
    }
    match sockets.apply(nsp, op).await {
        Ok(()) => {
            tracing::debug!(source, kind, nsp, "emitter operation applied");
            metrics.emitter_applied(source, kind);
        }
        Err(e) => tracing::warn!(source, kind, error = %e, "emitter operation not applied"),
    }
}
