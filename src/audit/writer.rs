//! The audit writer: the rows `audit::event` makes become rows of the audit
//! table (sockgate's own, or the app's through the declared mapping).
//!
//! Recording never waits on the database: events go into a bounded queue and
//! one writer task inserts them in batches, holding a failed batch and
//! retrying it until the database is back. When the queue is full the event
//! is counted as dropped and the count is reported, never silently lost.
//! Knows nothing of what an event means; only `audit::event` makes rows.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderMap;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;

use crate::db::catalog::Kind;
use crate::db::held::Held;
use crate::db::sql::{Sql, as_id};
use crate::db::tables::{AuditTable, Col, Tables};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warn,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
        }
    }
}

pub mod action {
    pub const AUTHENTICATED: &str = "socket.authenticated";
    pub const AUTH_FAILED: &str = "socket.auth_failed";
    pub const SESSION_EXPIRED: &str = "socket.session_expired";
    pub const SESSION_REFRESHED: &str = "session.refreshed";
    pub const DISCONNECTED: &str = "socket.disconnected";
    pub const ORIGIN_REJECTED: &str = "socket.origin_rejected";
    pub const GUEST_DISCONNECTED: &str = "guest.disconnected";
    pub const GUEST_LOCKED: &str = "socket.guest_locked";
    pub const LIMIT_REFUSED: &str = "limit.refused";
    pub const PROXY_REFUSED: &str = "proxy.refused";
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
    /// The audited request headers, as the JSON object text
    /// [`audit_headers`] renders: rendered once, where weighing the event
    /// for the queue and writing its row each rendered the map again.
    pub headers: Option<String>,
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
}

/// The request headers an audit row keeps: enough to tell clients apart
/// and trace a request through proxies, and nothing that can carry a
/// credential. Everything else a client sends is left out, so a row's size
/// does not depend on what the client chose to send.
pub const AUDITED_HEADERS: [&str; 6] = [
    "user-agent",
    "x-forwarded-for",
    "forwarded",
    "host",
    "origin",
    "referer",
];
const MAX_HEADER_VALUE: usize = 256;
const MAX_VALUES_PER_HEADER: usize = 4;

/// The audited headers of a request as the text of a JSON object (a
/// string, or an array when the header repeats), values cut to 256
/// characters, at most 4 values a header; `referer` without its query or
/// fragment (they can carry tokens).
pub fn audit_headers(headers: &HeaderMap) -> String {
    let mut out = Map::new();
    for name in AUDITED_HEADERS {
        let mut values: Vec<Json> = headers
            .get_all(name)
            .iter()
            .take(MAX_VALUES_PER_HEADER)
            .map(|value| {
                let text = String::from_utf8_lossy(value.as_bytes());
                let text = if name == "referer" {
                    text.split(['?', '#']).next().unwrap_or_default().to_owned()
                } else {
                    text.into_owned()
                };
                Json::String(text.chars().take(MAX_HEADER_VALUE).collect())
            })
            .collect();
        match values.len() {
            0 => {}
            1 => {
                out.insert(name.to_owned(), values.remove(0));
            }
            _ => {
                out.insert(name.to_owned(), Json::Array(values));
            }
        }
    }
    Json::Object(out).to_string()
}

