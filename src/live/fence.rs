//! A fence between operations sent through the adapter: an operation learns
//! that the request it sent has been committed to the database, so that a
//! request sent after that point reaches every node after it. PostgreSQL
//! delivers notifications in commit order, and each node handles the
//! adapter's requests in the order they arrive, so "committed before the
//! next one was sent" is "handled before it on every node".
//!
//! The adapter's own API has no such point: `fetch_sockets` sends its
//! request and then waits for the other nodes' answers in one future. The
//! driver (`db::adapter`) calls [`sent`] once a notification it was asked to
//! send is committed, and the future watched by [`watch`] is told.

use std::cell::Cell;
use std::future::Future;

use tokio::sync::oneshot;

tokio::task_local! {
    static FENCE: Cell<Option<oneshot::Sender<()>>>;
}

/// Wraps `fut`: the receiver resolves with `Ok` once the first adapter
/// request `fut` sends is committed, and with `Err` if `fut` ends (or is
/// dropped) without the driver saying so: an adapter that sent nothing, or
/// whose driver has no fence (Redis, the local adapter). Either way, once
/// it resolves, whatever `fut` sent is ahead of what is sent next.
pub fn watch<F: Future>(fut: F) -> (impl Future<Output = F::Output>, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    (FENCE.scope(Cell::new(Some(tx)), fut), rx)
}

/// Called by the adapter's driver when a notification it sent is committed.
/// Outside [`watch`] (heartbeats, other requests) it does nothing.
pub fn sent() {
    let _ = FENCE.try_with(|fence| {
        if let Some(tx) = fence.take() {
            let _ = tx.send(());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_send_inside_the_watched_future_releases_the_fence() {
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        let (fut, mut rx) = watch(async move {
            sent();
            // The watched future goes on (waiting for answers) after its
            // request is out; the fence must not wait for that.
            gate_rx.await.unwrap();
            sent();
            7
        });
        let task = tokio::spawn(fut);
        (&mut rx).await.expect("released by the first send");
        assert!(!task.is_finished());
        gate_tx.send(()).unwrap();
        assert_eq!(task.await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_future_that_sends_nothing_releases_the_fence_when_it_ends() {
        let (fut, rx) = watch(async { 3 });
        assert_eq!(fut.await, 3);
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn sends_outside_a_watched_future_are_ignored() {
        sent();
        let (fut, rx) = watch(async {});
        // A send from another task does not release this fence.
        tokio::spawn(async { sent() }).await.unwrap();
        fut.await;
        assert!(rx.await.is_err());
    }
}
