//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt, stream::SplitSink};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Sid, Str, TransportType};
use tokio::time::Instant;

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, socket::InternalRx, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let ws_key = req
        .headers()
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // sockgate patch: hyper's upgrade handle is taken out of the request here
    // rather than out of a clone of the whole request in the task, so the
    // session's `req_parts` keep no copy of it.
    let mut req = req;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    let parts = session_parts(parts);

    tokio::spawn(async move {
        let conn = on_upgrade.await.map(hyper_util::rt::TokioIo::new);

        let res = match conn {
            Ok(conn) => on_init(engine.clone(), conn, protocol, sid, parts).await,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return;
            }
        };

        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// The headers that only served the websocket upgrade (RFC 6455 §4.1, and the
/// hop-by-hop `Connection`), consumed by the time the session starts.
const UPGRADE_ONLY_HEADERS: [http::HeaderName; 5] = [
    http::header::CONNECTION,
    http::header::UPGRADE,
    http::header::SEC_WEBSOCKET_KEY,
    http::header::SEC_WEBSOCKET_VERSION,
    http::header::SEC_WEBSOCKET_EXTENSIONS,
];

/// sockgate patch: the request a websocket session keeps (`req_parts`) for its
/// whole life, without [`UPGRADE_ONLY_HEADERS`], in a header map sized for
/// what remains: a `HeaderMap` holds about 100 bytes per slot and rounds its
/// slots up, so the five headers cost a third to half a KiB per socket. A
/// polling session's request never had them, so both transports now keep the
/// same kind of headers.
fn session_parts(mut parts: Parts) -> Parts {
    let all = std::mem::take(&mut parts.headers);
    let kept = all
        .iter()
        .filter(|(name, _)| !UPGRADE_ONLY_HEADERS.contains(name))
        .count();
    let mut headers = http::HeaderMap::with_capacity(kept);
    let mut current = None;
    for (name, value) in all {
        if name.is_some() {
            current = name;
        }
        let name = current.as_ref().expect("a header map yields a name first");
        if !UPGRADE_ONLY_HEADERS.contains(name) {
            headers.append(name.clone(), value);
        }
    }
    parts.headers = headers;
    parts
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws, heartbeat) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                // sockgate patch: boxed, so that the rare upgrade path does not
                // size the task every websocket connection keeps for its life.
                let upgrade_fut = Box::pin(upgrade_handshake::<H, S>(&socket, &mut ws));
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                // The heartbeat job started with the polling session keeps running.
                (socket, ws, None)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        let heartbeat = if socket.protocol == ProtocolVersion::V4 {
            Some(Heartbeat::new(
                engine.config.ping_interval,
                engine.config.ping_timeout,
            ))
        } else {
            socket
                .clone()
                .spawn_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
            None
        };
        (socket, ws, heartbeat)
    };

    // sockgate patch: the session runs in a task of its own. This setup task ends
    // here, so what it captured (the request parts, the raw stream, the upgrade
    // futures) is not kept for the session's life.
    tokio::spawn(connection(engine, socket, ws, heartbeat));
    Ok(())
}

/// The v4 server-side heartbeat of a websocket session, driven by the
/// connection task itself.
///
/// sockgate patch: engineioxide 0.17 ran a websocket session as three tasks
/// (reader, writer, heartbeat), each a few KiB held for the socket's life.
/// The connection task now does all three; the schedule is the same as the
/// spawned job's: a ping every `interval` from the start, the first one
/// interval after the open, each answered within `timeout`.
struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    /// When the ping now awaiting its pong was queued.
    ping_sent_at: Instant,
    awaiting_pong: bool,
}

impl Heartbeat {
    fn new(interval: Duration, timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            interval,
            timeout,
            // sockgate patch: the first ping one interval after the open,
            // as the reference server sends it (`Socket::heartbeat_job_v4`).
            next_ping: now + interval,
            ping_sent_at: now,
            awaiting_pong: false,
        }
    }

    /// When the heartbeat must act next: send a ping, or give up on a pong.
    fn deadline(&self) -> Instant {
        if self.awaiting_pong {
            self.ping_sent_at + self.timeout
        } else {
            self.next_ping
        }
    }
}

/// What the connection loop does after one event.
enum Step {
    Continue,
    /// `None`: the session was closed elsewhere (cancellation).
    Exit(Option<Result<(), Error>>),
}