impl AuditEvent {
    /// What the event holds in memory while queued, roughly: the bound the
    /// queue keeps in bytes is on this.
    fn weight(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let json = |j: &Option<Json>| j.as_ref().map_or(0, |j| j.to_string().len());
        std::mem::size_of::<Self>()
            + text(&self.user_id)
            + text(&self.socket_id)
            + text(&self.session_ref)
            + text(&self.reason)
            + text(&self.client_ip)
            + text(&self.headers)
            + json(&self.details)
    }
}

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<(AuditEvent, usize)>,
    capacity: usize,
    max_bytes: usize,
    bytes: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer task on the current runtime. The queue holds at
    /// most `capacity` events and `max_bytes` of them.
    pub fn spawn(
        db: DatabaseConnection,
        tables: Arc<Tables>,
        capacity: usize,
        max_bytes: usize,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let log = Self {
            tx,
            capacity,
            max_bytes,
            bytes: Arc::default(),
            dropped: Arc::default(),
            written: Arc::default(),
        };
        // The receiver outlives a writer that panicked: the next one goes on
        // with what is queued (a batch in flight is lost with the panic).
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let (written, bytes) = (log.written.clone(), log.bytes.clone());
        crate::supervise::spawn("audit_writer", metrics, move || {
            writer(
                db.clone(),
                tables.clone(),
                rx.clone(),
                written.clone(),
                bytes.clone(),
            )
        });
        log
    }

    /// Queues an event; never blocks.
    pub fn record(&self, event: AuditEvent) {
        let weight = event.weight();
        let queued = self.bytes.fetch_add(weight, Ordering::Relaxed);
        let refused = if queued + weight > self.max_bytes {
            Some(event.action)
        } else {
            self.tx
                .try_send((event, weight))
                .err()
                .map(|err| match err {
                    mpsc::error::TrySendError::Full((e, _))
                    | mpsc::error::TrySendError::Closed((e, _)) => e.action,
                })
        };
        if let Some(action) = refused {
            self.bytes.fetch_sub(weight, Ordering::Relaxed);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Powers of two: a flood cannot flood the log as well.
            if dropped.is_power_of_two() {
                tracing::error!(dropped, action, "audit buffer full: audit events dropped");
            }
        }
    }

    /// Bytes of events waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
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

/// Events per INSERT. A statement's round trip, not its rows, is what the
/// writer pays for: at 256 it fell behind a reconnect storm of 19,000
/// handshakes in 3.8 s (7,506 written, 4,110 dropped when the storm ended);
/// at 1,024 it kept up (all 19,002 written, none dropped; `cargo bench
/// --bench scale`). The batch is one JSON value of a few KiB a row at most
/// (headers are cut to 256 characters a value).
const BATCH: usize = 1024;
/// How long the writer gathers events before an INSERT.
const LINGER: Duration = Duration::from_millis(5);

/// One INSERT for a batch of events, into the audit target's mapped
/// columns. A field without a column of its own goes into the details
/// JSON under its name, so nothing an event says is lost on an app table
/// with fewer columns.
///
/// The rows travel as one JSON array, bound as one value and unpacked by
/// the database (`json_to_recordset`, SQLite's `json_each`), so the text is
/// the same for every batch: prepared once per connection, where a VALUES
/// list with a placeholder per field was a new statement for every batch
/// size, parsed and planned anew each time, and cost a `format!` per value
/// to build.
fn insert_statement<'a>(
    tables: &'a Tables,
    events: impl Iterator<Item = &'a AuditEvent>,
) -> Statement {
    let a = &tables.audit;
    let backend = tables.backend;
    let rows: Vec<Row<'_>> = events.map(|event| Row::new(tables, event)).collect();
    let rows = serde_json::to_string(&rows).expect("audit rows serialize");

    let mut sql = Sql::new(backend);
    let array = sql.bind(rows);
    let field = |name: &str| match backend {
        DbBackend::Postgres => format!("r.{name}"),
        _ => format!("json_extract(r.value, '$.{name}')"),
    };
    let mut columns: Vec<&str> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    let mut put = |col: &'a Col, expr: String| {
        columns.push(&col.q);
        values.push(expr);
    };
    if let Some(col) = &a.id {
        put(col, cast_to(backend, col, &field("id")));
    }
    put(&a.action, cast_to(backend, &a.action, &field("action")));
    put(
        &a.severity,
        cast_to(backend, &a.severity, &field("severity")),
    );
    put(
        &a.user_id,
        as_id(backend, a.user_id.id_kind(), &field("user_id")),
    );
    let at = created_at_value(tables, &a.created_at, &field("at"), &mut sql);
    put(&a.created_at, at);
    for (col, name) in [
        (&a.socket_id, "socket_id"),
        (&a.reason, "reason"),
        (&a.ip, "client_ip"),
        (&a.session_ref, "session_ref"),
        (&a.headers, "headers"),
    ] {
        if let Some(col) = col {
            put(col, cast_to(backend, col, &field(name)));
        }
    }
    put(&a.details, cast_to(backend, &a.details, &field("details")));
    let source = match backend {
        // Every field as text, as the VALUES list bound them.
        DbBackend::Postgres => format!(
            "json_to_recordset(CAST({array} AS json)) AS r({})",
            Row::FIELDS.map(|f| format!("{f} text")).join(", ")
        ),
        _ => format!("json_each({array}) AS r"),
    };
    sql.text = format!(
        "INSERT INTO {} ({}) SELECT {} FROM {source}",
        a.table,
        columns.join(", "),
        values.join(", "),
    );
    sql.build()
}

