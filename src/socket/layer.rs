//! The Socket.IO layer: a connect middleware that authenticates every
//! handshake, and the handlers of an authenticated socket. Thin: decisions
//! are made in `auth` (and in `proxy` for client events), records in
//! `audit`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ConnectInfo;
use chrono::Utc;
use engineioxide::DisconnectReason as EngineDisconnect;
use engineioxide::closer::SessionCloser;
use serde::Serialize;
use serde_json::Value as Json;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};
use socketioxide::{SocketIo, SocketIoBuilder};

use crate::live::registry::CloseError;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::DisconnectReason;
use socketioxide_core::adapter::DefinedAdapter;

use crate::audit::event::{Client, Event as Record, Who};
use crate::live::fleet::Cluster;
use crate::proxy::rules::{Answer, Call, ProxyError};
use crate::session::auth::Credentials;
use crate::session::rules::UserId;
use crate::state::AppState;

/// What an authenticated socket carries, from the stored session only.
/// Kept in the socket's extensions behind an `Arc`: socketioxide hands out
/// a clone of an extension on every read, and each extension is an entry
/// and a box of its own for the socket's life.
#[derive(Debug)]
pub struct SocketSession {
    pub user_id: UserId,
    pub sid: String,
    /// Set once the socket has been counted out (registry, gauge, log,
    /// audit): its disconnect handler and the closed-in-the-handshake check
    /// in [`on_connect`] may both get there.
    counted_out: AtomicBool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI<'a> {
    pub user_id: &'a str,
    pub session_id: &'a str,
    pub authenticated: bool,
}

/// The Socket.IO layer over adapter `A`; the fleet in `state` is set to
/// it. Call [`register`] and drive its result to start serving.
pub fn layer<A: Adapter>(state: &AppState, adapter: A::State) -> (SocketIoLayer<A>, SocketIo<A>) {
    let (layer, io) = limited(SocketIo::builder(), &state.config.limits)
        .with_state(state.clone())
        .with_adapter::<A>(adapter)
        .build_layer();
    let cluster = Cluster {
        io: io.clone(),
        registry: state.registry.clone(),
    };
    crate::emitter::apply::attach(&state.local_sockets, &io);
    if state.fleet.set(Arc::new(cluster)).is_err() {
        tracing::warn!(
            "a second Socket.IO layer was built on one state; operations reach the first"
        );
    }
    (layer, io)
}

/// Engine settings shared by `serve` and the benchmark's ceiling server.
/// tungstenite allocates its read buffer up front for every socket and keeps
/// it; frames larger than it still arrive whole (it reserves per frame), so
/// a small one costs idle sockets nothing in function. Socket.IO packets
/// here (pings, `whoami`, notices) are tens of bytes.
pub fn tuned(builder: SocketIoBuilder) -> SocketIoBuilder {
    builder
        .req_path(crate::engine_path::ENGINE_PATH)
        .ws_read_buffer_size(256)
}

/// [`tuned`] with the configured limits on what a client may send and how
/// long an engine.io session may stay outside the namespace.
pub fn limited(builder: SocketIoBuilder, limits: &crate::config::LimitsConfig) -> SocketIoBuilder {
    tuned(builder)
        .ws_max_message_size(limits.ws_max_message_bytes)
        .ws_max_frame_size(limits.ws_max_frame_bytes)
        .max_payload(limits.max_polling_payload_bytes)
        .connect_timeout(limits.connect_timeout)
}

/// Mounts the authenticated default namespace. Remote adapters return a
/// future that subscribes to the other nodes.
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>) -> A::InitRes {
    io.ns("/", on_connect::<A>.with(authenticate::<A>))
}

fn client_addr<A: Adapter>(s: &SocketRef<A>) -> Option<std::net::IpAddr> {
    s.req_parts()
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

fn transport<A: Adapter>(s: &SocketRef<A>) -> &'static str {
    match s.transport_type() {
        socketioxide::TransportType::Polling => "Polling",
        socketioxide::TransportType::Websocket => "Websocket",
    }
}

/// The handshake's client, as the records name it.
fn client<A: Adapter>(s: &SocketRef<A>) -> Client<'_> {
    Client {
        ip: client_addr(s),
        headers: Some(&s.req_parts().headers),
        transport: Some(transport(s)),
    }
}

