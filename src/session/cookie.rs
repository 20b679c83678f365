//! Where a connection's session id comes from, parsed exactly as
//! express-session (and the npm `cookie` package under it) parses it. It ends
//! at the session id: knows nothing of the store or of what a session holds.
//!
//! `cookie.parse` is ported rather than delegated to the `cookie` crate on
//! purpose: the crate follows RFC 6265, the Node app follows the npm package,
//! and the two disagree on edge cases (a lone `"` value, what counts as
//! whitespace, pairs without `=`). The vectors in `fixtures/vectors.json`,
//! produced by the real npm packages, hold this port to the original.

use percent_encoding::percent_decode_str;

use crate::session::signature::Secrets;

/// Browsers do not store cookies larger than this; anything longer is not a
/// session cookie we issued, and refusing it early bounds the HMAC work.
pub const MAX_SESSION_VALUE_LEN: usize = 4096;

/// Why no session id could be taken from a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIdError {
    /// Neither the cookie nor `auth.sessionId` carried a value.
    Missing,
    /// A value was there but is not a valid signed session id.
    Invalid(InvalidReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// No `s:` prefix: express-session ignores unsigned values.
    Unsigned,
    /// No secret verifies the signature.
    BadSignature,
    /// Longer than any cookie a browser keeps.
    TooLong,
    /// `auth.sessionId` was present but not a string.
    NotAString,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::Unsigned => "unsigned session value",
            InvalidReason::BadSignature => "signature does not verify",
            InvalidReason::TooLong => "session value too long",
            InvalidReason::NotAString => "auth.sessionId is not a string",
        }
    }
}

/// Which part of the handshake carried the session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIdSource {
    Cookie,
    Auth,
}

impl SessionIdSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionIdSource::Cookie => "cookie",
            SessionIdSource::Auth => "auth",
        }
    }
}

/// The npm `cookie` package's `parse(str)[name]`: the first pair with that
/// name wins, names and values are trimmed of spaces and tabs, one pair of
/// surrounding double quotes is removed, and the value is percent-decoded
/// only when it holds `%`, kept raw when decoding fails.
pub fn parse_cookie(header: &str, name: &str) -> Option<String> {
    let len = header.len();
    if len < 2 {
        return None;
    }
    let bytes = header.as_bytes();
    let mut index = 0;
    while index < len {
        let Some(eq) = find_from(bytes, b'=', index) else {
            break;
        };
        let end = match find_from(bytes, b';', index) {
            None => len,
            Some(end) if eq > end => {
                // A pair without `=`: resume after the last `;` before the `=`.
                index = rfind_before(bytes, b';', eq).map_or(0, |i| i + 1);
                continue;
            }
            Some(end) => end,
        };
        let key_start = skip_ws_forward(bytes, index, eq);
        let key_end = skip_ws_backward(bytes, eq, key_start);
        if &header[key_start..key_end] == name {
            let mut val_start = skip_ws_forward(bytes, eq + 1, end);
            let mut val_end = skip_ws_backward(bytes, end, val_start);
            if val_start < len
                && bytes[val_start] == b'"'
                && val_end > 0
                && bytes[val_end - 1] == b'"'
            {
                val_start += 1;
                val_end -= 1;
            }
            // JS `slice` yields "" when end < start (a lone `"`).
            let raw = if val_end > val_start {
                &header[val_start..val_end]
            } else {
                ""
            };
            return Some(try_decode(raw));
        }
        index = end + 1;
    }
    None
}

fn find_from(bytes: &[u8], needle: u8, from: usize) -> Option<usize> {
    bytes[from..]
        .iter()
        .position(|&b| b == needle)
        .map(|i| i + from)
}

