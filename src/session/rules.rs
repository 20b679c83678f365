//! What a stored session means: who is logged in, whether it is still live,
//! and how it is extended. Plain functions, no database.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A passport user id as text: numbers as their decimal form, strings as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The room every socket of this user joins, on every node.
    pub fn room(&self) -> String {
        format!("user:{}", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `sess.passport.user`, read the way passport reads it: a number (0
/// included), a non-empty string, or an object carrying such an `id`
/// (passport's own example serializes `{id, username}`). A missing or empty
/// `passport` (what logout leaves) means nobody is logged in. The server
/// reads it straight from the text (`session::sess`); this reading of the
/// whole tree is what that is tested against.
#[cfg(test)]
pub fn passport_user(sess: &Value) -> Option<UserId> {
    user_in(sess.get("passport")?.get("user")?)
}

/// The user id in passport's `user` value: see `passport_user`.
pub fn user_in(user: &Value) -> Option<UserId> {
    id_of(user).or_else(|| user.as_object().and_then(|o| o.get("id")).and_then(id_of))
}

fn id_of(v: &Value) -> Option<UserId> {
    match v {
        Value::Number(n) => Some(UserId(n.to_string())),
        Value::String(s) if !s.is_empty() => Some(UserId(s.clone())),
        _ => None,
    }
}

/// `Math.ceil(Date.now() / 1000)`: connect-pg-simple's notion of "now".
pub fn ceil_unix_seconds(now: DateTime<Utc>) -> i64 {
    let ms = now.timestamp_millis();
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0)
}

/// connect-pg-simple's `expire >= to_timestamp(ceil(now))`: a session is
/// live up to and including the second its `expire` names.
pub fn is_live(expire: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    expire.timestamp_micros() >= ceil_unix_seconds(now) * 1_000_000
}

/// The longest lifetime a refresh grants, whatever `originalMaxAge` says:
/// a century is past any real session, and far inside what `expire` can
/// hold (connect-pg-simple itself fails on a `maxAge` beyond PostgreSQL's
/// range).
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The lifetime a refresh grants: `cookie.originalMaxAge` (ms) when it is a
/// positive number, else the configured ttl; never more than [`MAX_TTL`].
pub fn ttl_from_max_age(max_age_ms: Option<f64>, default_ttl: Duration) -> Duration {
    max_age_ms
        .filter(|ms| ms.is_finite() && *ms > 0.0)
        // `as` saturates: a huge or absurd value cannot wrap.
        .map(|ms| Duration::from_millis(ms as u64))
        .unwrap_or(default_ttl)
        .min(MAX_TTL)
}

/// A stored session's `cookie.originalMaxAge` (ms), if it has a number there.
pub fn original_max_age(sess: &Value) -> Option<f64> {
    sess.get("cookie")
        .and_then(|c| c.get("originalMaxAge"))
        .and_then(Value::as_f64)
}

/// [`ttl_from_max_age`] of a stored session's `cookie.originalMaxAge`.
pub fn session_ttl(sess: &Value, default_ttl: Duration) -> Duration {
    ttl_from_max_age(original_max_age(sess), default_ttl)
}

/// The new `expire` (whole seconds, as connect-pg-simple writes it) and the
/// session JSON with `cookie.expires` moved to match, so that a later
/// `store.set` of this session by the Node app cannot move the expiry back.
pub fn extend(sess: &Value, now: DateTime<Utc>, default_ttl: Duration) -> (i64, Value) {
    let ttl = session_ttl(sess, default_ttl);
    let (expire_secs, expires) = extension(now, ttl);
    let mut sess = sess.clone();
    if !sess.is_object() {
        sess = Value::Object(Default::default());
    }
    let obj = sess.as_object_mut().expect("made an object above");
    let cookie = obj
        .entry("cookie")
        .or_insert_with(|| Value::Object(Default::default()));
    if !cookie.is_object() {
        *cookie = Value::Object(Default::default());
    }
    let cookie = cookie.as_object_mut().expect("made an object above");
    cookie
        .entry("originalMaxAge")
        .or_insert_with(|| Value::from(ttl.as_millis() as u64));
    // JS `Date.prototype.toJSON`: ISO 8601 with milliseconds and `Z`.
    cookie.insert("expires".into(), Value::from(expires));
    (expire_secs, sess)
}

/// What the periodic re-check decides for one session with live sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// End its sockets with `session_expired`.
    End(EndReason),
    /// Live but within the refresh window: extend it.
    Refresh,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The row is gone (logout, regenerate, prune).
    Deleted,
    /// `expire` has passed.
    Expired,
    /// The session no longer names the socket's user (passport logout or
    /// another login on the same session).
    LoggedOut,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::Expired => "expired",
            EndReason::LoggedOut => "logged_out",
        }
    }
}

