//! The event proxy's rules, as plain functions and types: which client
//! events the app asked for (the allowlist's `*` patterns), the request it
//! receives (the JSON body and its signature), how its answer is read (the
//! ack and the rooms), the error ack a client gets instead, and the
//! per-socket budget of calls in flight. Knows nothing of HTTP clients,
//! sockets, sessions or the audit log: it is handed strings and bytes and
//! returns them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::Sha256;

use crate::messages;

/// The header carrying `sha256=<hex>`, the MAC of `"{timestamp}.{body}"`.
pub const SIGNATURE_HEADER: &str = "x-sockgate-signature";
/// The header carrying the request's Unix time in seconds, under the MAC.
pub const TIMESTAMP_HEADER: &str = "x-sockgate-timestamp";

/// Rooms sockgate puts every socket in (`user:<id>`, the handle of guest
/// locks and of the emitters' per-user messages): the app may neither put
/// a socket in another user's nor take one out of its own.
pub const RESERVED_ROOM_PREFIX: &str = "user:";
/// Longest room name an answer may name, in bytes.
pub const MAX_ROOM_BYTES: usize = 256;
/// Most room names one answer may carry (`join` and `leave` together).
pub const MAX_ROOMS_PER_ANSWER: usize = 100;
/// Largest answer body read from the app: it becomes one ack packet.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How much of a client's event name goes into a log line or an audit row:
/// the client chose it, and it may be as long as a whole message.
const SHOWN_EVENT_BYTES: usize = 128;

/// The event names the app asked for. Each pattern matches a whole name;
/// `*` stands for any run of characters (none included), every other
/// character for itself.
#[derive(Debug, Clone)]
pub struct EventPatterns(Vec<String>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("EVENT_PROXY_EVENTS names no event (comma-separated names, `*` allowed)")]
    Empty,
}

impl EventPatterns {
    /// A comma-separated list; blanks around names and empty entries are
    /// ignored.
    pub fn parse(list: &str) -> Result<Self, PatternError> {
        let patterns: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if patterns.is_empty() {
            return Err(PatternError::Empty);
        }
        Ok(Self(patterns))
    }

    pub fn allows(&self, event: &str) -> bool {
        self.0.iter().any(|p| matches(p, event))
    }
}

impl std::fmt::Display for EventPatterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Whether `name` matches `pattern` (`*`: any run of characters). Greedy
/// with a return to the last `*`, without recursion: the client chooses
/// `name`, and a recursive matcher on a crafted one could go exponential.
/// Bytes compare as well as characters here: `*` is ASCII and UTF-8 never
/// reuses an ASCII byte inside another character.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            last_star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((star, taken)) = last_star {
            pi = star + 1;
            ni = taken + 1;
            last_star = Some((star, taken + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The event name as a log line or an audit row shows it: cut at a
/// character boundary.
pub fn shown(event: &str) -> &str {
    if event.len() <= SHOWN_EVENT_BYTES {
        return event;
    }
    let mut end = SHOWN_EVENT_BYTES;
    while !event.is_char_boundary(end) {
        end -= 1;
    }
    &event[..end]
}

/// What the app is told about a client event: the JSON body of the POST.
/// Who sent it is as sockgate knows it from the session, never from the
/// client; the session appears only as its fingerprint, and the cookie
/// only when the app asked for it (EVENT_PROXY_FORWARD_COOKIE).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Call<'a> {
    pub event: &'a str,
    /// Every argument the client sent, in order; the client's ack callback
    /// is not one of them.
    pub args: &'a [Json],
    pub user_id: &'a str,
    pub socket_id: &'a str,
    /// `session::rules::fingerprint` of the session id: enough to tell a
    /// user's sessions apart, useless as a credential.
    pub session_ref: &'a str,
    /// The socket's rooms on this node, `user:<id>` included.
    pub rooms: &'a [String],
    /// `<cookie name>=<signed value>`, as the browser sends it to the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<&'a str>,
}

impl Call<'_> {
    pub fn body(&self) -> Vec<u8> {
        // A struct of strings and JSON values has no way to fail.
        serde_json::to_vec(self).expect("a call always serializes")
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value: `sha256=` and the hex HMAC-SHA256, keyed
/// with the shared secret, of `"{timestamp}.{body}"`. The timestamp is under
/// the MAC so the app can refuse an old request replayed as it was.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// What the app answered, read by [`read_answer`].
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The client's ack (`null` when absent).
    #[serde(default)]
    pub ack: Json,
    /// Rooms the socket joins (after it leaves `leave`).
    #[serde(default)]
    pub join: Vec<String>,
    #[serde(default)]
    pub leave: Vec<String>,
}

/// Why a client event got an error ack instead of the app's answer. The
/// `Display` is for the log and the audit row; the client sees
/// [`ProxyError::ack`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("event not in EVENT_PROXY_EVENTS")]
    NotAllowed,
    /// Arguments that are not JSON (binary attachments): the app gets
    /// JSON only.
    #[error("the event's arguments could not be read as JSON: {0}")]
    Unreadable(String),
    #[error("{max} calls of this socket already waiting for the app")]
    TooManyInFlight { max: usize },
    #[error("no answer from the app within {0:?}")]
    Timeout(Duration),
    #[error("the app answered HTTP {0}")]
    Status(u16),
    #[error("the app could not be reached: {0}")]
    Unreachable(String),
    #[error("the app's answer was refused: {0}")]
    BadAnswer(String),
    #[error("the socket closed before the app's answer could be applied")]
    SocketClosed,
}

