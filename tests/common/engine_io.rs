//! The Socket.IO handshake spoken directly over a websocket: engine.io v4
//! open packet, namespace CONNECT, the server's CONNECT or CONNECT_ERROR.
//! For tests and benches that need thousands of clients, or clients that
//! misbehave on purpose; the benches include this file (`#[path]`), so the
//! tests and the benches speak the protocol with the same code.

use std::net::{IpAddr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug)]
pub enum HandshakeError {
    /// CONNECT_ERROR: the packet as sent (`44{"message":...}`).
    Refused(String),
    /// Anything else: the websocket, the open packet, an unexpected packet.
    Transport(String),
}

/// Opens a websocket to the Socket.IO endpoint with `cookie` as the
/// `connect.sid` cookie and reads the engine.io open packet.
pub async fn open(addr: &SocketAddr, cookie: &str) -> Result<Ws, HandshakeError> {
    let mut req = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", format!("connect.sid={cookie}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| HandshakeError::Transport(e.to_string()))?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(HandshakeError::Transport(format!("no open packet: {open}")));
    }
    Ok(ws)
}

/// [`open`] from the local address `local` (any port): a client holding
/// more connections than one address has ephemeral ports spreads them over
/// loopback addresses (127.0.0.2, 127.0.0.3, ...). Also returns the open
/// packet (`0{"sid":...,"pingInterval":...}`). The websocket reads in 4 KiB
/// chunks instead of tungstenite's 128 KiB, which it allocates up front for
/// every connection; the server's packets here are tens of bytes.
pub async fn open_from(
    addr: &SocketAddr,
    cookie: &str,
    local: IpAddr,
) -> Result<(Ws, String), HandshakeError> {
    let t = |e: std::io::Error| HandshakeError::Transport(format!("from {local}: {e}"));
    let socket = match local {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(t)?;
    socket.bind(SocketAddr::new(local, 0)).map_err(t)?;
    let tcp = socket.connect(*addr).await.map_err(t)?;
    tcp.set_nodelay(true).map_err(t)?;
    let mut req = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", format!("connect.sid={cookie}").parse().unwrap());
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        req,
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        Some(config),
    )
    .await
    .map_err(|e| HandshakeError::Transport(e.to_string()))?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(HandshakeError::Transport(format!("no open packet: {open}")));
    }
    Ok((ws, open))
}

async fn next_text(ws: &mut Ws) -> Result<String, HandshakeError> {
    match ws.next().await {
        Some(Ok(Message::Text(t))) => Ok(t.to_string()),
        other => Err(HandshakeError::Transport(format!("{other:?}"))),
    }
}

/// Sends the namespace CONNECT for `/`.
pub async fn send_connect(ws: &mut Ws) -> Result<(), HandshakeError> {
    ws.send(Message::text("40"))
        .await
        .map_err(|e| HandshakeError::Transport(e.to_string()))
}

/// One authenticated Socket.IO connection: open, CONNECT, and the server's
/// CONNECT (`Ok`) or CONNECT_ERROR (`Refused`).
pub async fn handshake(addr: &SocketAddr, cookie: &str) -> Result<Ws, HandshakeError> {
    let ws = open(addr, cookie).await?;
    join_namespace(ws).await
}

/// [`handshake`] from the local address `local` (see [`open_from`]).
pub async fn handshake_from(
    addr: &SocketAddr,
    cookie: &str,
    local: IpAddr,
) -> Result<Ws, HandshakeError> {
    let (ws, _) = open_from(addr, cookie, local).await?;
    join_namespace(ws).await
}

/// CONNECT on an opened websocket, answering pings until the server's
/// CONNECT or CONNECT_ERROR.
pub async fn join_namespace(mut ws: Ws) -> Result<Ws, HandshakeError> {
    send_connect(&mut ws).await?;
    loop {
        let reply = next_text(&mut ws).await?;
        if reply == "2" {
            ws.send(Message::text("3"))
                .await
                .map_err(|e| HandshakeError::Transport(e.to_string()))?;
        } else if reply.starts_with("40") {
            return Ok(ws);
        } else if reply.starts_with("44") {
            return Err(HandshakeError::Refused(reply));
        } else {
            return Err(HandshakeError::Transport(format!(
                "unexpected packet: {reply}"
            )));
        }
    }
}