fn rfind_before(bytes: &[u8], needle: u8, before: usize) -> Option<usize> {
    bytes[..before].iter().rposition(|&b| b == needle)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn skip_ws_forward(bytes: &[u8], mut i: usize, max: usize) -> usize {
    while i < max && is_ws(bytes[i]) {
        i += 1;
    }
    i
}

fn skip_ws_backward(bytes: &[u8], mut i: usize, min: usize) -> usize {
    while i > min && is_ws(bytes[i - 1]) {
        i -= 1;
    }
    i
}

/// `str.indexOf('%') !== -1 ? decodeURIComponent(str) : str`, keeping the
/// raw string when decodeURIComponent would throw (bad escape or the escapes
/// do not form UTF-8). `percent_decode_str` alone is lenient about bad
/// escapes, so they are checked first.
pub fn try_decode(raw: &str) -> String {
    if !raw.contains('%') || !escapes_well_formed(raw) {
        return raw.to_owned();
    }
    match percent_decode_str(raw).decode_utf8() {
        Ok(decoded) => decoded.into_owned(),
        Err(_) => raw.to_owned(),
    }
}

fn escapes_well_formed(raw: &str) -> bool {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() {
                return false;
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// The request's Cookie headers as one string: Node joins repeated headers
/// with "; " (HTTP/2 sends one per cookie), each read as latin1.
pub fn cookie_header(headers: &http::HeaderMap) -> Option<String> {
    let mut values = headers.get_all(http::header::COOKIE).iter().peekable();
    values.peek()?;
    Some(
        values
            .map(|v| header_to_string(v.as_bytes()))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Node reads header bytes as latin1; doing the same keeps non-ASCII cookie
/// bytes (which `HeaderValue::to_str` rejects) comparable with the Node app.
pub fn header_to_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// express-session's handling of a raw value: must start with `s:`, then
/// every secret is tried.
pub fn unsign_value(raw: &str, secrets: &Secrets) -> Result<String, InvalidReason> {
    if raw.len() > MAX_SESSION_VALUE_LEN {
        return Err(InvalidReason::TooLong);
    }
    let signed = raw.strip_prefix("s:").ok_or(InvalidReason::Unsigned)?;
    secrets
        .unsign(signed)
        .map(str::to_owned)
        .ok_or(InvalidReason::BadSignature)
}

/// express-session treats a value that unsigns to the empty id as no
/// session id at all (it starts a new, anonymous session).
fn non_empty(result: Result<String, InvalidReason>) -> Result<String, SessionIdError> {
    match result {
        Ok(sid) if sid.is_empty() => Err(SessionIdError::Missing),
        Ok(sid) => Ok(sid),
        Err(reason) => Err(SessionIdError::Invalid(reason)),
    }
}

/// The session id of a handshake: the cookie first (when it holds a
/// non-empty value, it decides, even if invalid), else `auth.sessionId`.
pub fn extract_session_id(
    cookie_header: Option<&str>,
    cookie_name: &str,
    auth: Option<&serde_json::Value>,
    secrets: &Secrets,
) -> Result<(String, SessionIdSource), SessionIdError> {
    if let Some(raw) = cookie_header.and_then(|h| parse_cookie(h, cookie_name)) {
        // express-session: `if (raw)` — an empty value is no cookie at all.
        if !raw.is_empty() {
            return non_empty(unsign_value(&raw, secrets))
                .map(|sid| (sid, SessionIdSource::Cookie));
        }
    }
    match auth
        .and_then(|a| a.as_object())
        .and_then(|o| o.get("sessionId"))
    {
        None | Some(serde_json::Value::Null) => Err(SessionIdError::Missing),
        Some(serde_json::Value::String(s)) if s.is_empty() => Err(SessionIdError::Missing),
        Some(serde_json::Value::String(s)) => {
            non_empty(unsign_value(&try_decode(s), secrets)).map(|sid| (sid, SessionIdSource::Auth))
        }
        Some(_) => Err(SessionIdError::Invalid(InvalidReason::NotAString)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::signature::sign;
    use proptest::prelude::*;
    use serde_json::json;

    fn secrets() -> Secrets {
        Secrets::new(["new-secret", "old-secret"]).unwrap()
    }

    fn cookie_for(sid: &str, secret: &str) -> String {
        let signed = format!("s:{}", sign(sid, secret));
        percent_encoding::utf8_percent_encode(&signed, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    }

    #[test]
    fn cookie_parsing_follows_the_npm_package() {
        assert_eq!(
            parse_cookie("connect.sid=a; connect.sid=b", "connect.sid").as_deref(),
            Some("a")
        );
        assert_eq!(
            parse_cookie("x=1;  connect.sid = \"q\" ", "connect.sid").as_deref(),
            Some("q")
        );
        assert_eq!(
            parse_cookie("connect.sid=\"", "connect.sid").as_deref(),
            Some("")
        );
        assert_eq!(
            parse_cookie("foo; connect.sid=v", "connect.sid").as_deref(),
            Some("v")
        );
        assert_eq!(
            parse_cookie("connect.sid=%zz%41", "connect.sid").as_deref(),
            Some("%zz%41")
        );
        assert_eq!(
            parse_cookie("connect.sid=%41", "connect.sid").as_deref(),
            Some("A")
        );
        assert_eq!(
            parse_cookie("connect.sid=%FF", "connect.sid").as_deref(),
            Some("%FF")
        );
        assert_eq!(
            parse_cookie("connect.sid=%4", "connect.sid").as_deref(),
            Some("%4")
        );
        assert_eq!(parse_cookie("Connect.sid=a", "connect.sid"), None);
        assert_eq!(
            parse_cookie("connect.sid=a=b", "connect.sid").as_deref(),
            Some("a=b")
        );
    }

    #[test]
    fn cookie_wins_over_auth_and_rotation_verifies() {
        let header = format!("other=1; connect.sid={}", cookie_for("abc", "old-secret"));
        let auth = json!({"sessionId": format!("s:{}", sign("zzz", "new-secret"))});
        assert_eq!(
            extract_session_id(Some(&header), "connect.sid", Some(&auth), &secrets()),
            Ok(("abc".to_owned(), SessionIdSource::Cookie))
        );
        assert_eq!(
            extract_session_id(None, "connect.sid", Some(&auth), &secrets()),
            Ok(("zzz".to_owned(), SessionIdSource::Auth))
        );
    }

    #[test]
    fn missing_and_invalid_are_told_apart() {
        let s = secrets();
        assert_eq!(
            extract_session_id(None, "connect.sid", None, &s),
            Err(SessionIdError::Missing)
        );
        assert_eq!(
            extract_session_id(Some("connect.sid="), "connect.sid", Some(&json!("str")), &s),
            Err(SessionIdError::Missing)
        );
        assert_eq!(
            extract_session_id(Some("connect.sid=abc"), "connect.sid", None, &s),
            Err(SessionIdError::Invalid(InvalidReason::Unsigned))
        );
        assert_eq!(
            extract_session_id(None, "connect.sid", Some(&json!({"sessionId": 42})), &s),
            Err(SessionIdError::Invalid(InvalidReason::NotAString))
        );
        let forged = cookie_for("abc", "attacker");
        assert_eq!(
            extract_session_id(
                Some(&format!("connect.sid={forged}")),
                "connect.sid",
                None,
                &s
            ),
            Err(SessionIdError::Invalid(InvalidReason::BadSignature))
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_any_header(header in any::<String>(), auth in any::<String>()) {
            let s = secrets();
            let _ = parse_cookie(&header, "connect.sid");
            let _ = extract_session_id(Some(&header), "connect.sid", Some(&json!({"sessionId": auth})), &s);
        }

        #[test]
        fn no_forged_value_is_accepted(sid in "[A-Za-z0-9_.-]{0,40}", sig in "[A-Za-z0-9+/]{43}", attacker in ".+") {
            let s = secrets();
            prop_assume!(attacker != "new-secret" && attacker != "old-secret");
            for value in [format!("s:{sid}.{sig}"), format!("s:{}", sign(&sid, &attacker))] {
                prop_assume!(value != format!("s:{}", sign(&sid, "new-secret")));
                prop_assume!(value != format!("s:{}", sign(&sid, "old-secret")));
                let header = format!("connect.sid={value}");
                let got = extract_session_id(Some(&header), "connect.sid", None, &s);
                prop_assert_eq!(got, Err(SessionIdError::Invalid(InvalidReason::BadSignature)));
            }
        }

        #[test]
        fn genuine_values_survive_any_encoding(sid in "[ -~]{1,40}", encode in any::<bool>(), quote in any::<bool>()) {
            prop_assume!(!sid.contains(';'));
            let s = secrets();
            let signed = format!("s:{}", sign(&sid, "old-secret"));
            let mut value = if encode {
                percent_encoding::utf8_percent_encode(&signed, percent_encoding::NON_ALPHANUMERIC).to_string()
            } else {
                prop_assume!(!signed.contains('%') && !signed.contains('"') && !signed.starts_with([' ', '\t']) && !signed.ends_with([' ', '\t']));
                signed.clone()
            };
            if quote { value = format!("\"{value}\""); }
            let header = format!("a=b; connect.sid={value}; connect.sid=s%3Aother.sig");
            prop_assert_eq!(
                extract_session_id(Some(&header), "connect.sid", None, &s),
                Ok((sid.clone(), SessionIdSource::Cookie))
            );
        }
    }
}