impl ProxyError {
    /// The error ack's `code`, the audit row's reason and the metric's
    /// outcome.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NotAllowed => "event_not_allowed",
            ProxyError::Unreadable(_) => "event_unreadable",
            ProxyError::TooManyInFlight { .. } => "too_many_in_flight",
            ProxyError::Timeout(_) => "proxy_timeout",
            ProxyError::Status(_) => "proxy_status",
            ProxyError::Unreachable(_) => "proxy_unreachable",
            ProxyError::BadAnswer(_) => "proxy_bad_answer",
            ProxyError::SocketClosed => "socket_closed",
        }
    }

    /// Refused on sockgate's side, before the app was asked (the client's
    /// doing), rather than a failed call (the app's).
    pub fn before_the_app(&self) -> bool {
        matches!(
            self,
            ProxyError::NotAllowed | ProxyError::Unreadable(_) | ProxyError::TooManyInFlight { .. }
        )
    }

    /// The ack the client receives: `{"error": {"code", "message"}}`, with
    /// the app's HTTP `status` for `proxy_status`.
    pub fn ack(&self) -> Json {
        let message = match self {
            ProxyError::NotAllowed => messages::PROXY_NOT_ALLOWED,
            ProxyError::Unreadable(_) => messages::PROXY_UNREADABLE,
            ProxyError::TooManyInFlight { .. } => messages::PROXY_TOO_MANY_IN_FLIGHT,
            ProxyError::Timeout(_) => messages::PROXY_TIMEOUT,
            ProxyError::Status(_) => messages::PROXY_STATUS,
            ProxyError::Unreachable(_) => messages::PROXY_UNREACHABLE,
            ProxyError::BadAnswer(_) => messages::PROXY_BAD_ANSWER,
            ProxyError::SocketClosed => messages::PROXY_SOCKET_CLOSED,
        };
        let mut error = json!({ "code": self.code(), "message": message });
        if let ProxyError::Status(status) = self {
            error["status"] = (*status).into();
        }
        json!({ "error": error })
    }
}

/// Reads the app's answer. A 2xx with an empty body is an answer with no
/// ack and no rooms; otherwise the body is one JSON object with only the
/// keys `ack`, `join` and `leave`, so an app that answers with the ack
/// itself is told at once rather than acking `null`. Room names are
/// checked all together: an answer with one bad name changes nothing.
pub fn read_answer(status: u16, body: &[u8]) -> Result<Answer, ProxyError> {
    if !(200..300).contains(&status) {
        return Err(ProxyError::Status(status));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer::default());
    }
    let bad = |e: serde_json::Error| ProxyError::BadAnswer(e.to_string());
    // An object first: serde would also read a struct from an array.
    let object: serde_json::Map<String, Json> = serde_json::from_slice(body).map_err(bad)?;
    let answer: Answer = serde_json::from_value(Json::Object(object)).map_err(bad)?;
    if answer.join.len() + answer.leave.len() > MAX_ROOMS_PER_ANSWER {
        return Err(ProxyError::BadAnswer(format!(
            "more than {MAX_ROOMS_PER_ANSWER} rooms in join and leave"
        )));
    }
    for room in answer.join.iter().chain(&answer.leave) {
        check_room(room).map_err(ProxyError::BadAnswer)?;
    }
    Ok(answer)
}

