//! The Socket.IO handshake spoken directly over a websocket (engine.io v4
//! open packet, namespace CONNECT, CONNECT or CONNECT_ERROR), for tests that
//! need thousands of clients or clients that misbehave on purpose; and
//! reading `/metrics`. The minimal part of benches/support.

use std::net::SocketAddr;
use std::time::Duration;

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

/// The signed, URL-encoded cookie value of `sid` under `secret`.
pub fn cookie_value(sid: &str, secret: &str) -> String {
    let signed = format!("s:{}", sockgate::signature::sign(sid, secret));
    percent_encoding::utf8_percent_encode(&signed, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A metric from `/metrics`, summed over its label sets; counters are
/// exposed with `_total`.
pub async fn metric(base_url: &str, name: &str) -> f64 {
    let text = super::http()
        .get(format!("{base_url}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// The status of `GET <base_url><path>`, or 0 when there is no answer.
pub async fn status(base_url: &str, path: &str) -> u16 {
    super::http()
        .get(format!("{base_url}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Sends `request` as written on a new TCP connection and reads until the
/// server closes or `limit` passes: the status code (0 for none) and the
/// whole answer as text. Requests should say `Connection: close`.
pub async fn raw(addr: &SocketAddr, request: &[u8], limit: Duration) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A GET of `path_and_query` with extra header lines (`Name: value`).
pub fn get(path_and_query: &str, headers: &[&str]) -> Vec<u8> {
    let mut req = format!("GET {path_and_query} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The body of an answer read by [`raw`].
pub fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}