/// The re-check rule: `stored` is the session's `expire` and user, `None`
/// when the row is gone.
pub fn verdict(
    stored: Option<(DateTime<Utc>, Option<&UserId>)>,
    socket_user: &UserId,
    now: DateTime<Utc>,
    refresh_window: Duration,
) -> Verdict {
    let Some((expire, user)) = stored else {
        return Verdict::End(EndReason::Deleted);
    };
    if !is_live(expire, now) {
        return Verdict::End(EndReason::Expired);
    }
    if user != Some(socket_user) {
        return Verdict::End(EndReason::LoggedOut);
    }
    let window = chrono::Duration::from_std(refresh_window).unwrap_or(chrono::Duration::MAX);
    if expire - now <= window {
        Verdict::Refresh
    } else {
        Verdict::Keep
    }
}

/// The new `expire` (whole seconds, connect-pg-simple's
/// `ceil(now / 1000 + ttl)`) and the `cookie.expires` text that matches it.
pub fn extension(now: DateTime<Utc>, ttl: Duration) -> (i64, String) {
    let ttl = chrono::Duration::from_std(ttl.min(MAX_TTL)).unwrap_or(chrono::Duration::MAX);
    let expires = now
        .checked_add_signed(ttl)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    // JS `Date.prototype.toJSON`: ISO 8601 with milliseconds and `Z`.
    (
        ceil_unix_seconds(expires),
        expires.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// The session JSON express-session + passport store for a fresh login.
pub fn new_session_json(user: &UserId, now: DateTime<Utc>, ttl: Duration) -> (i64, Value) {
    let user_value = user
        .as_str()
        .parse::<i64>()
        .ok()
        .filter(|n| n.to_string() == user.as_str())
        .map_or_else(|| Value::from(user.as_str()), Value::from);
    let sess = serde_json::json!({
        "cookie": {
            "originalMaxAge": ttl.as_millis() as u64,
            "httpOnly": true,
            "path": "/"
        },
        "passport": { "user": user_value }
    });
    extend(&sess, now, ttl)
}

/// The SHA-256 of a session id: how the registry and the revocation
/// trigger name a session without holding its id.
pub fn digest(sid: &str) -> [u8; 32] {
    Sha256::digest(sid.as_bytes()).into()
}

/// A [`digest`] as the revocation trigger sends it: hex, either case.
pub fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex, &mut key).ok()?;
    Some(key)
}