/// Runs a websocket session: client packets to the handler, queued packets to
/// the client and, when `heartbeat` is given, the heartbeat, all in one task.
///
/// Writes block reads while the client is slow to take them; a write that
/// stalls for a whole heartbeat period ends the session as a heartbeat
/// timeout, as the spawned heartbeat job would have.
///
/// A plain function returning the future, so that the future holds only what
/// the session needs (the halves of the split stream, not the stream itself
/// as an argument slot); writes and the final close are boxed, because an idle
/// session is not writing and should not carry their state.
fn connection<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    ws: WebSocketStream<S>,
    mut heartbeat: Option<Heartbeat>,
) -> impl Future<Output = Option<Result<(), Error>>> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    async move {
        // A polling request that was in progress during the upgrade may still hold the lock.
        // Taken at once when free, even from a session already closed, so that what was
        // queued before the close still goes out (`with_cancellation_token` gives up at
        // once on a cancelled token).
        let mut internal_rx = match socket.internal_rx.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                socket
                    .internal_rx
                    .lock()
                    .with_cancellation_token(&socket.cancellation_token)
                    .await?
            }
        };
        let InternalRx { buffered_rx, .. } = &mut *internal_rx;
        let stall_limit = engine.config.ping_interval + engine.config.ping_timeout;

        // sockgate patch: armed for the heartbeat's first deadline (one
        // interval after the open), not for now.
        let first = heartbeat
            .as_ref()
            .map_or_else(Instant::now, Heartbeat::deadline);
        let timer = tokio::time::sleep_until(first);
        tokio::pin!(timer);

        let result = loop {
            let step = tokio::select! {
                items = buffered_rx.recv() => match items {
                    Some(packets) => {
                        bounded_write(stall_limit, async {
                            write_packets(&mut tx, &socket, *packets).await;
                            while let Ok(packets) = buffered_rx.try_recv() {
                                write_packets(&mut tx, &socket, *packets).await;
                            }
                            tx.flush().await.ok();
                        })
                        .await
                    }
                    None => Step::Exit(None),
                },
                _ = socket.cancellation_token.cancelled() => Step::Exit(None),
                msg = rx.next() => match msg {
                    Some(Ok(msg)) => on_message(&engine, &socket, msg, heartbeat.as_mut()),
                    Some(Err(e)) => Step::Exit(Some(Err(e.into()))),
                    None => Step::Exit(Some(Ok(()))),
                },
                packets = socket.volatile.next() => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = ?socket.id, "ws volatile flush: {} packets", packets.len());
                    bounded_write(stall_limit, async {
                        write_packets(&mut tx, &socket, *packets).await;
                        tx.flush().await.ok();
                    })
                    .await
                },
                () = &mut timer, if heartbeat.is_some() => {
                    let hb = heartbeat.as_mut().expect("guarded by the branch condition");
                    if hb.awaiting_pong {
                        Step::Exit(Some(Err(Error::HeartbeatTimeout)))
                    } else {
                        #[cfg(feature = "tracing")]
                        tracing::trace!(sid = ?socket.id, "emitting ping");
                        // Queued like the spawned job's pings: a full queue is a dead client.
                        match socket.internal_tx.try_send(Box::new(smallvec![Packet::Ping])) {
                            Ok(()) => {
                                hb.awaiting_pong = true;
                                hb.ping_sent_at = Instant::now();
                                hb.next_ping += hb.interval;
                                Step::Continue
                            }
                            Err(_) => Step::Exit(Some(Err(Error::HeartbeatTimeout))),
                        }
                    }
                },
            };
            match step {
                Step::Continue => {
                    if let Some(hb) = &heartbeat {
                        let deadline = hb.deadline();
                        if timer.deadline() != deadline {
                            timer.as_mut().reset(deadline);
                        }
                    }
                }
                Step::Exit(result) => break result,
            }
        };

        if let Some(res) = &result {
            // The client went away or broke the protocol: close the session now, so the
            // handler stops queueing packets for it.
            let reason = match res {
                Err(e) => {
                    Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError)
                }
                Ok(()) => DisconnectReason::TransportClose,
            };
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, ?reason, "ws session ended");
            engine.close_session(socket.id, reason);
        }

        // Packets queued before the session closed (a close reason, the close packet)
        // still go out, then the websocket is closed, within one heartbeat timeout.
        let close = Box::pin(tokio::time::timeout(engine.config.ping_timeout, async {
            while let Ok(packets) = buffered_rx.try_recv() {
                write_packets(&mut tx, &socket, *packets).await;
            }
            tx.flush().await.ok();
            tx.close().await.ok();
        }));
        close.await.ok();
        result
    }
}

