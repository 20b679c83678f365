//! A handshake's session lookup, started when its engine.io session opens
//! instead of when its Socket.IO CONNECT arrives.
//!
//! The cookie a CONNECT is judged by is the opening request's: engine.io
//! keeps that request for the session's life, and a non-empty session
//! cookie decides the session id by itself (the `auth` payload is read
//! only without one). So the id, and the row, can be asked for one client
//! round trip earlier, while the client reads the open packet and sends
//! CONNECT; under load the CONNECT then finds its answer waiting. Still one
//! lookup per handshake, judged (expiry, user, lock) at the CONNECT.
//!
//! An answer whose lookup started more than [`FRESH`] before the CONNECT
//! is not used, nor one whose session's deletion was heard (the revocation
//! trigger) after it started: the session is looked up again, so a session
//! ended in the meantime is refused as it would have been without the early
//! lookup.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::session::cookie::SessionIdSource;
use crate::session::rules::digest;
use crate::session::store::PendingLoad;

/// How long after the open an early lookup may answer the CONNECT: one
/// client round trip, with room for a slow network. Later CONNECTs look
/// the session up again (and the early statement was wasted).
pub const FRESH: Duration = Duration::from_millis(500);

/// Whether a lookup started at `started` may answer a CONNECT at `now`.
pub fn is_fresh(started: Instant, now: Instant) -> bool {
    now.saturating_duration_since(started) <= FRESH
}

/// An early lookup, kept with the engine.io session's request until its
/// first CONNECT takes it. Taken once: a later CONNECT on the same session
/// looks up afresh.
pub struct Prefetch(Mutex<Option<Early>>);

/// What the opening request's cookie named, and its lookup in flight.
pub struct Early {
    pub sid: String,
    pub source: SessionIdSource,
    pub started: Instant,
    pub pending: PendingLoad,
}

/// What [`Prefetch::take`] found.
pub enum Taken {
    Fresh(Early),
    /// Started longer than [`FRESH`] ago; dropped.
    Stale,
    /// Already taken by an earlier CONNECT.
    Gone,
}

impl Prefetch {
    pub fn new(early: Early) -> Self {
        Self(Mutex::new(Some(early)))
    }

    /// The early lookup, if it is still there and fresh at `now`.
    pub fn take(&self, now: Instant) -> Taken {
        let early = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match early {
            Some(early) if is_fresh(early.started, now) => Taken::Fresh(early),
            Some(_) => Taken::Stale,
            None => Taken::Gone,
        }
    }
}

/// Session deletions heard from the revocation trigger (by the SHA-256 of
/// the id, all the notice carries) in the last [`FRESH`]: enough to tell
/// whether an early lookup still fresh read its row before its session was
/// deleted. Older ones are forgotten as new ones arrive.
#[derive(Default)]
pub struct HeardDeletions(Mutex<Heard>);

#[derive(Default)]
struct Heard {
    order: VecDeque<(Instant, [u8; 32])>,
    latest: HashMap<[u8; 32], Instant>,
    /// When more deletions than [`MAX_HEARD`] came within [`FRESH`] (an app
    /// pruning thousands of expired sessions at once): every early lookup
    /// started before this is unused, since which were deleted is no longer
    /// known.
    overflowed_at: Option<Instant>,
}

/// Deletions kept at most; each is about 100 bytes.
pub const MAX_HEARD: usize = 100_000;

impl HeardDeletions {
    /// A deletion notice's digest (`session::rules::digest`) heard at
    /// `now`.
    pub fn record(&self, key: [u8; 32], now: Instant) {
        let mut heard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(at, old)) = heard.order.front() {
            if is_fresh(at, now) {
                break;
            }
            heard.order.pop_front();
            if heard.latest.get(&old) == Some(&at) {
                heard.latest.remove(&old);
            }
        }
        if heard.order.len() >= MAX_HEARD {
            heard.overflowed_at = Some(now);
            return;
        }
        heard.order.push_back((now, key));
        heard.latest.insert(key, now);
    }

    /// Whether `sid`'s deletion was heard at or after `started`, or too
    /// many deletions came since to tell.
    pub fn since(&self, sid: &str, started: Instant) -> bool {
        let heard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if heard.overflowed_at.is_some_and(|at| at >= started) {
            return true;
        }
        if heard.latest.is_empty() {
            return false;
        }
        heard
            .latest
            .get(&digest(sid))
            .is_some_and(|&at| at >= started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Fresh exactly up to FRESH after the start, and a clock that
        /// seems to run backwards (a CONNECT read before the open) counts
        /// as no time at all.
        #[test]
        fn fresh_exactly_within_the_bound(after_ms in 0u64..2_000, before in any::<bool>()) {
            let started = Instant::now() + Duration::from_secs(10);
            let gap = Duration::from_millis(after_ms);
            let now = if before { started - gap } else { started + gap };
            prop_assert_eq!(is_fresh(started, now), before || gap <= FRESH);
        }
    }

    #[test]
    fn a_deletion_heard_after_the_start_and_only_of_that_session_counts() {
        let heard = HeardDeletions::default();
        let t0 = Instant::now();
        let started = t0 + Duration::from_millis(10);
        assert!(!heard.since("a", started), "nothing heard");
        heard.record(digest("a"), t0);
        assert!(
            !heard.since("a", started),
            "heard before the lookup started"
        );
        heard.record(digest("a"), started);
        assert!(heard.since("a", started), "heard as it started");
        assert!(!heard.since("b", started), "another session");
        // Forgotten once older than FRESH, as new ones arrive.
        let later = started + FRESH + Duration::from_millis(1);
        heard.record(digest("b"), later);
        assert!(!heard.since("a", t0));
        assert!(heard.since("b", later));
    }

    #[test]
    fn too_many_deletions_at_once_leave_every_earlier_lookup_unused() {
        let heard = HeardDeletions::default();
        let t0 = Instant::now();
        for i in 0..MAX_HEARD {
            heard.record(digest(&i.to_string()), t0);
        }
        assert!(!heard.since("x", t0 + Duration::from_millis(1)));
        let t1 = t0 + Duration::from_millis(2);
        heard.record(digest("one too many"), t1);
        assert!(heard.since("x", t0 + Duration::from_millis(1)));
        assert!(!heard.since("x", t1 + Duration::from_millis(1)));
    }
}
