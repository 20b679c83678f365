//! Deciding whether a handshake may connect: session id → signature →
//! stored session → expiry → logged-in user. Transport-agnostic; the socket
//! layer feeds it headers and the `auth` payload.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::session::{self, UserId};
use crate::session_id::{self, InvalidReason, SessionIdError, SessionIdSource};
use crate::session_store::{SessionStore, StoreError};
use crate::signature::Secrets;

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
        let (sid, source) = self.session_id(creds).map_err(|e| (e, None))?;
        let fail = |e: AuthError| (e, Some(sid.clone()));
        let stored = self
            .store
            .load(&sid)
            .await
            .map_err(|e| fail(AuthError::StoreUnavailable(e)))?
            .ok_or_else(|| fail(AuthError::UnknownSession))?;
        let user = stored.sess.as_ref().and_then(session::passport_user);
        if !session::is_live(stored.expire_at, now) {
            return Err(fail(AuthError::ExpiredSession { user }));
        }
        let user_id = user.ok_or_else(|| fail(AuthError::NotLoggedIn))?;
        if stored.guest_lock.is_some() {
            return Err(fail(AuthError::GuestLocked { user: user_id }));
        }
        Ok(Authenticated {
            user_id,
            sid,
            source,
        })
    }
}