/// One event as an element of the batch's JSON array: its fields as the
/// mapped columns take them (text, or a number for an integer time), and
/// what has no column of its own folded into the details.
#[derive(serde::Serialize)]
struct Row<'a> {
    id: Option<String>,
    action: &'a str,
    severity: &'a str,
    user_id: Option<&'a str>,
    at: At,
    socket_id: Option<&'a str>,
    reason: Option<&'a str>,
    client_ip: Option<&'a str>,
    session_ref: Option<&'a str>,
    headers: Option<&'a str>,
    details: Option<String>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum At {
    Text(String),
    Seconds(i64),
}

impl<'a> Row<'a> {
    const FIELDS: [&'static str; 11] = [
        "id",
        "action",
        "severity",
        "user_id",
        "at",
        "socket_id",
        "reason",
        "client_ip",
        "session_ref",
        "headers",
        "details",
    ];

    fn new(tables: &Tables, event: &'a AuditEvent) -> Self {
        let a = &tables.audit;
        let mut extra = Map::new();
        let mut own = |col: &Option<Col>, key: &str, value: &'a Option<String>| match col {
            Some(_) => value.as_deref(),
            None => {
                if let Some(value) = value {
                    extra.insert(key.to_owned(), Json::String(value.clone()));
                }
                None
            }
        };
        let socket_id = own(&a.socket_id, "socket_id", &event.socket_id);
        let reason = own(&a.reason, "reason", &event.reason);
        let client_ip = own(&a.ip, "client_ip", &event.client_ip);
        let session_ref = own(&a.session_ref, "session_ref", &event.session_ref);
        let headers = match &a.headers {
            Some(_) => event.headers.as_deref(),
            None => {
                if let Some(headers) = &event.headers {
                    // The object again, as it was before it was rendered.
                    let object = serde_json::from_str(headers)
                        .unwrap_or_else(|_| Json::String(headers.clone()));
                    extra.insert("headers".to_owned(), object);
                }
                None
            }
        };
        let details = details_with(event.details.as_ref(), extra, a.own);
        Self {
            id: a.id.as_ref().map(|_| crate::db::sql::new_uuid()),
            action: event.action,
            severity: event.severity.as_str(),
            user_id: event.user_id.as_deref(),
            at: at_value(tables, event.at),
            socket_id,
            reason,
            client_ip,
            session_ref,
            headers,
            details: details.map(|d| d.to_string()),
        }
    }
}

/// An event's time as the batch carries it: the text sqlx binds a
/// `DateTime<Utc>` as (microseconds on PostgreSQL, which keeps no more;
/// SQLite compares its text), or seconds for an integer column.
fn at_value(tables: &Tables, at: DateTime<Utc>) -> At {
    use chrono::SecondsFormat;
    match (tables.backend, tables.audit.created_at.kind) {
        (DbBackend::Postgres, _) => At::Text(at.to_rfc3339_opts(SecondsFormat::Micros, true)),
        (_, Kind::Integer) => At::Seconds(at.timestamp()),
        _ => At::Text(at.to_rfc3339_opts(SecondsFormat::AutoSi, false)),
    }
}

/// The event's details with the fields that have no column of their own.
/// An app's table gets an object even when there is nothing to say, as
/// its column may be NOT NULL.
fn details_with(
    details: Option<&Json>,
    extra: Map<String, Json>,
    own: bool,
) -> Option<Cow<'_, Json>> {
    match details {
        None if extra.is_empty() && own => None,
        // The event's own details, as they are (no copy to write them).
        Some(details) if extra.is_empty() => Some(Cow::Borrowed(details)),
        Some(Json::Object(map)) => {
            let mut map = map.clone();
            for (k, v) in extra {
                map.entry(k).or_insert(v);
            }
            Some(Cow::Owned(Json::Object(map)))
        }
        Some(other) => {
            let mut map = extra;
            map.insert("details".to_owned(), other.clone());
            Some(Cow::Owned(Json::Object(map)))
        }
        None => Some(Cow::Owned(Json::Object(extra))),
    }
}

