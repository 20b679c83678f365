//! Keeps every live socket's session honest: one task per node re-checks all
//! of this node's sessions on an interval, in batched queries, ends the
//! sockets of sessions that are gone or expired (`session_expired` first) and
//! extends sessions close to expiry. Knows nothing of HTTP, the handshake or
//! Socket.IO: a session is judged by `session::rules` and sockets are ended
//! through `live` and `guests`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::json;
use tokio::sync::Notify;

use crate::audit::event::{Client, Event, Events};
use crate::guests;
use crate::live::fleet::{FleetCell, Scope};
use crate::live::registry::{self, Registry};
use crate::metrics::Metrics;
use crate::session::prefetch::HeardDeletions;
use crate::session::rules::{self as session, EndReason, Verdict};
use crate::session::store::{Extension, SessionStore, StoreError};

pub const SESSION_EXPIRED_EVENT: &str = "session_expired";

#[derive(Clone)]
pub struct Watcher {
    pub registry: Registry,
    pub store: SessionStore,
    pub events: Events,
    pub interval: Duration,
    pub refresh_window: Duration,
    pub default_ttl: Duration,
    /// Wakes the watcher for an immediate tick (e.g. after the revocation
    /// listener reconnects and may have missed notices).
    pub wake: Arc<Notify>,
    pub metrics: Metrics,
    /// Ends soft-locked guests' sockets (this node's only: every node runs
    /// its own watcher).
    pub fleet: FleetCell,
    /// The deletions the revocation trigger reported lately, for the
    /// handshakes whose session lookup started before they were heard.
    pub heard: Arc<HeardDeletions>,
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub sessions: usize,
    pub queries: usize,
    pub ended_sessions: usize,
    pub ended_sockets: usize,
    pub refreshed: usize,
    /// Time spent waiting on the database.
    pub db_time: Duration,
}

/// `session_expired`'s payload: why, in words a user can be shown.
pub fn expired_payload(reason: EndReason) -> serde_json::Value {
    json!({ "reason": reason.as_str(), "message": "Your session has expired. Please log in again." })
}

