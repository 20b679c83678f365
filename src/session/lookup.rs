//! Handshakes that arrive while earlier session lookups are in flight are
//! looked up together, in one statement (`sid = ANY($1)`), when one of
//! those finishes. A lookup that finds nothing in flight goes out at once,
//! so a quiet server adds no wait; under load the statements, pool
//! checkouts and round trips are shared. A batch runs in a task of its own:
//! a handshake abandoned by its client cannot strand the others in its batch.
//! Each caller gets the row of the id it asked for, matched by the stored
//! `sid` exactly, or nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::session::store::{SessionStore, StoreError, StoredSession};

/// Statements in flight at once before lookups wait to share the next.
pub const MAX_IN_FLIGHT: usize = 1;
/// Session ids in one statement at most.
pub const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Option<StoredSession>, StoreError>>;

#[derive(Default)]
pub struct Lookups {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: Vec<(String, Reply)>,
    in_flight: usize,
}

impl State {
    /// The next batch, if a statement may start now.
    fn next_batch(&mut self) -> Option<Vec<(String, Reply)>> {
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

impl Lookups {
    /// The stored session of `sid`, looked up alone or with others.
    pub async fn load(
        &self,
        store: &SessionStore,
        sid: &str,
    ) -> Result<Option<StoredSession>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let batch = {
            let mut state = self.state.lock().expect("lookup state");
            state.waiting.push((sid.to_owned(), tx));
            state.next_batch()
        };
        if let Some(batch) = batch {
            tokio::spawn(run(store.clone(), batch));
        }
        // The batch task answers every id it took, even when its statement
        // failed; a dropped sender means that task panicked.
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(Arc::new(sea_orm::DbErr::Custom(
                "session lookup ended without an answer".to_owned(),
            ))))
        })
    }
}

/// Runs `batch`, then whatever queued meanwhile, until nothing waits.
async fn run(store: SessionStore, mut batch: Vec<(String, Reply)>) {
    loop {
        let mut sids: Vec<String> = batch.iter().map(|(sid, _)| sid.clone()).collect();
        sids.sort_unstable();
        sids.dedup();
        match store.load_many(&sids).await {
            Ok(rows) => {
                let rows: HashMap<&str, &StoredSession> =
                    rows.iter().map(|row| (row.sid.as_str(), row)).collect();
                for (sid, reply) in batch {
                    let _ = reply.send(Ok(rows.get(sid.as_str()).map(|row| (*row).clone())));
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        let next = {
            let mut state = store.lookups().state.lock().expect("lookup state");
            state.in_flight -= 1;
            state.next_batch()
        };
        match next {
            Some(more) => batch = more,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: usize) -> State {
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
}
