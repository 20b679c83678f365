//! Background tasks that must outlive their own bugs: a panic is logged (by
//! the panic hook), counted in `/metrics` and the task started again after a
//! short backoff, instead of the node silently losing its session re-checks
//! or its audit writer. Knows nothing of the tasks it runs beyond their
//! names.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// Aborts the task when dropped, so aborting the supervisor ends the
/// supervised task with it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make()` as a task, and again whenever it panics; a task that
/// returns is done (the audit writer, once every sender is gone). Abort the
/// returned handle to stop both.
pub fn spawn<F, Fut>(name: &'static str, metrics: Metrics, mut make: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut task = AbortOnDrop(tokio::spawn(make()));
            match (&mut task.0).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    metrics
                        .background_restarts
                        .get_or_create(&vec![("task", name)])
                        .inc();
                    tracing::error!(task = name, retry_in = ?backoff, "background task panicked; starting it again");
                }
                Err(_) => return,
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_panicking_task_is_counted_and_restarted() {
        let metrics = Metrics::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let handle = spawn("test", metrics.clone(), move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("a bug");
                }
                std::future::pending::<()>().await;
            }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while runs.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("restarted twice");
        assert!(
            metrics
                .render()
                .contains("sockgate_background_restarts_total{task=\"test\"} 2")
        );
        handle.abort();
    }
}