/// A short one-way fingerprint of a session id, for logs and audit rows:
/// enough to correlate events, useless as a credential.
pub fn fingerprint(sid: &str) -> String {
    hex::encode(&digest(sid)[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    /// The app sees this reference (audit rows, the proxy's calls): its
    /// spelling is part of the contract.
    #[test]
    fn fingerprint_is_the_first_six_bytes_of_sha256_in_lowercase_hex() {
        // SHA-256("abc") = ba7816bf 8f01cfea ...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01");
        assert_eq!(fingerprint(""), "e3b0c44298fc");
    }

    #[test]
    fn a_digest_is_read_back_from_hex_of_either_case_and_nothing_else() {
        let d = digest("a");
        assert_eq!(parse_digest(&hex::encode(d)), Some(d));
        assert_eq!(parse_digest(&hex::encode(d).to_uppercase()), Some(d));
        assert_eq!(parse_digest("not a digest"), None);
        assert_eq!(parse_digest(&hex::encode(&d[..31])), None);
    }

    #[test]
    fn passport_user_forms() {
        assert_eq!(
            passport_user(&json!({"passport": {"user": 42}})),
            Some(UserId::new("42"))
        );
        assert_eq!(
            passport_user(&json!({"passport": {"user": 0}})),
            Some(UserId::new("0"))
        );
        assert_eq!(
            passport_user(&json!({"passport": {"user": "abc"}})),
            Some(UserId::new("abc"))
        );
        assert_eq!(
            passport_user(&json!({"passport": {"user": {"id": 7, "username": "x"}}})),
            Some(UserId::new("7"))
        );
        assert_eq!(passport_user(&json!({"passport": {}})), None);
        assert_eq!(passport_user(&json!({"passport": {"user": ""}})), None);
        assert_eq!(passport_user(&json!({"passport": {"user": null}})), None);
        assert_eq!(
            passport_user(&json!({"passport": {"user": {"username": "x"}}})),
            None
        );
        assert_eq!(passport_user(&json!({"cookie": {}})), None);
        assert_eq!(passport_user(&json!("not an object")), None);
    }

    #[test]
    fn boundary_is_inclusive_at_the_ceiled_second() {
        let at = |s: i64, ms: i64| Utc.timestamp_millis_opt(s * 1000 + ms).unwrap();
        let expire = at(1_000, 0);
        assert!(is_live(expire, at(999, 0)));
        assert!(is_live(expire, at(999, 1)), "now ceils to 1000 == expire");
        assert!(is_live(expire, at(1_000, 0)));
        assert!(!is_live(expire, at(1_000, 1)), "now ceils to 1001 > expire");
        assert!(!is_live(expire, at(1_001, 0)));
    }

    #[test]
    fn extend_moves_cookie_expires_and_uses_original_max_age() {
        let now = Utc.timestamp_millis_opt(1_700_000_000_500).unwrap();
        let sess = json!({"cookie": {"originalMaxAge": 60_000, "expires": "2000-01-01T00:00:00.000Z"}, "passport": {"user": 1}});
        let (expire, sess) = extend(&sess, now, Duration::from_secs(86_400));
        assert_eq!(expire, 1_700_000_061);
        assert_eq!(sess["cookie"]["expires"], "2023-11-14T22:14:20.500Z");
        assert_eq!(sess["passport"]["user"], 1);
        let (expire, _) = extend(&json!({}), now, Duration::from_secs(10));
        assert_eq!(expire, 1_700_000_011);
    }

    #[test]
    fn huge_or_odd_max_age_is_bounded_not_a_panic() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let day = Duration::from_secs(86_400);
        for max_age in [
            1e300,
            f64::MAX,
            9.2e18,
            1.8e19,
            f64::INFINITY,
            f64::NAN,
            -5.0,
            0.0,
        ] {
            let ttl = ttl_from_max_age(Some(max_age), day);
            assert!(ttl <= MAX_TTL, "{max_age}");
            let (secs, iso) = extension(now, ttl);
            assert!(secs > now.timestamp(), "{max_age}");
            assert!(iso.ends_with('Z'));
            let sess = json!({"cookie": {"originalMaxAge": max_age}});
            let _ = extend(&sess, now, day);
        }
        assert_eq!(ttl_from_max_age(Some(f64::NAN), day), day);
        assert_eq!(ttl_from_max_age(Some(1e300), day), MAX_TTL);
        let (_, iso) = extension(DateTime::<Utc>::MAX_UTC, MAX_TTL);
        assert!(!iso.is_empty(), "the end of time does not overflow");
    }

    #[test]
    fn verdicts() {
        let u = UserId::new("1");
        let other = UserId::new("2");
        let now = Utc.timestamp_opt(1_000_000, 0).unwrap();
        let w = Duration::from_secs(300);
        let at = |s: i64| now + chrono::Duration::seconds(s);
        assert_eq!(verdict(None, &u, now, w), Verdict::End(EndReason::Deleted));
        assert_eq!(
            verdict(Some((at(-1), Some(&u))), &u, now, w),
            Verdict::End(EndReason::Expired)
        );
        assert_eq!(
            verdict(Some((at(1000), None)), &u, now, w),
            Verdict::End(EndReason::LoggedOut)
        );
        assert_eq!(
            verdict(Some((at(1000), Some(&other))), &u, now, w),
            Verdict::End(EndReason::LoggedOut)
        );
        assert_eq!(
            verdict(Some((at(0), Some(&u))), &u, now, w),
            Verdict::Refresh
        );
        assert_eq!(
            verdict(Some((at(300), Some(&u))), &u, now, w),
            Verdict::Refresh
        );
        assert_eq!(
            verdict(Some((at(301), Some(&u))), &u, now, w),
            Verdict::Keep
        );
    }

    proptest! {
        #[test]
        fn verdict_at_the_boundaries(now_ms in 0i64..4_000_000_000_000, offset_ms in -5_000i64..5_000, window_s in 0u64..1_000) {
            let u = UserId::new("1");
            let now = Utc.timestamp_millis_opt(now_ms).unwrap();
            let window = Duration::from_secs(window_s);
            // Around expiry: expired exactly when connect-pg-simple would say so.
            let expire = now + chrono::Duration::milliseconds(offset_ms);
            let v = verdict(Some((expire, Some(&u))), &u, now, window);
            prop_assert_eq!(v == Verdict::End(EndReason::Expired), !is_live(expire, now));
            // Around the refresh window's edge: one second either side.
            let edge = now + chrono::Duration::seconds(window_s as i64);
            let inside = edge - chrono::Duration::seconds(1);
            let outside = edge + chrono::Duration::seconds(1);
            if is_live(inside, now) {
                prop_assert_eq!(verdict(Some((inside, Some(&u))), &u, now, window), Verdict::Refresh);
            }
            prop_assert_eq!(verdict(Some((edge, Some(&u))), &u, now, window), if is_live(edge, now) { Verdict::Refresh } else { Verdict::End(EndReason::Expired) });
            prop_assert_eq!(verdict(Some((outside, Some(&u))), &u, now, window), Verdict::Keep);
            // An extension always leaves the session live and out of the window it was in.
            let (secs, iso) = extension(now, Duration::from_secs(window_s + 1));
            let extended = Utc.timestamp_opt(secs, 0).unwrap();
            prop_assert!(is_live(extended, now));
            prop_assert_eq!(verdict(Some((extended, Some(&u))), &u, now, window), Verdict::Keep);
            prop_assert!(iso.ends_with('Z'));
        }

        #[test]
        fn live_iff_expire_not_before_ceiled_now(expire_s in 0i64..4_000_000_000, expire_us in 0i64..1_000_000, now_ms in 0i64..4_000_000_000_000) {
            let expire = Utc.timestamp_micros(expire_s * 1_000_000 + expire_us).unwrap();
            let now = Utc.timestamp_millis_opt(now_ms).unwrap();
            let ceil = (now_ms + 999) / 1000;
            prop_assert_eq!(is_live(expire, now), expire_s * 1_000_000 + expire_us >= ceil * 1_000_000);
        }

        #[test]
        fn one_second_either_side(expire_s in 1i64..4_000_000_000) {
            let expire = Utc.timestamp_opt(expire_s, 0).unwrap();
            prop_assert!(is_live(expire, Utc.timestamp_opt(expire_s - 1, 0).unwrap()));
            prop_assert!(is_live(expire, Utc.timestamp_opt(expire_s, 0).unwrap()));
            prop_assert!(!is_live(expire, Utc.timestamp_opt(expire_s + 1, 0).unwrap()));
        }

        #[test]
        fn extended_sessions_are_live_for_their_ttl(now_ms in 0i64..4_000_000_000_000, ttl_s in 1u64..10_000_000) {
            let now = Utc.timestamp_millis_opt(now_ms).unwrap();
            let (expire, sess) = extend(&json!({"passport": {"user": 1}}), now, Duration::from_secs(ttl_s));
            let expire_at = Utc.timestamp_opt(expire, 0).unwrap();
            prop_assert!(is_live(expire_at, now + chrono::Duration::seconds(ttl_s as i64)));
            let cookie_expires = DateTime::parse_from_rfc3339(sess["cookie"]["expires"].as_str().unwrap()).unwrap();
            prop_assert_eq!(ceil_unix_seconds(cookie_expires.with_timezone(&Utc)), expire);
        }
    }
}
