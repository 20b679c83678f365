//! The audit log: every authentication success and failure (and later every
//! session and guest event) becomes a row in `audit_log`.
//!
//! Recording never waits on the database: events go into a bounded queue and
//! one writer task inserts them in batches, holding a failed batch and
//! retrying it until the database is back. When the queue is full the event
//! is counted as dropped and the count is reported, never silently lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::audit_log;
use http::HeaderMap;
use sea_orm::{ActiveValue::NotSet, DatabaseConnection, EntityTrait, Set};
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
            Severity::Error => "ERROR",
        }
    }
}

pub mod action {
    pub const AUTHENTICATED: &str = "socket.authenticated";
    pub const AUTH_FAILED: &str = "socket.auth_failed";
    pub const SESSION_EXPIRED: &str = "socket.session_expired";
    pub const SESSION_REFRESHED: &str = "session.refreshed";
    pub const DISCONNECTED: &str = "socket.disconnected";
    pub const SOCKET_ERROR: &str = "socket.error";
    pub const ORIGIN_REJECTED: &str = "socket.origin_rejected";
    pub const GUEST_DISCONNECTED: &str = "guest.disconnected";
    pub const GUEST_LOCKED: &str = "socket.guest_locked";
}

#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    pub action: &'static str,
    pub severity: Severity,
    pub user_id: Option<String>,
    pub socket_id: Option<String>,
    pub session_ref: Option<String>,
    pub reason: Option<String>,
    pub client_ip: Option<String>,
    pub headers: Option<Json>,
    pub details: Option<Json>,
}

impl AuditEvent {
    pub fn new(action: &'static str, severity: Severity) -> Self {
        Self {
            at: Utc::now(),
            action,
            severity,
            user_id: None,
            socket_id: None,
            session_ref: None,
            reason: None,
            client_ip: None,
            headers: None,
            details: None,
        }
    }

    fn into_active_model(self) -> audit_log::ActiveModel {
        audit_log::ActiveModel {
            id: NotSet,
            created_at: Set(self.at),
            action: Set(self.action.to_owned()),
            severity: Set(self.severity.as_str().to_owned()),
            user_id: Set(self.user_id),
            socket_id: Set(self.socket_id),
            session_ref: Set(self.session_ref),
            reason: Set(self.reason),
            client_ip: Set(self.client_ip),
            headers: Set(self.headers),
            details: Set(self.details),
        }
    }
}

const REDACTED: &str = "[redacted]";
const MAX_HEADERS: usize = 64;
const MAX_HEADER_VALUE: usize = 512;

/// Whether a header may carry a credential. Errs on the side of redacting.
pub fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "cookie" | "set-cookie" | "authorization" | "proxy-authorization"
    ) || [
        "token",
        "secret",
        "session",
        "auth",
        "key",
        "password",
        "credential",
        "signature",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// The request headers as JSON, secret-bearing ones redacted, long values
/// cut, so that a hostile request cannot put a credential or a megabyte into
/// the audit table.
pub fn redact_headers(headers: &HeaderMap) -> Json {
    let mut out = Map::new();
    for (name, value) in headers.iter().take(MAX_HEADERS) {
        let shown = if is_secret_header(name.as_str()) {
            REDACTED.to_owned()
        } else {
            let text = String::from_utf8_lossy(value.as_bytes());
            text.chars().take(MAX_HEADER_VALUE).collect()
        };
        match out.get_mut(name.as_str()) {
            Some(Json::Array(values)) => values.push(Json::String(shown)),
            Some(existing) => {
                let first = existing.take();
                *existing = Json::Array(vec![first, Json::String(shown)]);
            }
            None => {
                out.insert(name.as_str().to_owned(), Json::String(shown));
            }
        }
    }
    Json::Object(out)
}

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditEvent>,
    capacity: usize,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer task on the current runtime.
    pub fn spawn(db: DatabaseConnection, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let log = Self {
            tx,
            capacity,
            dropped: Arc::default(),
            written: Arc::default(),
        };
        tokio::spawn(writer(db, rx, log.written.clone()));
        log
    }

    /// Queues an event; never blocks.
    pub fn record(&self, event: AuditEvent) {
        if let Err(err) = self.tx.try_send(event) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Powers of two: a flood cannot flood the log as well.
            if dropped.is_power_of_two() {
                let action = match &err {
                    mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => {
                        e.action
                    }
                };
                tracing::error!(dropped, action, "audit buffer full: audit events dropped");
            }
        }
    }

    /// Events dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events written to the table so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Events waiting to be written.
    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }
}

const BATCH: usize = 256;

async fn writer(
    db: DatabaseConnection,
    mut rx: mpsc::Receiver<AuditEvent>,
    written: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut backoff = Duration::from_millis(100);
        let count = batch.len() as u64;
        loop {
            let models = batch.iter().cloned().map(AuditEvent::into_active_model);
            match audit_log::Entity::insert_many(models)
                .exec_without_returning(&db)
                .await
            {
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, pending = batch.len(), retry_in = ?backoff, "audit write failed; will retry");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        written.fetch_add(count, Ordering::Relaxed);
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_headers_are_redacted() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "connect.sid=s%3Asecret".parse().unwrap());
        h.insert("authorization", "Bearer abc".parse().unwrap());
        h.insert("x-api-key", "k".parse().unwrap());
        h.insert("x-session-token", "t".parse().unwrap());
        h.insert("user-agent", "test".parse().unwrap());
        let json = redact_headers(&h).to_string();
        assert!(!json.contains("secret") && !json.contains("abc") && !json.contains("\"k\""));
        assert!(json.contains("\"user-agent\":\"test\""));
        assert!(json.contains("\"cookie\":\"[redacted]\""));
    }
}
