//! Handshakes that arrive while earlier session lookups are in flight are
//! looked up together, in one statement, when one of those finishes. A
//! lookup that finds nothing in flight goes out at once, so a quiet server
//! adds no wait; under load the statements, pool checkouts and round trips
//! are shared. A batch runs in a task of its own: a handshake abandoned by
//! its client cannot strand the others in its batch. Each caller gets the
//! row whose key is exactly the one it asked for, or nothing.
//!
//! Generic over what is looked up and how, so it knows nothing of the
//! session table (the store hands it the statement to run).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Statements in flight at once before lookups wait to share the next.
/// One did better than two in the handshake bench: bigger batches, and a
/// statement over hundreds of ids still takes a fraction of a millisecond.
pub const MAX_IN_FLIGHT: usize = 1;
/// Keys in one statement at most.
pub const MAX_BATCH: usize = 512;

/// A row a lookup answers with, found by its key.
pub trait Keyed: Clone + Send + 'static {
    fn key(&self) -> &str;
}

type Reply<R, E> = oneshot::Sender<Result<Option<R>, E>>;

/// A queued lookup's answer, to be awaited later ([`Lookups::enqueue`]).
pub struct Pending<R, E>(oneshot::Receiver<Result<Option<R>, E>>);

impl<R, E> Pending<R, E> {
    /// The row, or nothing; `None` when the run ended without answering
    /// (it panicked).
    pub async fn answer(self) -> Option<Result<Option<R>, E>> {
        self.0.await.ok()
    }
}

pub struct Lookups<R, E> {
    state: Mutex<State<R, E>>,
    /// Lookups sent to the store, and the statements that carried them:
    /// how much is shared, for `/metrics`.
    looked_up: AtomicU64,
    statements: AtomicU64,
}

struct State<R, E> {
    waiting: Vec<(String, Reply<R, E>)>,
    in_flight: usize,
}

impl<R, E> Default for Lookups<R, E> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                waiting: Vec::new(),
                in_flight: 0,
            }),
            looked_up: AtomicU64::new(0),
            statements: AtomicU64::new(0),
        }
    }
}

impl<R, E> State<R, E> {
    /// The next batch, oldest first, if a statement may start now.
    fn next_batch(&mut self) -> Option<Vec<(String, Reply<R, E>)>> {
        if self.waiting.is_empty() || self.in_flight >= MAX_IN_FLIGHT {
            return None;
        }
        self.in_flight += 1;
        let newer = if self.waiting.len() > MAX_BATCH {
            self.waiting.split_off(MAX_BATCH)
        } else {
            Vec::new()
        };
        Some(std::mem::replace(&mut self.waiting, newer))
    }
}

impl<R, E> Lookups<R, E> {
    /// Lookups sent so far, and the statements that answered them.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.looked_up.load(Ordering::Relaxed),
            self.statements.load(Ordering::Relaxed),
        )
    }
}

