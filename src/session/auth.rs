//! Deciding whether a handshake may connect: session id → signature →
//! stored session → expiry → logged-in user. Transport-agnostic; the socket
//! layer feeds it headers and the `auth` payload.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::session::cookie::{self as session_id, InvalidReason, SessionIdError, SessionIdSource};
use crate::session::prefetch::Early;
use crate::session::rules::{self as session, UserId};
use crate::session::signature::Secrets;
use crate::session::store::{SessionStore, StoreError};

/// Why a connection is refused. `Display` is exactly what the client
/// receives in its `connect_error`; `reason` is what the audit log keeps.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Authentication required")]
    NoSessionId,
    #[error("Invalid session")]
    InvalidSession(InvalidReason),
    #[error("Session expired")]
    UnknownSession,
    #[error("Session expired")]
    ExpiredSession { user: Option<UserId> },
    #[error("Authentication required")]
    NotLoggedIn,
    #[error("Guest access revoked")]
    GuestLocked { user: UserId },
    #[error("Service unavailable")]
    StoreUnavailable(#[source] StoreError),
}

impl AuthError {
    /// A precise, secret-free reason for the audit row.
    pub fn reason(&self) -> String {
        match self {
            AuthError::NoSessionId => "no session id in cookie or auth".into(),
            AuthError::InvalidSession(r) => format!("invalid session: {}", r.as_str()),
            AuthError::UnknownSession => "no such session".into(),
            AuthError::ExpiredSession { .. } => "session expired".into(),
            AuthError::NotLoggedIn => "session has no logged-in user".into(),
            AuthError::GuestLocked { .. } => "guest access soft-locked".into(),
            AuthError::StoreUnavailable(e) => e.to_string(),
        }
    }

    /// The outcome label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            AuthError::NoSessionId => "no_session_id",
            AuthError::InvalidSession(_) => "invalid_session",
            AuthError::UnknownSession => "unknown_session",
            AuthError::ExpiredSession { .. } => "expired_session",
            AuthError::NotLoggedIn => "not_logged_in",
            AuthError::GuestLocked { .. } => "guest_locked",
            AuthError::StoreUnavailable(_) => "store_unavailable",
        }
    }

    /// The user, when the session named one.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            AuthError::ExpiredSession { user } => user.as_ref(),
            AuthError::GuestLocked { user } => Some(user),
            _ => None,
        }
    }
}

/// A verified handshake: who it is, from the stored session only.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user_id: UserId,
    pub sid: String,
    pub source: SessionIdSource,
}

/// What the decision reads of a stored session row.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    pub expire_at: DateTime<Utc>,
    /// The session's passport user, if anyone is logged in.
    pub user: Option<&'a UserId>,
    /// The session's user is a soft-locked guest.
    pub guest_locked: bool,
}

/// The verdict on a stored session (`None`: no such row) at `now`, in the
/// order DESIGN.md gives: the row, then expiry, then a logged-in user, then
/// a guest lock. Pure: the row and the time decide, nothing else.
pub fn decide(stored: Option<SessionFacts<'_>>, now: DateTime<Utc>) -> Result<UserId, AuthError> {
    let stored = stored.ok_or(AuthError::UnknownSession)?;
    let user = stored.user.cloned();
    if !session::is_live(stored.expire_at, now) {
        return Err(AuthError::ExpiredSession { user });
    }
    let user_id = user.ok_or(AuthError::NotLoggedIn)?;
    if stored.guest_locked {
        return Err(AuthError::GuestLocked { user: user_id });
    }
    Ok(user_id)
}

#[derive(Clone)]
pub struct Authenticator {
    pub store: SessionStore,
    pub secrets: Secrets,
    pub cookie_name: String,
}

/// What a handshake offers: the Cookie header(s) joined as Node joins them,
/// and the Socket.IO `auth` payload if any.
pub struct Credentials<'a> {
    pub cookie_header: Option<&'a str>,
    pub auth: Option<&'a Json>,
}

impl Authenticator {
    /// The session id this handshake names, if any (no database access).
    pub fn session_id(
        &self,
        creds: &Credentials<'_>,
    ) -> Result<(String, SessionIdSource), AuthError> {
        session_id::extract_session_id(
            creds.cookie_header,
            &self.cookie_name,
            creds.auth,
            &self.secrets,
        )
        .map_err(|e| match e {
            SessionIdError::Missing => AuthError::NoSessionId,
            SessionIdError::Invalid(reason) => AuthError::InvalidSession(reason),
        })
    }

    /// One database round trip; every refusal is a typed [`AuthError`].
    pub async fn authenticate(
        &self,
        creds: &Credentials<'_>,
        now: DateTime<Utc>,
    ) -> Result<Authenticated, (AuthError, Option<String>)> {
        self.authenticate_early(creds, None, now).await
    }