/// A refused CONNECT. Its `Display` is the client's `connect_error`
/// message. socketioxide queues that CONNECT_ERROR and then drops the
/// error; dropping it ends the engine.io session (a close packet queued
/// behind the error), so one engine.io session gets one refused attempt and
/// a client must open a new session, through the handshake limits, to try
/// again.
pub struct Refused {
    message: String,
    close: Option<(SessionCloser, Sid)>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Drop for Refused {
    fn drop(&mut self) {
        if let Some((closer, sid)) = self.close.take() {
            closer.close(sid, EngineDisconnect::ClosingServer);
        }
    }
}

/// The connect middleware: runs before any handler; `Err` becomes the
/// client's `connect_error` with the error's message.
async fn authenticate<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    State(state): State<AppState>,
    TryData(auth): TryData<Json>,
) -> Result<(), Refused> {
    let refused = |message: String| {
        let closer = io.config().engine_config.session_closer.clone();
        // Before socketioxide queues the refusal: a client that reads it at
        // once must not get a second CONNECT in on this session before the
        // error is dropped and the close starts.
        closer.stop_input(s.id);
        Refused {
            message,
            close: Some((closer, s.id)),
        }
    };
    // A non-JSON or missing auth payload is simply no auth payload.
    let auth = auth.ok();
    let id = s.id.to_string();
    let client = client(&s);
    let cookie = crate::session::cookie::cookie_header(&s.req_parts().headers);
    let creds = Credentials {
        cookie_header: cookie.as_deref(),
        auth: auth.as_ref(),
    };
    let early = crate::socket::early_lookup::take(&state, s.req_parts());
    match state
        .auth
        .authenticate_early(&creds, early, Utc::now())
        .await
    {
        Ok(ok) => {
            let limits = &state.config.limits;
            let (user_sockets, session_sockets) = state.registry.counts(&ok.sid, &ok.user_id);
            if let Err(limit) = crate::limits::check_sockets(
                user_sockets,
                session_sockets,
                limits.max_sockets_per_user,
                limits.max_sockets_per_session,
            ) {
                state.events.report(
                    Client {
                        headers: None,
                        ..client
                    },
                    Record::LimitRefused {
                        limit: limit.label(),
                        socket: Some(Who {
                            id: &id,
                            user: &ok.user_id,
                            sid: &ok.sid,
                        }),
                        details: serde_json::json!({
                            "user_sockets": user_sockets,
                            "session_sockets": session_sockets,
                        }),
                    },
                );
                return Err(refused(limit.to_string()));
            }
            state.events.report(
                client,
                Record::Authenticated {
                    socket: Who {
                        id: &id,
                        user: &ok.user_id,
                        sid: &ok.sid,
                    },
                    source: ok.source.as_str(),
                },
            );
            s.extensions.insert(Arc::new(SocketSession {
                user_id: ok.user_id,
                sid: ok.sid,
                counted_out: AtomicBool::new(false),
            }));
            // Before CONNECT goes out, so a guest lock aimed at the room in
            // that instant reaches this socket; a handshake that fails
            // after this leaves its rooms with it.
            if let Some(session) = s.extensions.get::<Arc<SocketSession>>() {
                s.join(session.user_id.room());
            }
            register_events(&s, state.proxy.is_some());
            Ok(())
        }
        Err((err, sid)) => {
            // Queued; written when the database is reachable again.
            state.events.report(
                client,
                Record::HandshakeRefused {
                    socket_id: &id,
                    error: &err,
                    sid: sid.as_deref(),
                },
            );
            Err(refused(err.to_string()))
        }
    }
}

impl<A: Adapter> crate::live::registry::SocketHandle for SocketRef<A> {
    fn id(&self) -> String {
        self.id.to_string()
    }

    fn notify(&self, event: &str, data: &Json) -> Result<(), CloseError> {
        match self.emit(event, data) {
            Ok(()) => Ok(()),
            Err(SendError::Socket(SocketError::InternalChannelFull)) => Err(CloseError::BufferFull),
            Err(SendError::Socket(SocketError::Closed)) => Err(CloseError::Closed),
            Err(SendError::Serialize(e)) => {
                tracing::error!(socket = %self.id, error = %e, event, "could not encode a notice");
                Ok(())
            }
        }
    }

    fn connected(&self) -> bool {
        std::ops::Deref::deref(self).connected()
    }

