//! A real Socket.IO client (rust_socketio, async) whose every callback lands
//! in one ordered channel, so a test can assert what the client observed
//! and in which order.

use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Payload, TransportType};
use serde_json::Value;
use tokio::sync::mpsc;

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

#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Polling,
    Websocket,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Polling, Transport::Websocket];
}

#[derive(Default, Clone)]
pub struct Options {
    pub cookie: Option<String>,
    pub auth: Option<Value>,
    pub origin: Option<String>,
    pub headers: Vec<(String, String)>,
}

pub struct TestClient {
    pub client: Option<Client>,
    pub connect_error: Option<rust_socketio::Error>,
    rx: mpsc::UnboundedReceiver<Seen>,
}

const CUSTOM_EVENTS: &[&str] = &["whoami", "session_expired", "guest:locked"];

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

pub async fn connect(url: &str, transport: Transport, opts: Options) -> TestClient {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut builder = ClientBuilder::new(url)
        .tls_config(tls())
        .transport_type(match transport {
            Transport::Polling => TransportType::Polling,
            Transport::Websocket => TransportType::Websocket,
        })
        .reconnect(false)
        .reconnect_on_disconnect(false);
    if let Some(cookie) = &opts.cookie {
        builder = builder.opening_header("Cookie", cookie.as_str());
    }
    if let Some(origin) = &opts.origin {
        builder = builder.opening_header("Origin", origin.as_str());
    }
    for (k, v) in &opts.headers {
        builder = builder.opening_header(k.as_str(), v.as_str());
    }
    if let Some(auth) = opts.auth.clone() {
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
    for name in CUSTOM_EVENTS {
        let t = tx.clone();
        let event = name.to_string();
        builder = builder.on(*name, move |p, _| {
            let t = t.clone();
            let event = event.clone();
            async move {
                let _ = t.send(Seen::Event(event, payload_value(p)));
            }
            .boxed()
        });
    }
    match builder.connect().await {
        Ok(client) => TestClient {
            client: Some(client),
            connect_error: None,
            rx,
        },
        Err(e) => TestClient {
            client: None,
            connect_error: Some(e),
            rx,
        },
    }
}

impl TestClient {
    /// The next thing the client saw, within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Seen> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the namespace connection or its refusal.
    pub async fn outcome(&mut self) -> Result<(), String> {
        if let Some(e) = &self.connect_error {
            return Err(format!("transport error: {e}"));
        }
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Seen::Connected) => return Ok(()),
                Some(Seen::Error(text)) => return Err(text),
                Some(Seen::Closed) => return Err("closed".into()),
                Some(Seen::Event(..)) => continue,
                None => return Err("no answer within 10 s".into()),
            }
        }
    }

    /// Asserts the server refused with exactly `message`.
    pub async fn expect_refused(&mut self, message: &str) {
        let outcome = self.outcome().await;
        let text = outcome.expect_err("the server should have refused the connection");
        let expected = serde_json::json!({ "message": message }).to_string();
        assert!(
            text.contains("ConnectError") && text.contains(&expected),
            "expected connect_error {expected}, got {text:?}"
        );
    }

    pub async fn emit(&self, event: &str, data: Value) {
        self.client
            .as_ref()
            .expect("connected")
            .emit(event, data)
            .await
            .unwrap();
    }

    /// Asks the server who this socket is.
    pub async fn whoami(&mut self) -> Value {
        self.emit("whoami", Value::Null).await;
        let mut seen = Vec::new();
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Seen::Event(name, value)) if name == "whoami" => return value,
                Some(other) => seen.push(other),
                None => panic!("no whoami answer within 10 s; saw {seen:?}"),
            }
        }
    }

    /// The next two things this client sees are `event` and then the close,
    /// in that order; returns the event's payload.
    pub async fn expect_event_then_closed(&mut self, event: &str) -> Value {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match self.next(Duration::from_secs(10)).await {
                // rust_socketio reports the transport going away as an error too.
                Some(Seen::Error(e)) if e.contains("Disconnected") || e.contains("closed") => {
                    continue;
                }
                // A re-check tick that finds the locked guest while the
                // admin route is ending it tells it again: the same notice,
                // still before the close.
                Some(s) if seen.len() == 1 && s == seen[0] => continue,
                Some(s) => seen.push(s),
                None => panic!("the socket was not ended; saw {seen:?}"),
            }
        }
        let payload = match &seen[0] {
            Seen::Event(name, payload) if name == event => payload.clone(),
            other => panic!("expected {event} first, saw {other:?} then {:?}", seen[1]),
        };
        assert_eq!(seen[1], Seen::Closed, "{event}, then the close");
        payload
    }

    pub async fn disconnect(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.disconnect().await;
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