impl<R: Keyed, E: Clone + Send + 'static> Lookups<R, E> {
    /// Queues the lookup of `key`'s row, alone or with others, by `fetch`
    /// (the rows of any number of keys, in one statement), and starts its
    /// statement if none is in flight; the answer is kept for whoever holds
    /// the [`Pending`], and dropping it abandons the answer, not the batch.
    /// A lookup that starts a run of batches makes the run's `source` with
    /// `start`; `fetch` takes it and hands it back with each batch's rows,
    /// so what it holds (a connection) outlasts a batch and is dropped when
    /// the run ends.
    pub fn enqueue<S, F, Fut>(
        self: &Arc<Self>,
        key: &str,
        start: impl FnOnce() -> S,
        fetch: F,
    ) -> Pending<R, E>
    where
        S: Send + 'static,
        F: Fn(S, Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = (S, Result<Vec<R>, E>)> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let batch = {
            let mut state = self.state.lock().expect("lookup state");
            state.waiting.push((key.to_owned(), tx));
            state.next_batch()
        };
        if let Some(batch) = batch {
            tokio::spawn(self.clone().run(batch, start(), fetch));
        }
        Pending(rx)
    }

    /// Runs `batch`, then whatever queued meanwhile, until nothing waits.
    async fn run<S, F, Fut>(
        self: Arc<Self>,
        mut batch: Vec<(String, Reply<R, E>)>,
        mut source: S,
        fetch: F,
    ) where
        F: Fn(S, Vec<String>) -> Fut,
        Fut: Future<Output = (S, Result<Vec<R>, E>)>,
    {
        let _unwinding = Unwinding(&self);
        loop {
            let mut keys: Vec<String> = batch.iter().map(|(key, _)| key.clone()).collect();
            keys.sort_unstable();
            keys.dedup();
            self.looked_up
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.statements.fetch_add(1, Ordering::Relaxed);
            // Boxed: the statement's future (the driver's, some KiB) would
            // otherwise sit inline in this run's, which `tokio::spawn` copies
            // more than once for every run it starts.
            let (back, fetched) = Box::pin(fetch(source, keys)).await;
            source = back;
            match fetched {
                Ok(rows) => {
                    let rows: HashMap<&str, &R> = rows.iter().map(|row| (row.key(), row)).collect();
                    for (key, reply) in batch {
                        let _ = reply.send(Ok(rows.get(key.as_str()).map(|row| (*row).clone())));
                    }
                }
                Err(e) => {
                    for (_, reply) in batch {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            let next = {
                let mut state = self.state.lock().expect("lookup state");
                state.in_flight -= 1;
                state.next_batch()
            };
            match next {
                Some(more) => batch = more,
                None => return,
            }
        }
    }
}

/// Frees the statement slot of a run that panics, and lets go of the
/// lookups waiting for it (their callers get `None`): otherwise no batch
/// could ever start again, and every later handshake would wait forever.
struct Unwinding<'a, R, E>(&'a Lookups<R, E>);

impl<R, E> Drop for Unwinding<'_, R, E> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
            state.in_flight = state.in_flight.saturating_sub(1);
            state.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[derive(Clone, Debug, PartialEq)]
    struct Row(String);

    impl Keyed for Row {
        fn key(&self) -> &str {
            &self.0
        }
    }

    fn waiting(n: usize) -> State<Row, ()> {
        State {
            waiting: (0..n)
                .map(|i| (i.to_string(), oneshot::channel().0))
                .collect(),
            in_flight: 0,
        }
    }

    #[test]
    fn a_batch_starts_only_while_fewer_than_the_limit_are_in_flight() {
        let mut state = waiting(3);
        let first = state.next_batch().expect("nothing in flight");
        assert_eq!(first.len(), 3, "all that wait go together");
        assert!(state.next_batch().is_none(), "nothing waits");
        while state.in_flight < MAX_IN_FLIGHT {
            state.waiting = waiting(1).waiting;
            assert!(state.next_batch().is_some());
        }
        state.waiting = waiting(2).waiting;
        assert!(state.next_batch().is_none(), "at the limit, they wait");
        assert_eq!(state.waiting.len(), 2);
        state.in_flight -= 1;
        assert_eq!(state.next_batch().map(|b| b.len()), Some(2));
    }

    #[test]
    fn a_batch_takes_the_oldest_and_at_most_max_batch() {
        let mut state = waiting(MAX_BATCH + 5);
        let batch = state.next_batch().unwrap();
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(batch[0].0, "0");
        assert_eq!(state.waiting.len(), 5);
        assert_eq!(state.waiting[0].0, MAX_BATCH.to_string());
    }

    /// Queued when first polled, as a handshake's lookup is.
    async fn load<E, S, F, Fut>(
        lookups: &Arc<Lookups<Row, E>>,
        key: &str,
        start: impl FnOnce() -> S,
        fetch: F,
    ) -> Option<Result<Option<Row>, E>>
    where
        E: Clone + Send + 'static,
        S: Send + 'static,
        F: Fn(S, Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = (S, Result<Vec<Row>, E>)> + Send + 'static,
    {
        lookups.enqueue(key, start, fetch).answer().await
    }

    type Fetched = futures_util::future::BoxFuture<'static, (Run, Result<Vec<Row>, ()>)>;

    /// What a run of batches carries from one to the next: the statements
    /// it sent, counted also in `all`.
    struct Run {
        sent: usize,
        all: Arc<AtomicUsize>,
    }

    /// A store where only even keys exist, slow enough that lookups pile up.
    fn fetch(mut run: Run, keys: Vec<String>) -> Fetched {
        run.sent += 1;
        run.all.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let rows = keys
                .into_iter()
                .filter(|k| k.parse::<u32>().unwrap() % 2 == 0)
                .map(Row)
                .collect();
            (run, Ok(rows))
        })
    }

    #[tokio::test]
    async fn lookups_that_arrive_together_share_statements_and_each_gets_its_own_row() {
        let lookups = Arc::new(Lookups::<Row, ()>::default());
        let statements = Arc::new(AtomicUsize::new(0));
        let runs = AtomicUsize::new(0);
        let start = || {
            runs.fetch_add(1, Ordering::SeqCst);
            Run {
                sent: 0,
                all: statements.clone(),
            }
        };
        let keys: Vec<String> = (0..40).map(|i| (i % 30).to_string()).collect();
        let answers =
            futures_util::future::join_all(keys.iter().map(|k| load(&lookups, k, start, fetch)))
                .await;
        for (key, answer) in keys.iter().zip(answers) {
            let row = answer.expect("answered").expect("no error");
            let even = key.parse::<u32>().unwrap() % 2 == 0;
            assert_eq!(row, even.then(|| Row(key.clone())), "key {key}");
        }
        // The first went alone; the 39 that came while it was out, together,
        // in the same run, which carried what the first statement had.
        assert_eq!(statements.load(Ordering::SeqCst), 2);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one run, started once");
        assert_eq!(lookups.counts(), (40, 2), "what /metrics reports");
    }

    #[tokio::test]
    async fn a_run_hands_its_source_from_batch_to_batch_and_a_new_run_starts_afresh() {
        let lookups = Arc::new(Lookups::<Row, ()>::default());
        let all = Arc::new(AtomicUsize::new(0));
        let start = || Run {
            sent: 0,
            all: all.clone(),
        };
        let sent_before = |run: Run, keys: Vec<String>| async move {
            let sent = run.sent;
            let (run, _) = fetch(run, keys).await;
            (run, Ok(vec![Row(sent.to_string())]))
        };
        // Two batches in one run: "0" alone, then "1" twice, both queued
        // while the first was out, together.
        let first = load(&lookups, "0", start, sent_before);
        let later = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            futures_util::future::join(
                load(&lookups, "1", start, sent_before),
                load(&lookups, "1", start, sent_before),
            )
            .await
        };
        let (first, (second, third)) = futures_util::future::join(first, later).await;
        assert_eq!(first, Some(Ok(Some(Row("0".into())))));
        assert_eq!(
            second,
            Some(Ok(Some(Row("1".into())))),
            "the run's second batch"
        );
        assert_eq!(third, second);
        // The run is over; the next lookup starts one of its own.
        let alone = load(&lookups, "0", start, sent_before).await;
        assert_eq!(alone, Some(Ok(Some(Row("0".into())))));
        assert_eq!(all.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_run_that_panics_lets_go_of_its_lookups_and_the_next_starts_afresh() {
        let lookups = Arc::new(Lookups::<Row, ()>::default());
        let first = load(
            &lookups,
            "boom",
            || (),
            |(), keys| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(!keys.contains(&"boom".to_owned()), "a bug in a fetch");
                ((), Ok(Vec::new()))
            },
        );
        let queued = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            load(&lookups, "1", || (), |(), _| async { ((), Ok(Vec::new())) }).await
        };
        let (first, queued) = tokio::time::timeout(
            Duration::from_secs(2),
            futures_util::future::join(first, queued),
        )
        .await
        .expect("the lookups of a run that panicked are let go");
        assert_eq!(first, None, "the panicking batch's lookup");
        assert_eq!(queued, None, "the one waiting behind it");
        let after = tokio::time::timeout(
            Duration::from_secs(2),
            load(
                &lookups,
                "2",
                || (),
                |(), keys| async move { ((), Ok(keys.into_iter().map(Row).collect())) },
            ),
        )
        .await
        .expect("a lookup after the panic is not left waiting");
        assert_eq!(after, Some(Ok(Some(Row("2".into())))));
    }

    #[tokio::test]
    async fn a_failed_statement_answers_every_lookup_in_its_batch() {
        let lookups = Arc::new(Lookups::<Row, &'static str>::default());
        let keys: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let answers = futures_util::future::join_all(keys.iter().map(|key| {
            load(
                &lookups,
                key,
                || (),
                |(), _keys| async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    ((), Err("database away"))
                },
            )
        }))
        .await;
        for answer in answers {
            assert_eq!(answer, Some(Err("database away")));
        }
    }
}