/// A bound text placeholder as a value of `col`'s type.
fn cast_to(backend: DbBackend, col: &Col, placeholder: &str) -> String {
    if backend != DbBackend::Postgres {
        return placeholder.to_owned();
    }
    match col.kind {
        // The catalog's own spelling of the type, already quoted by it.
        Kind::Json | Kind::Enum | Kind::Uuid | Kind::Inet => {
            format!("CAST(CAST({placeholder} AS text) AS {})", col.sql_type)
        }
        _ => placeholder.to_owned(),
    }
}

/// The created-at column's value from `at`, an expression of a time as
/// [`at_value`] writes it (PostgreSQL: its text).
fn created_at_value(tables: &Tables, col: &Col, at: &str, sql: &mut Sql) -> String {
    match (tables.backend, col.kind) {
        // Wall-clock time in the Node app's zone, as the app writes it.
        (DbBackend::Postgres, Kind::Timestamp) => {
            let zone = sql.bind(tables.zone.as_str());
            format!("(CAST({at} AS timestamptz) AT TIME ZONE {zone})")
        }
        (DbBackend::Postgres, _) => format!("CAST({at} AS timestamptz)"),
        _ => at.to_owned(),
    }
}

/// An audit row read back (tests and the conformance suite): every field
/// from its column, or from the details JSON where it has none.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub action: String,
    pub severity: String,
    pub user_id: Option<String>,
    pub socket_id: Option<String>,
    pub session_ref: Option<String>,
    pub reason: Option<String>,
    pub client_ip: Option<String>,
    pub headers: Option<Json>,
    pub details: Option<Json>,
}

/// The rows of `action` written at or after `since`, oldest first.
pub async fn rows_since(
    db: &DatabaseConnection,
    tables: &Tables,
    action: &str,
    since: DateTime<Utc>,
) -> Result<Vec<AuditRow>, DbErr> {
    let a: &AuditTable = &tables.audit;
    let text = |col: &Col| format!("CAST({} AS TEXT)", col.q);
    let opt = |col: &Option<Col>| col.as_ref().map_or("NULL".to_owned(), text);
    let mut sql = Sql::new(tables.backend);
    let action_param = sql.bind(action);
    let since = match at_value(tables, since) {
        At::Text(text) => sql.bind(text),
        At::Seconds(seconds) => sql.bind(seconds),
    };
    let since_expr = created_at_value(tables, &a.created_at, &since, &mut sql);
    sql.text = format!(
        "SELECT {action} AS action, {severity} AS severity, {user} AS user_id, \
                {socket} AS socket_id, {session} AS session_ref, {reason} AS reason, \
                {ip} AS client_ip, {headers} AS headers, {details} AS details \
         FROM {table} WHERE CAST({action_col} AS TEXT) = {action_param} AND {at} >= {since_expr} \
         ORDER BY {order}",
        action = text(&a.action),
        severity = text(&a.severity),
        user = text(&a.user_id),
        socket = opt(&a.socket_id),
        session = opt(&a.session_ref),
        reason = opt(&a.reason),
        ip = opt(&a.ip),
        headers = opt(&a.headers),
        details = text(&a.details),
        table = a.table,
        action_col = a.action.q,
        at = a.created_at.q,
        // sockgate's own rows in insertion order; an app's by time.
        order = if a.own {
            "\"id\""
        } else {
            a.created_at.q.as_str()
        },
    );
    let rows = db.query_all_raw(sql.build()).await?;
    rows.iter()
        .map(|row| {
            let json = |name: &str| -> Result<Option<Json>, DbErr> {
                Ok(row
                    .try_get::<Option<String>>("", name)?
                    .and_then(|t| serde_json::from_str(&t).ok()))
            };
            let details = json("details")?;
            let from_details = |key: &str| {
                details
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .and_then(Json::as_str)
                    .map(str::to_owned)
            };
            let or_details = |name: &str, key: &str| -> Result<Option<String>, DbErr> {
                Ok(row
                    .try_get::<Option<String>>("", name)?
                    .or_else(|| from_details(key)))
            };
            Ok(AuditRow {
                action: row.try_get("", "action")?,
                severity: row.try_get("", "severity")?,
                user_id: row.try_get("", "user_id")?,
                socket_id: or_details("socket_id", "socket_id")?,
                session_ref: or_details("session_ref", "session_ref")?,
                reason: or_details("reason", "reason")?,
                client_ip: or_details("client_ip", "client_ip")?,
                headers: json("headers")?
                    .or_else(|| details.as_ref().and_then(|d| d.get("headers")).cloned()),
                details,
            })
        })
        .collect()
}

