//! The official Node emitters' wire format, decoded into one typed
//! [`Operation`]: `@socket.io/postgres-emitter`'s NOTIFY payloads (JSON, or
//! a header naming an attachment row whose payload is the same document in
//! msgpack) and the attachment rows themselves; `@socket.io/redis-emitter`'s
//! broadcasts (msgpack `[uid, packet, opts]`) and requests (JSON). Pure
//! functions over bytes: it knows no socket, no database and no connection;
//! what a message must look like is what `@socket.io/postgres-adapter` and
//! `@socket.io/redis-adapter` decode, so anything else is a [`DecodeError`],
//! never a panic.

use rmpv::Value;
use serde::ser::{Serialize, SerializeTuple, Serializer};

/// The adapter protocol's message types (`EventType` in the emitters).
const BROADCAST: u64 = 3;
const SOCKETS_JOIN: u64 = 4;
const SOCKETS_LEAVE: u64 = 5;
const DISCONNECT_SOCKETS: u64 = 6;
const SERVER_SIDE_EMIT: u64 = 9;

/// Socket.IO packet types an emitter broadcasts: EVENT and BINARY_EVENT.
const EVENT: u64 = 2;
const BINARY_EVENT: u64 = 5;

/// Which of this node's sockets an operation reaches: those in any of
/// `rooms` (every socket when empty), minus those in any of `except`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Target {
    pub rooms: Vec<String>,
    pub except: Vec<String>,
}

/// An event's arguments, serialized as a tuple so that socketioxide's
/// parser spreads them after the event name (`[event, ...args]`), as a
/// Node server sends them. Binary values serialize as bytes, which the
/// parser turns into attachments.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Args(pub Vec<Value>);

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(self.0.len())?;
        for arg in &self.0 {
            tuple.serialize_element(arg)?;
        }
        tuple.end()
    }
}

/// One emitter operation, for the sockets of one namespace.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operation {
    Emit {
        target: Target,
        event: String,
        args: Args,
        volatile: bool,
    },
    Join {
        target: Target,
        rooms: Vec<String>,
    },
    Leave {
        target: Target,
        rooms: Vec<String>,
    },
    /// `close` is decoded to be faithful to the message, but a sockgate
    /// socket lives in one namespace, so leaving it closes the connection
    /// either way.
    Disconnect {
        target: Target,
        close: bool,
    },
    /// A message for the other *servers* (`serverSideEmit`): sockgate runs
    /// no app code that could listen, so it is only counted.
    ServerSideEmit {
        event: String,
    },
}

impl Operation {
    /// The metric label of the operation's kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Emit { .. } => "emit",
            Self::Join { .. } => "sockets_join",
            Self::Leave { .. } => "sockets_leave",
            Self::Disconnect { .. } => "disconnect_sockets",
            Self::ServerSideEmit { .. } => "server_side_emit",
        }
    }
}

/// What a PostgreSQL NOTIFY or a Redis request says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Notice {
    /// The whole operation, inline.
    Inline(Operation),
    /// The operation is the msgpack payload of this attachment row (binary
    /// data, or a document over the emitter's `payloadThreshold`).
    Attachment(i64),
    /// Another node's heartbeat or request, or an answer to one: the adapter
    /// protocol's other messages, none of which an emitter sends and none
    /// of which sockgate answers (its own adapter speaks another protocol).
    Ignored,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum DecodeError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not msgpack: {0}")]
    Msgpack(String),
    #[error("`{0}` is missing or has the wrong type")]
    Field(&'static str),
    #[error("unknown message type {0}")]
    UnknownType(u64),
    #[error("unsupported packet type {0} (only events are broadcast)")]
    PacketType(u64),
}