    fn close(&self) -> Result<(), CloseError> {
        match self.clone().disconnect() {
            Ok(()) => Ok(()),
            Err(SocketError::InternalChannelFull) => Err(CloseError::BufferFull),
            Err(SocketError::Closed) => Err(CloseError::Closed),
        }
    }
}

/// Disconnect reasons that are errors rather than an ordinary goodbye.
/// socketioxide has no per-socket error callback: transport and protocol
/// errors end the socket and surface here.
fn is_error(reason: DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::TransportError
            | DisconnectReason::PacketParsingError
            | DisconnectReason::MultipleHttpPollingError
            | DisconnectReason::HeartbeatTimeout
    )
}

/// The events an authenticated socket answers. Registered by the connect
/// middleware, before CONNECT is sent: socketioxide runs the connect handler
/// in a task of its own after sending it, and a client that emits as soon as
/// it reads CONNECT (socket.io-client flushes its buffer right then) would
/// otherwise race that task, and an event with no handler yet is dropped.
///
/// One fallback handler rather than `on("whoami")`: socketioxide keeps
/// named handlers in a map allocated per socket (about 180 bytes held for
/// the socket's life), the fallback in a slot. `whoami` is sockgate's own;
/// any other event goes to the event proxy when one is configured (its
/// arguments are only parsed then) and is ignored otherwise.
fn register_events<A: Adapter>(s: &SocketRef<A>, proxied: bool) {
    if proxied {
        s.on_fallback(
            async |s: SocketRef<A>,
                   io: SocketIo<A>,
                   Event(event): Event,
                   TryData(args): TryData<Args>,
                   ack: AckSender<A>,
                   State(state): State<AppState>| {
                if event == "whoami" {
                    whoami(s, io, ack).await;
                } else {
                    forward(s, io, state, event, args.map(|Args(a)| a), ack).await;
                }
            },
        );
    } else {
        s.on_fallback(
            async |s: SocketRef<A>, io: SocketIo<A>, Event(event): Event, ack: AckSender<A>| {
                if event == "whoami" {
                    whoami(s, io, ack).await;
                }
            },
        );
    }
}

/// Registered before CONNECT, a handler can run in the moment between
/// socketioxide sending CONNECT and marking the socket connected, while
/// `emit` still refuses it. Waits that out (microseconds) while the socket
/// is in the namespace (a refused or closed one leaves it); whether it is
/// connected.
async fn settled<A: Adapter>(s: &SocketRef<A>, io: &SocketIo<A>) -> bool {
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !s.connected() && io.get_socket(s.id).is_some() && tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    s.connected()
}

async fn whoami<A: Adapter>(s: SocketRef<A>, io: SocketIo<A>, ack: AckSender<A>) {
    settled(&s, &io).await;
    if let Some(session) = s.extensions.get::<Arc<SocketSession>>() {
        let me = WhoAmI {
            user_id: session.user_id.as_str(),
            session_id: &session.sid,
            // A socket exists only once its session authenticated.
            authenticated: true,
        };
        if let Err(e) = s.emit("whoami", &me) {
            tracing::warn!(socket = %s.id, error = %e, "socket error: could not answer whoami");
        }
        let _ = ack.send(&me);
    }
}

/// Every argument of a client event. socketioxide hands a tuple-like type
/// every element after the event name (any other type gets only the
/// first), and serde_json reads a tuple of any length as its array.
struct Args(Vec<Json>);

impl<'de> serde::Deserialize<'de> for Args {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq;
        impl<'de> serde::de::Visitor<'de> for Seq {
            type Value = Vec<Json>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event's arguments")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<Vec<Json>, S::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element()? {
                    args.push(arg);
                }
                Ok(args)
            }
        }
        d.deserialize_tuple(usize::MAX, Seq).map(Args)
    }
}