impl Watcher {
    /// Runs until the process ends. The first tick comes after a random
    /// fraction of the interval and each later one after the interval ±10%,
    /// so nodes started together do not query in step.
    pub async fn run(self) {
        let first = self.interval.mul_f64(rand::rng().random_range(0.0..1.0));
        let mut next = first;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = self.wake.notified() => {}
            }
            match self.tick(Utc::now()).await {
                Ok(report) if report.sessions > 0 => tracing::debug!(?report, "session re-check"),
                Ok(_) => {}
                Err(err) => {
                    // Fail safe, not closed: a database blip must not end every
                    // live socket; the next tick checks again.
                    self.metrics.revalidation_failed_ticks.inc();
                    tracing::warn!(error = %err, "session re-check failed; sockets kept until the next check");
                }
            }
            next = self.interval.mul_f64(rand::rng().random_range(0.9..1.1));
        }
    }

    /// One re-check of every session with a socket on this node.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<TickReport, StoreError> {
        let tick_started = Instant::now();
        self.metrics.revalidation_ticks.inc();
        let live = self.registry.sessions();
        let mut report = TickReport {
            sessions: live.len(),
            ..Default::default()
        };
        let sids: Vec<String> = live.iter().map(|s| s.sid.clone()).collect();
        let mut found = HashMap::with_capacity(sids.len());
        for chunk in sids.chunks(self.store.check_chunk()) {
            let started = Instant::now();
            let rows = self.store.check_many(chunk).await?;
            report.db_time += started.elapsed();
            report.queries += 1;
            self.metrics.revalidation_queries.inc();
            for row in rows {
                found.insert(row.sid.clone(), row);
            }
        }
        let verdicts: Vec<_> = live
            .iter()
            .map(|live| {
                let row = found.get(&live.sid);
                let stored = row.map(|r| (r.expire_at, r.user.as_ref()));
                let verdict = session::verdict(stored, &live.user_id, now, self.refresh_window);
                (live, row, verdict)
            })
            .collect();
        // A session the rules keep names the socket's user as stored, so its
        // guest lock is that user's: one query over the distinct users,
        // rather than reading the user out of every row's `sess` again.
        let mut kept_users: Vec<&session::UserId> = verdicts
            .iter()
            .filter(|(_, _, v)| matches!(v, Verdict::Keep | Verdict::Refresh))
            .map(|(live, _, _)| &live.user_id)
            .collect();
        kept_users.sort_unstable();
        kept_users.dedup();
        let locks = if kept_users.is_empty() {
            HashMap::new()
        } else {
            let started = Instant::now();
            let locks = self.store.locked_guests(&kept_users).await;
            report.db_time += started.elapsed();
            report.queries += 1;
            self.metrics.revalidation_queries.inc();
            locks?
        };
        let mut extensions = Vec::new();
        let mut locked_guests: HashMap<&session::UserId, &str> = HashMap::new();
        for (live, row, verdict) in verdicts {
            if let (Some(lock), Verdict::Keep | Verdict::Refresh) =
                (locks.get(&live.user_id), verdict)
            {
                locked_guests.insert(&live.user_id, lock);
                continue;
            }
            match verdict {
                Verdict::Keep => {}
                Verdict::Refresh => {
                    let ttl = session::ttl_from_max_age(
                        row.and_then(|r| r.original_max_age_ms),
                        self.default_ttl,
                    );
                    let (expire_secs, cookie_expires) = session::extension(now, ttl);
                    extensions.push(Extension {
                        sid: live.sid.clone(),
                        expire_secs,
                        cookie_expires,
                    });
                }
                Verdict::End(reason) => {
                    report.ended_sessions += 1;
                    report.ended_sockets += self.end_session(&live.sid, reason);
                }
            }
        }
        for (user, lock) in locked_guests {
            report.ended_sessions += 1;
            report.ended_sockets += self.end_guest(user, lock).await;
        }
        if !extensions.is_empty() {
            let started = Instant::now();
            let result = self.store.extend_many(&extensions).await;
            report.db_time += started.elapsed();
            report.queries += 1;
            self.metrics.revalidation_queries.inc();
            result?;
            report.refreshed = extensions.len();
            for ext in &extensions {
                let user = live.iter().find(|l| l.sid == ext.sid).map(|l| &l.user_id);
                self.events.report(
                    Client::default(),
                    Event::SessionExtended {
                        sid: &ext.sid,
                        user,
                        expires: &ext.cookie_expires,
                    },
                );
            }
        }
        self.metrics.last_tick_sessions.set(report.sessions as i64);
        self.metrics
            .last_tick_db_seconds
            .set(report.db_time.as_secs_f64());
        self.metrics
            .last_tick_seconds
            .set(tick_started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// Ends a soft-locked guest's sockets on this node (`guest:locked`
    /// first): one locked while its handshake was in flight, or by a node
    /// that could not reach this one.
    async fn end_guest(&self, user: &session::UserId, lock: &str) -> usize {
        let message = if lock.is_empty() {
            guests::DEFAULT_REASON
        } else {
            lock
        };
        match guests::disconnect_user(&self.fleet, user, message, Scope::Local).await {
            Ok(count) => {
                self.events.report(
                    Client::default(),
                    Event::LockedGuestFound {
                        user,
                        message,
                        sockets: count,
                    },
                );
                count
            }
            Err(e) => {
                tracing::error!(user = %user, error = %e, "could not disconnect a soft-locked guest");
                0
            }
        }
    }

    /// Ends every socket of a session on this node: `session_expired`, then
    /// the close. Returns how many sockets were told.
    pub fn end_session(&self, sid: &str, reason: EndReason) -> usize {
        let sockets = self.registry.sockets_of(sid);
        let count = sockets.len();
        let ids: Vec<String> = sockets.iter().map(|s| s.id()).collect();
        self.events.report(
            Client::default(),
            Event::SessionEnded {
                sid,
                user: self.registry.sessions_user(sid).as_ref(),
                sockets: &ids,
                reason,
            },
        );
        registry::notify_and_disconnect_all(
            sockets,
            SESSION_EXPIRED_EVENT,
            expired_payload(reason),
        );
        count
    }

    /// The Node app deleted the session whose digest the revocation trigger
    /// sent: its sockets on this node, if any, end now. Returns how many.
    /// A payload that is not a digest ends nothing.
    pub fn session_deleted(&self, digest: &str) -> usize {
        let Some(key) = session::parse_digest(digest) else {
            return 0;
        };
        self.heard.record(key, Instant::now());
        match self.registry.sid_for_digest(&key) {
            Some(sid) => self.end_session(&sid, EndReason::Deleted),
            None => 0,
        }
    }

    /// Runs a full check now instead of at the next interval (after a
    /// revocation notice may have been missed).
    pub fn check_now(&self) {
        self.wake.notify_one();
    }
}
