//! A real Socket.IO client (rust_socketio, async) for the conformance suite
//! and, through a thin asserting wrapper (`tests/common/client.rs`), for
//! the tests. Every callback lands in one ordered channel, so a case can
//! check what the client observed and in which order. Nothing here panics:
//! every surprise is an `Err(String)` that becomes the case's FAIL line (or
//! the test's panic).

use std::fmt;
use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Payload, TransportType};
use serde_json::Value;
use tokio::sync::mpsc;

/// How long one step (a handshake, an answer, a close) may take.
pub const STEP: Duration = Duration::from_secs(10);

/// What the client saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// The server accepted the namespace connection.
    Connected,
    /// The server closed the socket (DISCONNECT packet) or the transport.
    Closed,
    /// An error callback: connect_error text, transport errors.
    Error(String),
    Event(String, Value),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Polling,
    Websocket,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Polling, Transport::Websocket];
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Polling => "polling",
            Transport::Websocket => "websocket",
        })
    }
}

/// What a handshake carries besides the transport.
#[derive(Default, Clone, Debug)]
pub struct Handshake {
    /// A whole `Cookie` header value (`name=value`).
    pub cookie: Option<String>,
    /// The Socket.IO `auth` payload.
    pub auth: Option<Value>,
    pub origin: Option<String>,
    /// Any other opening headers.
    pub headers: Vec<(String, String)>,
}

/// The server-initiated events the suite listens for (rust_socketio only
/// delivers events that have a callback).
const EVENTS: &[&str] = &["whoami", "session_expired", "guest:locked"];

pub struct SioClient {
    client: Option<Client>,
    connect_error: Option<String>,
    rx: mpsc::UnboundedReceiver<Seen>,
}

fn payload_value(p: Payload) -> Value {
    match p {
        Payload::Text(mut values) if values.len() == 1 => values.remove(0),
        Payload::Text(values) => Value::Array(values),
        Payload::Binary(b) => Value::String(format!("<{} bytes>", b.len())),
        #[allow(deprecated)]
        Payload::String(s) => Value::String(s),
    }
}

