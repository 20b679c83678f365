//! The tests' Socket.IO client: the conformance suite's own
//! (`sockgate_conformance::client`, rust_socketio with every callback in one
//! ordered channel), with the steps that a test asserts turned into panics
//! that say what the client saw.

use std::time::Duration;

use serde_json::Value;
use sockgate_conformance::client::{self, SioClient};

pub use sockgate_conformance::client::{Handshake as Options, STEP, Seen, Transport};

pub struct TestClient(SioClient);

pub async fn connect(url: &str, transport: Transport, opts: Options) -> TestClient {
    TestClient(client::connect(url, transport, &opts).await)
}

impl TestClient {
    /// The next thing the client saw, within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Seen> {
        self.0.next(limit).await
    }

    /// Waits for the namespace connection (`Ok`) or its refusal (`Err` with
    /// what the client saw).
    pub async fn outcome(&mut self) -> Result<(), String> {
        self.0.outcome().await
    }

    /// Asserts the server refused with exactly `message`.
    pub async fn expect_refused(&mut self, message: &str) {
        self.0
            .expect_refused(message)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub async fn emit(&self, event: &str, data: Value) {
        self.0
            .emit(event, data)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Asks the server who this socket is.
    pub async fn whoami(&mut self) -> Value {
        self.0.whoami().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next two things this client sees are `event` and then the close,
    /// in that order (within two steps); returns the event's payload.
    pub async fn expect_event_then_closed(&mut self, event: &str) -> Value {
        self.0
            .expect_event_then_closed(event, 2 * STEP)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn disconnect(self) {
        self.0.close().await;
    }
}