/// A write to the client that stalls for `limit` ends the session as a
/// heartbeat timeout. Boxed: the connection future should not carry a
/// write's state while the session is idle.
fn bounded_write<'a>(
    limit: Duration,
    write: impl Future<Output = ()> + Send + 'a,
) -> std::pin::Pin<Box<dyn Future<Output = Step> + Send + 'a>> {
    Box::pin(async move {
        match tokio::time::timeout(limit, write).await {
            Ok(()) => Step::Continue,
            Err(_) => Step::Exit(Some(Err(Error::HeartbeatTimeout))),
        }
    })
}

/// Handles one websocket message from the client.
fn on_message<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    msg: Message,
    heartbeat: Option<&mut Heartbeat>,
) -> Step {
    match msg {
        Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg)) {
            Ok(Packet::Close) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] closing session", socket.id);
                Step::Exit(Some(Ok(())))
            }
            Ok(Packet::Pong | Packet::Ping) => {
                match heartbeat {
                    // A pong nobody waits for (an early or a duplicate one) says nothing new.
                    Some(hb) => hb.awaiting_pong = false,
                    None => socket.heartbeat_received(),
                }
                Step::Continue
            }
            // sockgate patch: a session being closed takes nothing more
            // from the client (a refused CONNECT is not retried on it).
            Ok(Packet::Message(_)) if socket.closing.load(std::sync::atomic::Ordering::Acquire) => {
                Step::Continue
            }
            Ok(Packet::Message(msg)) => {
                engine.handler.on_message(msg, socket.clone());
                Step::Continue
            }
            Ok(p) => Step::Exit(Some(Err(Error::BadPacket(p)))),
            Err(e) => Step::Exit(Some(Err(e.into()))),
        },
        Message::Binary(_) if socket.closing.load(std::sync::atomic::Ordering::Acquire) => {
            Step::Continue
        }
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
            Step::Continue
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            Step::Exit(Some(Ok(())))
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
            Step::Continue
        }
    }
}