/// A client event for the app: the proxy decides and calls; this socket's
/// part is who is calling, its rooms and the ack, and the outcome goes to
/// `audit::event`. A socket that is no longer connected (its session ended,
/// it left) forwards nothing, and an answer that arrives after it closed
/// changes nothing.
async fn forward<A: Adapter, E: std::fmt::Display>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    state: AppState,
    event: String,
    args: Result<Vec<Json>, E>,
    ack: AckSender<A>,
) {
    let (Some(proxy), Some(session)) = (&state.proxy, s.extensions.get::<Arc<SocketSession>>())
    else {
        return;
    };
    if !settled(&s, &io).await {
        return;
    }
    let id = s.id.to_string();
    let started = std::time::Instant::now();
    let outcome = match args {
        Err(e) => Err(ProxyError::Unreadable(e.to_string())),
        Ok(args) => {
            let mut rooms: Vec<String> = s.rooms().iter().map(ToString::to_string).collect();
            rooms.sort_unstable();
            let session_ref = crate::session::rules::fingerprint(&session.sid);
            let cookie = proxy.forwards_cookie().then(|| {
                let signed = crate::session::mint::signed(&state.auth.secrets, &session.sid);
                let value = crate::session::mint::cookie_value(&signed);
                format!("{}={value}", state.config.cookie_name)
            });
            let call = Call {
                event: &event,
                args: &args,
                user_id: session.user_id.as_str(),
                socket_id: &id,
                session_ref: &session_ref,
                rooms: &rooms,
                cookie: cookie.as_deref(),
            };
            proxy
                .forward(&call)
                .await
                .and_then(|answer| apply_rooms(&s, answer))
        }
    };
    let socket = Who {
        id: &id,
        user: &session.user_id,
        sid: &session.sid,
    };
    let client = Client {
        headers: None,
        ..client(&s)
    };
    let elapsed = started.elapsed();
    let reply = match outcome {
        Ok(ack) => {
            state
                .events
                .report(client, Record::ProxyAnswered { socket, elapsed });
            ack
        }
        Err(error) => {
            let elapsed = (!error.before_the_app()).then_some(elapsed);
            state.events.report(
                client,
                Record::ProxyRefused {
                    socket,
                    event: &event,
                    error: &error,
                    elapsed,
                },
            );
            error.ack()
        }
    };
    // A closed socket's engine.io session may still carry a packet: it
    // gets nothing. Without an ack id (none asked for) this sends nothing.
    if s.connected() {
        let _ = ack.send(&reply);
    }
}

/// The app's rooms for this socket, `leave` then `join`, while it is still
/// connected; the ack to send.
fn apply_rooms<A: Adapter>(s: &SocketRef<A>, answer: Answer) -> Result<Json, ProxyError> {
    if !s.connected() {
        return Err(ProxyError::SocketClosed);
    }
    s.leave(answer.leave);
    s.join(answer.join.clone());
    // A close in between may have emptied the socket's rooms before the
    // join: take them back so no room outlives it.
    if !s.connected() {
        s.leave(answer.join);
        return Err(ProxyError::SocketClosed);
    }
    Ok(answer.ack)
}

async fn on_connect<A: Adapter>(s: SocketRef<A>, io: SocketIo<A>, State(state): State<AppState>) {
    let Some(session) = s.extensions.get::<Arc<SocketSession>>() else {
        // Unreachable: the middleware inserts it before any handler runs.
        tracing::error!(socket = %s.id, "socket without a session reached the handler");
        let _ = s.disconnect();
        return;
    };
    state
        .registry
        .add(&session.sid, &session.user_id, Arc::new(s.clone()));
    state.metrics.live_sockets.inc();

    s.on_disconnect(
        async |s: SocketRef<A>, reason: DisconnectReason, State(state): State<AppState>| {
            count_out(&s, &state, &reason.to_string(), is_error(reason));
        },
    );

    // socketioxide runs this handler in a task of its own once the socket
    // is in the namespace. A client that vanished in between was closed
    // with no disconnect handler to call and taken out of the namespace:
    // nothing else would ever take it out of the registry and the gauge.
    if io.get_socket(s.id).is_none() {
        s.leave_all();
        count_out(&s, &state, "transport closed during the handshake", false);
    }
}

/// Forgets a socket that is gone: registry, live gauge, log, audit; once.
fn count_out<A: Adapter>(s: &SocketRef<A>, state: &AppState, reason: &str, error: bool) {
    let Some(session) = s.extensions.get::<Arc<SocketSession>>() else {
        return;
    };
    if session.counted_out.swap(true, Ordering::SeqCst) {
        return;
    }
    let id = s.id.to_string();
    state.registry.remove(&session.sid, &id);
    state.metrics.live_sockets.dec();
    state.events.report(
        Client {
            ip: client_addr(s),
            ..Client::default()
        },
        Record::Disconnected {
            socket: Who {
                id: &id,
                user: &session.user_id,
                sid: &session.sid,
            },
            reason,
            error,
        },
    );
}
