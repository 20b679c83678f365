//! The Socket.IO handshake spoken directly over a websocket: engine.io v4
//! open packet, namespace CONNECT, the server's CONNECT or CONNECT_ERROR.
//! For tests and benches that need thousands of clients, or clients that
//! misbehave on purpose; the benches include this file (`#[path]`), so the
//! tests and the benches speak the protocol with the same code.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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
    let mut ws = open(addr, cookie).await?;
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