/// Writes one queued packet group to the websocket, without flushing.
async fn write_packets<D, S>(
    tx: &mut SplitSink<WebSocketStream<S>, Message>,
    socket: &Socket<D>,
    packets: PacketBuf,
) where
    D: Default + Send + Sync + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for item in packets {
        let res = match item {
            Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                if socket.protocol == ProtocolVersion::V3 {
                    // v3 protocol requires packet type as the first byte.
                    // This requires a new buffer. This is OK as it is only for the V3 protocol.
                    let mut buff = Vec::with_capacity(bin.len() + 1);
                    buff.push(0x04);
                    buff.extend(bin);
                    tx.feed(Message::Binary(buff.into())).await
                } else {
                    tx.feed(Message::Binary(bin)).await
                }
            }
            // A Noop Packet maybe sent by the server to upgrade from a polling connection
            // In the case that the packet was not poll in time it will remain in the buffer and therefore
            // it should be discarded here
            Packet::Noop => Ok(()),
            item => {
                let packet = String::from(item);
                tx.feed(Message::Text(packet.into())).await
            }
        };
        if let Err(_e) = res {
            #[cfg(feature = "tracing")]
            tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
        }
    }
}
/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(Box::new(smallvec![Packet::Noop]))
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    /// The connection loop of an upgraded session (no heartbeat of its own).
    async fn run(socket: Arc<Socket<()>>, ws: WebSocketStream<DuplexStream>) {
        let engine = Arc::new(EngineIo::new(
            Arc::new(StubHandler),
            EngineIoConfig::default(),
        ));
        connection(engine, socket, ws, None).await;
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;

        let polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(run(socket.clone(), server));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !writer.is_finished(),
            "the connection should wait for the lock"
        );

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;

        let _polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(run(socket.clone(), server));
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
    }

    fn fast_heartbeat_engine() -> Arc<EngineIo<StubHandler>> {
        let config = EngineIoConfig::builder()
            .ping_interval(Duration::from_millis(30))
            .ping_timeout(Duration::from_millis(30))
            .build();
        Arc::new(EngineIo::new(Arc::new(StubHandler), config))
    }

    /// sockgate patch: the heartbeat runs in the connection task. A client
    /// that answers every ping stays connected over many intervals, and the
    /// pings keep coming on schedule.
    #[tokio::test]
    async fn merged_heartbeat_keeps_an_answering_client() {
        let engine = fast_heartbeat_engine();
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let hb = Heartbeat::new(engine.config.ping_interval, engine.config.ping_timeout);
        let conn = {
            let (engine, socket) = (engine.clone(), socket.clone());
            tokio::spawn(connection(engine, socket, server, Some(hb)))
        };
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_millis(400);
        while tokio::time::Instant::now() < until {
            match tokio::time::timeout(Duration::from_millis(100), client.next()).await {
                Ok(Some(Ok(msg))) => {
                    assert_eq!(msg, Message::text("2"));
                    pings += 1;
                    client.send(Message::text("3")).await.unwrap();
                }
                other => panic!("expected a ping every 30 ms, got {other:?}"),
            }
        }
        assert!(
            pings >= 8,
            "only {pings} pings in 400 ms at a 30 ms interval"
        );
        assert!(
            !conn.is_finished(),
            "an answering client must stay connected"
        );
        socket.cancellation_token.cancel();
        assert!(
            tokio::time::timeout(TIMEOUT, conn)
                .await
                .unwrap()
                .unwrap()
                .is_none()
        );
    }

    /// sockgate patch: the first ping one interval after the open, as
    /// engine.io's reference server sends it.
    #[tokio::test]
    async fn merged_heartbeat_pings_first_after_one_interval() {
        let engine = fast_heartbeat_engine();
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let interval = Duration::from_millis(300);
        let hb = Heartbeat::new(interval, engine.config.ping_timeout);
        let opened = tokio::time::Instant::now();
        let conn = {
            let (engine, socket) = (engine.clone(), socket.clone());
            tokio::spawn(connection(engine, socket, server, Some(hb)))
        };
        let ping = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
        assert_eq!(ping.unwrap().unwrap(), Message::text("2"));
        assert!(
            opened.elapsed() >= interval,
            "first ping after {:?}",
            opened.elapsed()
        );
        socket.cancellation_token.cancel();
        let _ = tokio::time::timeout(TIMEOUT, conn).await;
    }

    /// A client that reads the ping but never answers is timed out.
    #[tokio::test]
    async fn merged_heartbeat_times_out_a_silent_client() {
        let engine = fast_heartbeat_engine();
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let hb = Heartbeat::new(engine.config.ping_interval, engine.config.ping_timeout);
        let conn = {
            let (engine, socket) = (engine.clone(), socket.clone());
            tokio::spawn(connection(engine, socket, server, Some(hb)))
        };
        let ping = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
        assert_eq!(ping.unwrap().unwrap(), Message::text("2"));
        let res = tokio::time::timeout(TIMEOUT, conn).await.unwrap().unwrap();
        assert!(matches!(res, Some(Err(Error::HeartbeatTimeout))), "{res:?}");
    }

    /// A client that stops reading cannot block the session forever: the
    /// write stalls and, after a heartbeat period, the session ends as a
    /// heartbeat timeout (the spawned writer of 0.17.9 blocked for good).
    #[tokio::test]
    async fn stalled_write_ends_the_session() {
        let engine = fast_heartbeat_engine();
        let socket = socket();
        let (server, _client_not_reading) = ws_pair().await;
        let conn = {
            let (engine, socket) = (engine.clone(), socket.clone());
            tokio::spawn(connection(engine, socket, server, None))
        };
        let big = "x".repeat(4096);
        for _ in 0..16 {
            socket.emit(Str::from(big.clone())).ok();
        }
        let res = tokio::time::timeout(TIMEOUT, conn).await.unwrap().unwrap();
        assert!(matches!(res, Some(Err(Error::HeartbeatTimeout))), "{res:?}");
    }

    /// Packets queued before the session is closed reach the client before
    /// the websocket closes.
    #[tokio::test]
    async fn queued_packets_go_out_before_the_close() {
        let engine = fast_heartbeat_engine();
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let conn = {
            let (engine, socket) = (engine.clone(), socket.clone());
            tokio::spawn(connection(engine, socket, server, None))
        };
        for i in 0..20 {
            socket.emit(Str::from(format!("m{i}"))).unwrap();
        }
        socket.cancellation_token.cancel();
        for i in 0..20 {
            let msg = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
            let msg = msg.unwrap().unwrap_or_else(|e| panic!("message {i}: {e}"));
            assert_eq!(msg, Message::text(format!("4m{i}")));
        }
        let end = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
        assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "{end:?}");
        assert!(
            tokio::time::timeout(TIMEOUT, conn)
                .await
                .unwrap()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn session_parts_drop_only_the_upgrade_headers() {
        let (parts, ()) = Request::builder()
            .header("host", "example.com")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-extensions", "permessage-deflate")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("user-agent", "test")
            .body(())
            .unwrap()
            .into_parts();
        let parts = session_parts(parts);
        let kept: Vec<_> = parts
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            kept,
            [
                "host: example.com",
                "cookie: a=1",
                "cookie: b=2",
                "user-agent: test"
            ]
        );
    }
}