fn check_room(room: &str) -> Result<(), String> {
    if room.is_empty() {
        return Err("an empty room name".into());
    }
    if room.len() > MAX_ROOM_BYTES {
        return Err(format!("a room name over {MAX_ROOM_BYTES} bytes"));
    }
    if room.starts_with(RESERVED_ROOM_PREFIX) {
        return Err(format!(
            "room {:?}: names starting with {RESERVED_ROOM_PREFIX:?} are sockgate's",
            shown(room)
        ));
    }
    Ok(())
}

/// Calls waiting for the app, per socket. A socket appears only while it
/// has one, so idle sockets cost nothing and a closed one leaves nothing.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<String, usize>>);

/// One call's place in its socket's budget, given back when dropped.
pub struct Slot<'a> {
    in_flight: &'a InFlight,
    socket: String,
}

impl InFlight {
    /// A slot for `socket` when it has fewer than `max` calls waiting.
    pub fn acquire(&self, socket: &str, max: usize) -> Option<Slot<'_>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(socket.to_owned()).or_default();
        if *count >= max {
            if *count == 0 {
                map.remove(socket);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            in_flight: self,
            socket: socket.to_owned(),
        })
    }

    #[cfg(test)]
    fn sockets(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut map = self.in_flight.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.socket) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.socket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious recursive definition, the reference for [`matches`].
    fn reference(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, _) => n.is_empty(),
            (Some(b'*'), _) => reference(&p[1..], n) || (!n.is_empty() && reference(p, &n[1..])),
            (Some(c), Some(d)) if c == d => reference(&p[1..], &n[1..]),
            _ => false,
        }
    }

    fn verify(secret: &[u8], timestamp: i64, body: &[u8], header: &str) -> bool {
        let Some(hex) = header.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(tag) = hex::decode(hex) else {
            return false;
        };
        mac(secret, timestamp, body).verify_slice(&tag).is_ok()
    }

    #[test]
    fn patterns() {
        let list = EventPatterns::parse(" chat:* , ping,,").unwrap();
        assert!(list.allows("chat:send"));
        assert!(list.allows("chat:"));
        assert!(list.allows("ping"));
        assert!(!list.allows("pingx"));
        assert!(!list.allows("xchat:send"));
        assert!(!list.allows("Chat:send"), "case matters, as in Socket.IO");
        assert_eq!(list.to_string(), "chat:*,ping");
        assert!(EventPatterns::parse("*").unwrap().allows(""));
        assert_eq!(
            EventPatterns::parse(" , ").unwrap_err(),
            PatternError::Empty
        );
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("é*", "été"));
        assert!(matches("*é", "été"));
    }

    #[test]
    fn a_crafted_name_stays_cheap() {
        let name = "a".repeat(64 * 1024);
        let started = std::time::Instant::now();
        assert!(!matches("*a*a*a*a*a*b", &name));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn known_signature() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn body_names_the_caller_and_leaves_the_cookie_out_unless_asked() {
        let args = [json!({"text": "hi"}), json!(2)];
        let rooms = ["user:7".to_owned()];
        let mut call = Call {
            event: "chat:send",
            args: &args,
            user_id: "7",
            socket_id: "abc",
            session_ref: "0123456789ab",
            rooms: &rooms,
            cookie: None,
        };
        let body: Json = serde_json::from_slice(&call.body()).unwrap();
        assert_eq!(
            body,
            json!({"event": "chat:send", "args": [{"text": "hi"}, 2], "userId": "7",
                   "socketId": "abc", "sessionRef": "0123456789ab", "rooms": ["user:7"]})
        );
        call.cookie = Some("connect.sid=s%3Ax.y");
        let body: Json = serde_json::from_slice(&call.body()).unwrap();
        assert_eq!(body["cookie"], "connect.sid=s%3Ax.y");
    }

    #[test]
    fn answers() {
        assert_eq!(read_answer(204, b"").unwrap(), Answer::default());
        assert_eq!(read_answer(200, b" \n").unwrap(), Answer::default());
        assert_eq!(
            read_answer(
                200,
                br#"{"ack": {"ok": true}, "join": ["chat:1"], "leave": ["chat:0"]}"#
            )
            .unwrap(),
            Answer {
                ack: json!({"ok": true}),
                join: vec!["chat:1".into()],
                leave: vec!["chat:0".into()],
            }
        );
        assert_eq!(
            read_answer(200, br#"{"ack": [1, 2]}"#).unwrap().ack,
            json!([1, 2])
        );
        assert_eq!(
            read_answer(500, b"{}").unwrap_err(),
            ProxyError::Status(500)
        );
        assert_eq!(read_answer(302, b"").unwrap_err(), ProxyError::Status(302));
        for bad in [
            &br#"{"ok": true}"#[..],
            b"[1]",
            b"42",
            b"not json",
            br#"{"join": ["user:8"]}"#,
            br#"{"leave": ["user:7"]}"#,
            br#"{"join": [""]}"#,
            br#"{"join": "chat:1"}"#,
        ] {
            let err = read_answer(200, bad).unwrap_err();
            assert_eq!(
                err.code(),
                "proxy_bad_answer",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<String> = (0..=MAX_ROOMS_PER_ANSWER)
            .map(|i| format!("r{i}"))
            .collect();
        let body = serde_json::to_vec(&json!({ "join": many })).unwrap();
        assert!(read_answer(200, &body).is_err());
        let long = json!({ "join": ["r".repeat(MAX_ROOM_BYTES + 1)] });
        assert!(read_answer(200, &serde_json::to_vec(&long).unwrap()).is_err());
    }

    #[test]
    fn sockgate_owns_the_user_rooms() {
        let room = crate::session::rules::UserId::new("42").room();
        assert!(room.starts_with(RESERVED_ROOM_PREFIX));
    }

    #[test]
    fn error_acks() {
        assert_eq!(
            ProxyError::Status(503).ack(),
            json!({"error": {"code": "proxy_status", "message": messages::PROXY_STATUS, "status": 503}})
        );
        let timeout = ProxyError::Timeout(Duration::from_secs(5)).ack();
        assert_eq!(timeout["error"]["code"], "proxy_timeout");
        assert!(timeout["error"].get("status").is_none());
        let unreachable = ProxyError::Unreachable("tcp connect error".into()).ack();
        assert!(
            !unreachable.to_string().contains("tcp"),
            "the client sees no internals"
        );
        assert!(ProxyError::NotAllowed.before_the_app());
        assert!(!ProxyError::Timeout(Duration::ZERO).before_the_app());
    }

    #[test]
    fn in_flight_budget_per_socket() {
        let in_flight = InFlight::default();
        let a1 = in_flight.acquire("a", 2).unwrap();
        let a2 = in_flight.acquire("a", 2).unwrap();
        assert!(in_flight.acquire("a", 2).is_none());
        let b = in_flight.acquire("b", 2).unwrap();
        drop(a1);
        let a3 = in_flight.acquire("a", 2).unwrap();
        drop((a2, a3, b));
        assert_eq!(in_flight.sockets(), 0, "nothing is kept for idle sockets");
        assert!(in_flight.acquire("c", 0).is_none());
        assert_eq!(in_flight.sockets(), 0);
    }

    #[test]
    fn shown_cuts_at_a_character() {
        let name = "é".repeat(100);
        assert!(shown(&name).len() <= SHOWN_EVENT_BYTES);
        assert!(name.starts_with(shown(&name)));
        assert_eq!(shown("chat"), "chat");
    }

    proptest! {
        #[test]
        fn matches_as_the_definition(
            pattern in "[ab*]{0,8}",
            name in "[ab]{0,10}",
        ) {
            prop_assert_eq!(matches(&pattern, &name), reference(pattern.as_bytes(), name.as_bytes()));
        }

        #[test]
        fn a_name_without_star_matches_only_itself(a in "[^*]{0,12}", b in "[^*]{0,12}") {
            prop_assert!(matches(&a, &a));
            prop_assert_eq!(matches(&a, &b), a == b);
        }

        #[test]
        fn star_matches_everything_and_a_prefix_its_names(prefix in "[^*]{0,8}", name in "\\PC{0,16}") {
            prop_assert!(matches("*", &name));
            let pattern = format!("{prefix}*");
            prop_assert_eq!(matches(&pattern, &name), name.starts_with(&prefix));
        }

        #[test]
        fn signature_verifies_and_nothing_else_does(
            secret in proptest::collection::vec(any::<u8>(), 1..64),
            other in proptest::collection::vec(any::<u8>(), 1..64),
            timestamp in 0i64..4_000_000_000,
            body in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<prop::sample::Index>(),
        ) {
            let header = signature(&secret, timestamp, &body);
            prop_assert!(header.starts_with("sha256=") && header.len() == 7 + 64);
            prop_assert!(verify(&secret, timestamp, &body, &header));
            prop_assert!(!verify(&secret, timestamp + 1, &body, &header));
            if other != secret {
                prop_assert!(!verify(&other, timestamp, &body, &header));
            }
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 1;
                prop_assert!(!verify(&secret, timestamp, &tampered, &header));
            }
        }
    }
}