async fn writer(
    db: DatabaseConnection,
    tables: Arc<Tables>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<(AuditEvent, usize)>>>,
    written: Arc<AtomicU64>,
    bytes: Arc<AtomicUsize>,
) {
    let mut rx = rx.lock().await;
    let mut batch = Vec::with_capacity(BATCH);
    // One connection for a run of batches, as the lookups keep one (and
    // for the same reason: the pool's two pings around every statement);
    // given back whenever the queue runs dry, so an idle writer holds none.
    let mut conn = Held::new(db.clone());
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Under load events arrive a few at a time: gathered for a moment
        // they make one INSERT instead of several, each of which costs a
        // round trip. The
        // channel closing ends the wait at once, so a shutdown still
        // writes everything.
        let _ = tokio::time::timeout(LINGER, async {
            loop {
                let room = BATCH - batch.len();
                if room == 0 || rx.recv_many(&mut batch, room).await == 0 {
                    break;
                }
            }
        })
        .await;
        let mut backoff = Duration::from_millis(100);
        let count = batch.len() as u64;
        let weight: usize = batch.iter().map(|(_, w)| w).sum();
        loop {
            let insert = insert_statement(&tables, batch.iter().map(|(e, _)| e));
            match conn.query_all(insert).await {
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, pending = batch.len(), retry_in = ?backoff, "audit write failed; will retry");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        written.fetch_add(count, Ordering::Relaxed);
        bytes.fetch_sub(weight, Ordering::Relaxed);
        batch.clear();
        if rx.is_empty() {
            conn = Held::new(db.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory SQLite database with sockgate's tables (one
    /// connection: each holds a memory database of its own).
    async fn sqlite_audit() -> (crate::db::connect::Database, Tables) {
        let mut config = crate::config::Config::for_database("sqlite::memory:");
        config.db_max_connections = 1;
        let db = crate::db::connect::connect(&config).await.unwrap();
        crate::db::connect::migrate(&config, &db).await.unwrap();
        let ns = crate::db::tables::Namespace::new(DbBackend::Sqlite, "sockgate");
        let tables = Tables::resolve(
            &db.conn,
            db.session_zone.as_deref(),
            &ns,
            &Default::default(),
        )
        .await
        .unwrap();
        (db, tables)
    }

    /// The database is away (a closed pool): the queue fills, and it stops
    /// at its byte bound, not only at its event count; what it refuses is
    /// counted.
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes() {
        let (db, tables) = sqlite_audit().await;
        db.conn.close_by_ref().await.unwrap();
        let max_bytes = 64 * 1024;
        let log = AuditLog::spawn(
            db.conn,
            Arc::new(tables),
            100_000,
            max_bytes,
            crate::metrics::Metrics::new(),
        );
        for i in 0..1000 {
            let mut event = AuditEvent::new(action::AUTH_FAILED, Severity::Warn);
            event.details = Some(serde_json::json!({ "i": i, "pad": "x".repeat(1000) }));
            log.record(event);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            log.queued_bytes() <= max_bytes,
            "{} bytes held",
            log.queued_bytes()
        );
        assert!(log.dropped() > 900, "{} dropped", log.dropped());
        assert!(log.depth() < 100, "{} queued", log.depth());
    }

    /// Full batches with every field set, on SQLite (the lower limit on a
    /// statement's parameters): every event lands, none is dropped.
    #[tokio::test]
    async fn full_batches_are_written_whole() {
        let (db, tables) = sqlite_audit().await;
        let tables = Arc::new(tables);
        let log = AuditLog::spawn(
            db.conn.clone(),
            tables.clone(),
            10 * BATCH,
            64 * 1024 * 1024,
            crate::metrics::Metrics::new(),
        );
        let events = 3 * BATCH;
        for i in 0..events {
            log.record(full_event(i));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while log.written() < events as u64 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(log.dropped(), 0);
        assert_eq!(log.written(), events as u64);
        let row = db
            .conn
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                format!("SELECT COUNT(*) AS n FROM {}", tables.audit.table),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), events as i64);
    }

    fn full_event(i: usize) -> AuditEvent {
        let mut event = AuditEvent::new(action::AUTHENTICATED, Severity::Info);
        event.user_id = Some(i.to_string());
        event.socket_id = Some(format!("socket-{i}"));
        event.session_ref = Some(format!("ref-{i}"));
        event.reason = Some("cookie \"quoted\" \u{1e}".into());
        event.client_ip = Some("127.0.0.1".into());
        event.headers = Some(serde_json::json!({ "user-agent": "bench" }).to_string());
        event.details = Some(serde_json::json!({ "i": i }));
        event
    }

    /// Batches of any size are one statement text (prepared once), and
    /// what they write reads back field for field, found by its time.
    #[tokio::test]
    async fn every_batch_size_is_one_text_and_reads_back() {
        let (db, tables) = sqlite_audit().await;
        let events: Vec<AuditEvent> = (0..5).map(full_event).collect();
        let one = insert_statement(&tables, events[..1].iter());
        let five = insert_statement(&tables, events.iter());
        assert_eq!(one.sql, five.sql);

        let before = events[0].at - chrono::Duration::milliseconds(1);
        let after = events[4].at + chrono::Duration::milliseconds(1);
        db.conn.execute_raw(five).await.unwrap();
        let rows = rows_since(&db.conn, &tables, action::AUTHENTICATED, before)
            .await
            .unwrap();
        assert_eq!(rows.len(), 5);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.user_id.as_deref(), Some(i.to_string().as_str()));
            assert_eq!(row.socket_id, Some(format!("socket-{i}")));
            assert_eq!(row.session_ref, Some(format!("ref-{i}")));
            assert_eq!(row.reason.as_deref(), Some("cookie \"quoted\" \u{1e}"));
            assert_eq!(row.client_ip.as_deref(), Some("127.0.0.1"));
            assert_eq!(
                row.headers,
                Some(serde_json::json!({ "user-agent": "bench" }))
            );
            assert_eq!(row.details, Some(serde_json::json!({ "i": i })));
            assert_eq!(row.severity, "INFO");
        }
        let later = rows_since(&db.conn, &tables, action::AUTHENTICATED, after)
            .await
            .unwrap();
        assert!(later.is_empty(), "{later:?}");
    }

    #[test]
    fn only_audited_headers_are_kept_and_bounded() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "connect.sid=s%3Asecret".parse().unwrap());
        h.insert("authorization", "Bearer abc".parse().unwrap());
        h.insert("x-api-key", "k".parse().unwrap());
        h.insert("user-agent", "test".parse().unwrap());
        h.insert(
            "referer",
            "https://app.example/page?token=abc#x".parse().unwrap(),
        );
        h.insert("host", "a".repeat(5000).parse().unwrap());
        for i in 0..10 {
            h.append("x-forwarded-for", format!("10.0.0.{i}").parse().unwrap());
        }
        for i in 0..1000 {
            let name = http::HeaderName::try_from(format!("x-junk-{i}")).unwrap();
            h.append(name, "v".parse().unwrap());
        }
        let text = audit_headers(&h);
        let json: Json = serde_json::from_str(&text).unwrap();
        assert!(!text.contains("secret") && !text.contains("abc") && !text.contains("junk"));
        assert_eq!(json["user-agent"], "test");
        assert_eq!(json["referer"], "https://app.example/page");
        assert_eq!(json["host"].as_str().unwrap().len(), 256);
        assert_eq!(json["x-forwarded-for"].as_array().unwrap().len(), 4);
        assert_eq!(json.as_object().unwrap().len(), 4);
        assert!(
            text.len() < 2048,
            "a row's headers are small whatever is sent: {}",
            text.len()
        );
    }
}