    /// The lookup of the session a handshake's cookie names, started now
    /// (`session::prefetch`). `None` when the cookie does not decide the
    /// session id by itself (missing, empty or badly signed): the CONNECT
    /// decides then, with its `auth` payload.
    pub fn prefetch(&self, cookie_header: Option<&str>) -> Option<Early> {
        let creds = Credentials {
            cookie_header,
            auth: None,
        };
        let (sid, source) = self.session_id(&creds).ok()?;
        Some(Early {
            pending: self.store.start_load(&sid),
            sid,
            source,
            started: Instant::now(),
        })
    }

    /// [`authenticate`](Self::authenticate), answered by `early` when it is
    /// given: the lookup [`prefetch`](Self::prefetch) started for the
    /// cookie `creds` carries (its id is that cookie's, so it is not read
    /// again).
    pub async fn authenticate_early(
        &self,
        creds: &Credentials<'_>,
        early: Option<Early>,
        now: DateTime<Utc>,
    ) -> Result<Authenticated, (AuthError, Option<String>)> {
        let (sid, source, pending) = match early {
            Some(early) => (early.sid, early.source, early.pending),
            None => {
                let (sid, source) = self.session_id(creds).map_err(|e| (e, None))?;
                let pending = self.store.start_load(&sid);
                (sid, source, pending)
            }
        };
        let fail = |e: AuthError| (e, Some(sid.clone()));
        let stored = self
            .store
            .finish_load(pending)
            .await
            .map_err(|e| fail(AuthError::StoreUnavailable(e)))?;
        let facts = stored.as_ref().map(|s| SessionFacts {
            expire_at: s.expire_at,
            user: s.user.as_ref(),
            guest_locked: s.guest_lock.is_some(),
        });
        let user_id = decide(facts, now).map_err(fail)?;
        Ok(Authenticated {
            user_id,
            sid,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(secs: i64, micros: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, micros * 1000).unwrap()
    }

    #[test]
    fn each_refusal_in_its_order() {
        let now = at(1_000, 0);
        let live = at(2_000, 0);
        let dead = at(999, 0);
        let seven = UserId::new("7");
        let (user, nobody) = (Some(&seven), None);
        fn facts(
            expire_at: DateTime<Utc>,
            user: Option<&UserId>,
            guest_locked: bool,
        ) -> Option<SessionFacts<'_>> {
            Some(SessionFacts {
                expire_at,
                user,
                guest_locked,
            })
        }
        assert!(matches!(decide(None, now), Err(AuthError::UnknownSession)));
        // Expired wins over a missing user and over a lock, and keeps the user.
        assert!(matches!(
            decide(facts(dead, user, true), now),
            Err(AuthError::ExpiredSession { user: Some(u) }) if u.as_str() == "7"
        ));
        assert!(matches!(
            decide(facts(dead, nobody, false), now),
            Err(AuthError::ExpiredSession { user: None })
        ));
        // A locked session without a user is refused as not logged in.
        assert!(matches!(
            decide(facts(live, nobody, true), now),
            Err(AuthError::NotLoggedIn)
        ));
        assert!(matches!(
            decide(facts(live, user, true), now),
            Err(AuthError::GuestLocked { user }) if user.as_str() == "7"
        ));
        assert_eq!(decide(facts(live, user, false), now).unwrap().as_str(), "7");
        assert!(matches!(
            decide(facts(live, nobody, false), now),
            Err(AuthError::NotLoggedIn)
        ));
    }

    proptest! {
        /// Admitted exactly when the row exists, is live by connect-pg-simple's
        /// rule, names a user and is not locked; the client's message is
        /// one of the design's.
        #[test]
        fn admitted_exactly_when_every_rule_holds(
            exists in any::<bool>(),
            expire in 0i64..4_000,
            expire_us in 0u32..1_000_000,
            now in 0i64..4_000,
            now_us in 0u32..1_000_000,
            logged_in in any::<bool>(),
            locked in any::<bool>(),
        ) {
            let u1 = UserId::new("u1");
            let user = logged_in.then_some(&u1);
            let (expire_at, now) = (at(expire, expire_us), at(now, now_us));
            let facts = exists.then_some(SessionFacts { expire_at, user, guest_locked: locked });
            let verdict = decide(facts, now);
            let live = session::is_live(expire_at, now);
            prop_assert_eq!(verdict.is_ok(), exists && live && logged_in && !locked);
            if let Err(e) = verdict {
                let shown = e.to_string();
                prop_assert!(["Session expired", "Authentication required", "Guest access revoked"].contains(&shown.as_str()), "{}", shown);
            }
        }
    }
}
