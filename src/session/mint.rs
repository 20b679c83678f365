//! Writing a logged-in session as the Node app would after a login
//! (`sockgate session mint`, the development sign-in, the test and
//! conformance fixtures): a new session id, its row through the store, and
//! the signed cookie value express-session would set. Knows nothing of HTTP
//! or SQL: setting the cookie is the caller's, the row is `session::store`'s.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use rand::RngCore;

use crate::session::rules::{self as session, UserId};
use crate::session::store::SessionStore;

pub struct Minted {
    pub sid: String,
    /// `s:<sid>.<signature>`, what `auth.sessionId` carries.
    pub signed: String,
    /// The URL-encoded cookie value, as express-session sets it.
    pub cookie_value: String,
    pub expires_at: DateTime<Utc>,
}

/// A new session id as express-session makes them (uid-safe, 24 bytes).
pub fn new_sid() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Writes a logged-in session for `user`, as express-session + passport +
/// connect-pg-simple would after a login.
pub async fn mint_session(
    store: &SessionStore,
    secrets: &crate::session::signature::Secrets,
    user: &UserId,
    ttl: Duration,
) -> anyhow::Result<Minted> {
    let sid = new_sid();
    let (expire, sess) = session::new_session_json(user, Utc::now(), ttl);
    store.upsert(&sid, &sess, expire).await?;
    let signed = signed(secrets, &sid);
    Ok(Minted {
        cookie_value: cookie_value(&signed),
        signed,
        sid,
        expires_at: Utc.timestamp_opt(expire, 0).single().unwrap_or_default(),
    })
}

/// `sid` signed as express-session signs its cookie: `s:<sid>.<signature>`
/// with the first secret.
pub fn signed(secrets: &crate::session::signature::Secrets, sid: &str) -> String {
    format!("s:{}", secrets.sign(sid))
}

/// A signed value (`s:<sid>.<signature>`) URL-encoded as express-session
/// puts it in the cookie.
pub fn cookie_value(signed: &str) -> String {
    percent_encoding::utf8_percent_encode(signed, COOKIE_ENCODE).to_string()
}

/// `encodeURIComponent`'s set, which express-session's cookie serializer
/// uses for the value.
const COOKIE_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');