/// Decodes a NOTIFY payload from the emitter.
pub(crate) fn notice(payload: &str) -> Result<Notice, DecodeError> {
    let doc: Value = serde_json::from_str(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    if let Some(id) = field(&doc, "attachmentId") {
        // node-postgres returns BIGSERIAL ids as strings; accept numbers too.
        let id = match id {
            Value::String(s) => s.as_str().and_then(|s| s.parse().ok()),
            other => other.as_i64(),
        };
        return id
            .map(Notice::Attachment)
            .ok_or(DecodeError::Field("attachmentId"));
    }
    document(&doc)
}

/// Decodes an attachment row's payload (the msgpack-encoded document).
pub(crate) fn attachment(payload: &[u8]) -> Result<Operation, DecodeError> {
    let doc = rmpv::decode::read_value(&mut &payload[..])
        .map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    match document(&doc)? {
        Notice::Inline(op) => Ok(op),
        // An attachment holding another header or a heartbeat is no
        // document the emitter writes.
        _ => Err(DecodeError::Field("data")),
    }
}

fn document(doc: &Value) -> Result<Notice, DecodeError> {
    let kind = field(doc, "type")
        .and_then(Value::as_u64)
        .ok_or(DecodeError::Field("type"))?;
    let data = || field(doc, "data").ok_or(DecodeError::Field("data"));
    let op = match kind {
        BROADCAST => broadcast(data()?)?,
        SOCKETS_JOIN | SOCKETS_LEAVE => {
            let data = data()?;
            let target = target(field(data, "opts").ok_or(DecodeError::Field("opts"))?)?;
            let rooms = strings(field(data, "rooms"), "rooms")?;
            if kind == SOCKETS_JOIN {
                Operation::Join { target, rooms }
            } else {
                Operation::Leave { target, rooms }
            }
        }
        DISCONNECT_SOCKETS => {
            let data = data()?;
            Operation::Disconnect {
                target: target(field(data, "opts").ok_or(DecodeError::Field("opts"))?)?,
                close: field(data, "close")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        }
        SERVER_SIDE_EMIT => {
            let packet = field(data()?, "packet")
                .and_then(Value::as_array)
                .ok_or(DecodeError::Field("packet"))?;
            let event = packet
                .first()
                .and_then(Value::as_str)
                .ok_or(DecodeError::Field("packet"))?;
            Operation::ServerSideEmit {
                event: event.to_owned(),
            }
        }
        1 | 2 | 7 | 8 | 10..=12 => return Ok(Notice::Ignored),
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(Notice::Inline(op))
}

fn broadcast(data: &Value) -> Result<Operation, DecodeError> {
    let packet = field(data, "packet").ok_or(DecodeError::Field("packet"))?;
    let opts = field(data, "opts").ok_or(DecodeError::Field("opts"))?;
    emit(packet, opts)
}

fn emit(packet: &Value, opts: &Value) -> Result<Operation, DecodeError> {
    let kind = field(packet, "type")
        .and_then(Value::as_u64)
        .ok_or(DecodeError::Field("packet.type"))?;
    if kind != EVENT && kind != BINARY_EVENT {
        return Err(DecodeError::PacketType(kind));
    }
    let mut items = field(packet, "data")
        .and_then(Value::as_array)
        .ok_or(DecodeError::Field("packet.data"))?
        .iter()
        .cloned();
    let event = match items.next() {
        Some(Value::String(s)) => s.into_str().ok_or(DecodeError::Field("packet.data"))?,
        _ => return Err(DecodeError::Field("packet.data")),
    };
    let volatile = field(opts, "flags")
        .and_then(|f| field(f, "volatile"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Operation::Emit {
        target: target(opts)?,
        event,
        args: Args(items.collect()),
        volatile,
    })
}

/// The Redis emitter's request types (`RequestType` in its source).
const REDIS_JOIN: u64 = 2;
const REDIS_LEAVE: u64 = 3;
const REDIS_DISCONNECT: u64 = 4;
const REDIS_SERVER_SIDE_EMIT: u64 = 6;

/// Decodes a message on the Redis emitter's broadcast channel
/// (`<key>#<nsp>#`, or `<key>#<nsp>#<room>#` for one room; the room is in
/// `opts` too).
pub(crate) fn redis_broadcast(payload: &[u8]) -> Result<Operation, DecodeError> {
    let message = rmpv::decode::read_value(&mut &payload[..])
        .map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    match message.as_array().map(Vec::as_slice) {
        Some([_uid, packet, opts]) => emit(packet, opts),
        _ => Err(DecodeError::Field("[uid, packet, opts]")),
    }
}

/// Decodes a message on the Redis request channel (`<key>-request#<nsp>#`).
/// socketioxide's Redis adapter (`ADAPTER=redis`) uses the same channel for
/// its own requests, in msgpack: anything that is not a JSON object is
/// theirs and ignored here.
pub(crate) fn redis_request(payload: &[u8]) -> Result<Notice, DecodeError> {
    if payload.first() != Some(&b'{') {
        return Ok(Notice::Ignored);
    }
    let doc: Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    let kind = field(&doc, "type")
        .and_then(Value::as_u64)
        .ok_or(DecodeError::Field("type"))?;
    let target = || target(field(&doc, "opts").ok_or(DecodeError::Field("opts"))?);
    let op = match kind {
        REDIS_JOIN => Operation::Join {
            target: target()?,
            rooms: strings(field(&doc, "rooms"), "rooms")?,
        },
        REDIS_LEAVE => Operation::Leave {
            target: target()?,
            rooms: strings(field(&doc, "rooms"), "rooms")?,
        },
        REDIS_DISCONNECT => Operation::Disconnect {
            target: target()?,
            close: field(&doc, "close")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
        REDIS_SERVER_SIDE_EMIT => {
            let event = field(&doc, "data")
                .and_then(Value::as_array)
                .and_then(|d| d.first())
                .and_then(Value::as_str)
                .ok_or(DecodeError::Field("data"))?;
            Operation::ServerSideEmit {
                event: event.to_owned(),
            }
        }
        // Other Node servers' fetches and room listings: none is an
        // emitter's, and sockgate answers no Node server.
        0 | 1 | 5 | 7.. => return Ok(Notice::Ignored),
    };
    Ok(Notice::Inline(op))
}

fn target(opts: &Value) -> Result<Target, DecodeError> {
    Ok(Target {
        rooms: strings(field(opts, "rooms"), "opts.rooms")?,
        except: strings(field(opts, "except"), "opts.except")?,
    })
}

/// A list of room names; absent means none. Node rooms may be numbers
/// too (`to(42)`): they are the same room as their decimal text.
fn strings(value: Option<&Value>, name: &'static str) -> Result<Vec<String>, DecodeError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let items = value.as_array().ok_or(DecodeError::Field(name))?;
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => s.as_str().map(str::to_owned),
            Value::Integer(i) => Some(i.to_string()),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or(DecodeError::Field(name))
}

fn field<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_nil())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op(payload: &str) -> Operation {
        match notice(payload).unwrap() {
            Notice::Inline(op) => op,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_emit_to_rooms_with_except_and_volatile() {
        let op = op(
            r#"{"type":3,"data":{"packet":{"type":2,"data":["news",{"a":1},"b"],"nsp":"/"},
                "opts":{"rooms":["user:1","user:2"],"flags":{"volatile":true},"except":["x"]}},"uid":"emitter"}"#,
        );
        assert_eq!(
            op,
            Operation::Emit {
                target: Target {
                    rooms: vec!["user:1".into(), "user:2".into()],
                    except: vec!["x".into()],
                },
                event: "news".into(),
                args: Args(vec![
                    Value::Map(vec![(Value::from("a"), Value::from(1))]),
                    Value::from("b"),
                ]),
                volatile: true,
            }
        );
        assert_eq!(op.kind(), "emit");
    }

    #[test]
    fn an_emit_to_everyone_has_no_rooms() {
        let op = op(
            r#"{"type":3,"data":{"packet":{"type":2,"data":["hi"],"nsp":"/"},"opts":{"rooms":[],"flags":{},"except":[]}},"uid":"emitter"}"#,
        );
        assert!(
            matches!(op, Operation::Emit { target, args, volatile: false, .. }
            if target == Target::default() && args.0.is_empty())
        );
    }

    #[test]
    fn join_leave_and_disconnect() {
        assert_eq!(
            op(
                r#"{"type":4,"data":{"opts":{"rooms":["user:1"],"except":[]},"rooms":["team", 7]},"uid":"emitter"}"#
            ),
            Operation::Join {
                target: Target {
                    rooms: vec!["user:1".into()],
                    except: vec![],
                },
                rooms: vec!["team".into(), "7".into()],
            }
        );
        assert!(matches!(
            op(r#"{"type":5,"data":{"opts":{"rooms":[],"except":[]},"rooms":["team"]}}"#),
            Operation::Leave { .. }
        ));
        assert!(matches!(
            op(r#"{"type":6,"data":{"opts":{"rooms":["a"],"except":[]},"close":true}}"#),
            Operation::Disconnect { close: true, .. }
        ));
        assert_eq!(
            op(r#"{"type":9,"data":{"packet":["ping",1]},"uid":"emitter"}"#),
            Operation::ServerSideEmit {
                event: "ping".into()
            }
        );
    }

    #[test]
    fn an_attachment_header_names_its_row() {
        assert_eq!(
            notice(r#"{"uid":"emitter","type":3,"attachmentId":"42"}"#),
            Ok(Notice::Attachment(42))
        );
        assert_eq!(
            notice(r#"{"uid":"emitter","type":3,"attachmentId":7}"#),
            Ok(Notice::Attachment(7))
        );
        assert_eq!(
            notice(r#"{"type":3,"attachmentId":"x"}"#),
            Err(DecodeError::Field("attachmentId"))
        );
    }

    #[test]
    fn an_attachment_keeps_binary_data() {
        let doc = Value::Map(vec![
            (Value::from("uid"), Value::from("emitter")),
            (Value::from("type"), Value::from(3)),
            (
                Value::from("data"),
                Value::Map(vec![
                    (
                        Value::from("packet"),
                        Value::Map(vec![
                            (Value::from("type"), Value::from(2)),
                            (
                                Value::from("data"),
                                Value::Array(vec![
                                    Value::from("bin"),
                                    Value::Binary(vec![0, 1, 255]),
                                ]),
                            ),
                        ]),
                    ),
                    (
                        Value::from("opts"),
                        Value::Map(vec![(Value::from("rooms"), Value::Array(vec![]))]),
                    ),
                ]),
            ),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &doc).unwrap();
        let Operation::Emit { args, event, .. } = attachment(&bytes).unwrap() else {
            panic!("an emit")
        };
        assert_eq!(event, "bin");
        assert_eq!(args.0, vec![Value::Binary(vec![0, 1, 255])]);
    }

    #[test]
    fn heartbeats_are_ignored_and_unknown_types_refused() {
        assert_eq!(notice(r#"{"type":2,"uid":"x"}"#), Ok(Notice::Ignored));
        assert_eq!(notice(r#"{"type":99}"#), Err(DecodeError::UnknownType(99)));
        assert!(matches!(notice("not json"), Err(DecodeError::Json(_))));
        assert_eq!(notice("{}"), Err(DecodeError::Field("type")));
        assert_eq!(
            notice(r#"{"type":3,"data":{"packet":{"type":0,"data":[]},"opts":{}}}"#),
            Err(DecodeError::PacketType(0))
        );
        assert_eq!(
            notice(r#"{"type":3,"data":{"packet":{"type":2,"data":[1]},"opts":{}}}"#),
            Err(DecodeError::Field("packet.data"))
        );
        assert!(attachment(&[0xc1]).is_err());
    }

    #[test]
    fn args_spread_after_the_event() {
        let json = serde_json::to_string(&Args(vec![Value::from(1), Value::from("a")])).unwrap();
        assert_eq!(json, r#"[1,"a"]"#);
    }

    #[test]
    fn redis_broadcasts_and_requests() {
        let message = Value::Array(vec![
            Value::from("emitter"),
            Value::Map(vec![
                (Value::from("type"), Value::from(2)),
                (
                    Value::from("data"),
                    Value::Array(vec![Value::from("ev"), Value::Binary(vec![1, 2])]),
                ),
                (Value::from("nsp"), Value::from("/")),
            ]),
            Value::Map(vec![
                (
                    Value::from("rooms"),
                    Value::Array(vec![Value::from("user:1")]),
                ),
                (Value::from("flags"), Value::Map(vec![])),
                (Value::from("except"), Value::Array(vec![])),
            ]),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &message).unwrap();
        assert_eq!(
            redis_broadcast(&bytes),
            Ok(Operation::Emit {
                target: Target {
                    rooms: vec!["user:1".into()],
                    except: vec![],
                },
                event: "ev".into(),
                args: Args(vec![Value::Binary(vec![1, 2])]),
                volatile: false,
            })
        );
        assert!(redis_broadcast(b"\x93").is_err());
        assert!(matches!(
            redis_request(br#"{"type":2,"opts":{"rooms":["user:1"],"except":[]},"rooms":["t"]}"#),
            Ok(Notice::Inline(Operation::Join { .. }))
        ));
        assert!(matches!(
            redis_request(br#"{"type":4,"opts":{"rooms":[],"except":[]},"close":true}"#),
            Ok(Notice::Inline(Operation::Disconnect { close: true, .. }))
        ));
        assert!(matches!(
            redis_request(br#"{"uid":"emitter","type":6,"data":["hi",1]}"#),
            Ok(Notice::Inline(Operation::ServerSideEmit { .. }))
        ));
        // socketioxide's own requests (msgpack) share the channel.
        assert_eq!(redis_request(&[0x85, 0xa3]), Ok(Notice::Ignored));
        assert!(redis_request(b"{").is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in ".*", bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = notice(&s);
            let _ = attachment(&bytes);
            let _ = redis_broadcast(&bytes);
            let _ = redis_request(&bytes);
            let _ = redis_request(s.as_bytes());
        }

        #[test]
        fn json_shaped_garbage_never_panics(
            kind in 0u64..16,
            data in "[\\[\\]{}\",:a-z0-9 ]{0,64}",
        ) {
            let _ = notice(&format!(r#"{{"type":{kind},"data":{data}}}"#));
            let _ = notice(&format!(r#"{{"type":{kind},"data":{{"packet":{{"type":2,"data":{data}}},"opts":{data}}}}}"#));
        }
    }
}