fn payload_text(p: Payload) -> String {
    match payload_value(p) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Opens a client on one transport, reconnection off. Never fails: a
/// refused transport is kept and reported by [`SioClient::outcome`].
pub async fn connect(url: &str, transport: Transport, hs: &Handshake) -> SioClient {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut builder = ClientBuilder::new(url)
        .tls_config(tls())
        .transport_type(match transport {
            Transport::Polling => TransportType::Polling,
            Transport::Websocket => TransportType::Websocket,
        })
        .reconnect(false)
        .reconnect_on_disconnect(false);
    if let Some(cookie) = &hs.cookie {
        builder = builder.opening_header("Cookie", cookie.as_str());
    }
    if let Some(origin) = &hs.origin {
        builder = builder.opening_header("Origin", origin.as_str());
    }
    for (name, value) in &hs.headers {
        builder = builder.opening_header(name.as_str(), value.as_str());
    }
    if let Some(auth) = hs.auth.clone() {
        builder = builder.auth(auth);
    }
    let t = tx.clone();
    builder = builder.on("open", move |_, _| {
        let t = t.clone();
        async move {
            let _ = t.send(Seen::Connected);
        }
        .boxed()
    });
    let t = tx.clone();
    builder = builder.on("close", move |_, _| {
        let t = t.clone();
        async move {
            let _ = t.send(Seen::Closed);
        }
        .boxed()
    });
    let t = tx.clone();
    builder = builder.on("error", move |p, _| {
        let t = t.clone();
        async move {
            let _ = t.send(Seen::Error(payload_text(p)));
        }
        .boxed()
    });
    for name in EVENTS {
        let t = tx.clone();
        let event = (*name).to_owned();
        builder = builder.on(*name, move |p, _| {
            let t = t.clone();
            let event = event.clone();
            async move {
                let _ = t.send(Seen::Event(event, payload_value(p)));
            }
            .boxed()
        });
    }
    match tokio::time::timeout(STEP, builder.connect()).await {
        Ok(Ok(client)) => SioClient {
            client: Some(client),
            connect_error: None,
            rx,
        },
        Ok(Err(e)) => SioClient {
            client: None,
            connect_error: Some(e.to_string()),
            rx,
        },
        Err(_) => SioClient {
            client: None,
            connect_error: Some(format!("no transport within {} s", STEP.as_secs())),
            rx,
        },
    }
}

/// Whether an error callback only says the transport went away (which
/// rust_socketio reports next to the close).
fn is_transport_gone(text: &str) -> bool {
    text.contains("Disconnected") || text.contains("closed")
}

impl SioClient {
    /// The next thing the client saw, within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Seen> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the namespace connection (`Ok`) or its refusal (`Err` with
    /// what the client saw).
    pub async fn outcome(&mut self) -> Result<(), String> {
        if let Some(e) = &self.connect_error {
            return Err(format!("transport error: {e}"));
        }
        loop {
            match self.next(STEP).await {
                Some(Seen::Connected) => return Ok(()),
                Some(Seen::Error(text)) => return Err(text),
                Some(Seen::Closed) => return Err("closed before connecting".into()),
                Some(Seen::Event(..)) => continue,
                None => return Err(format!("no answer within {} s", STEP.as_secs())),
            }
        }
    }

    /// The server refused the namespace connection with exactly `message`.
    pub async fn expect_refused(&mut self, message: &str) -> Result<(), String> {
        let expected = serde_json::json!({ "message": message }).to_string();
        match self.outcome().await {
            Ok(()) => Err(format!("connected; expected connect_error {expected}")),
            Err(text) if text.contains("ConnectError") && text.contains(&expected) => Ok(()),
            Err(text) => Err(format!("expected connect_error {expected}, got {text:?}")),
        }
    }

    pub async fn emit(&self, event: &str, data: Value) -> Result<(), String> {
        let client = self.client.as_ref().ok_or("not connected")?;
        client
            .emit(event, data)
            .await
            .map_err(|e| format!("emit {event}: {e}"))
    }

    /// Asks the server who this socket is (`whoami` answered by the event
    /// `whoami`).
    pub async fn whoami(&mut self) -> Result<Value, String> {
        self.emit("whoami", Value::Null).await?;
        let mut seen = Vec::new();
        loop {
            match self.next(STEP).await {
                Some(Seen::Event(name, value)) if name == "whoami" => return Ok(value),
                Some(other) => seen.push(other),
                None => {
                    return Err(format!(
                        "no whoami answer within {} s; saw {seen:?}",
                        STEP.as_secs()
                    ));
                }
            }
        }
    }

    /// The next two things this client sees, within `limit` in all, are
    /// `event` and then the close, in that order. Returns the payload.
    pub async fn expect_event_then_closed(
        &mut self,
        event: &str,
        limit: Duration,
    ) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Seen::Error(e)) if is_transport_gone(&e) => continue,
                // A re-check tick racing the admin route may repeat the
                // same notice; it still precedes the close.
                Some(s) if seen.len() == 1 && s == seen[0] => continue,
                Some(s) => seen.push(s),
                None if seen.is_empty() => return Err(format!("no {event} within {limit:?}")),
                None => {
                    return Err(format!(
                        "{event} arrived but the socket was not closed within {limit:?}; saw {seen:?}"
                    ));
                }
            }
        }
        let payload = match &seen[0] {
            Seen::Event(name, payload) if name == event => payload.clone(),
            other => {
                return Err(format!(
                    "expected {event} first, saw {other:?} then {:?}",
                    seen[1]
                ));
            }
        };
        if seen[1] != Seen::Closed {
            return Err(format!(
                "expected the close after {event}, saw {:?}",
                seen[1]
            ));
        }
        Ok(payload)
    }

    /// Closes the client side (a no-op when the server already did).
    pub async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(STEP, c.disconnect()).await;
        }
    }
}

/// One TLS configuration for every client: rust_engineio builds an HTTP
/// client per connection, and without one given each loads and parses the
/// system's root certificates again (tens of milliseconds of CPU each, which
/// starved the server under test of the CPU its handshakes needed).
fn tls() -> native_tls::TlsConnector {
    static TLS: std::sync::OnceLock<native_tls::TlsConnector> = std::sync::OnceLock::new();
    TLS.get_or_init(|| native_tls::TlsConnector::new().expect("a TLS configuration"))
        .clone()
}
