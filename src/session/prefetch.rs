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
//! An answer read more than [`FRESH`] before the CONNECT is not used: the
//! session is looked up again, so a session ended in the meantime is
//! refused as it would have been without the early lookup.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::session::cookie::SessionIdSource;
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
}
