//! Prometheus metrics, served at `/metrics`: this node's counters and gauges,
//! registered once, and their text. Knows nothing of what moves them or of
//! the route: callers count (most through `audit::event`), and `http::router`
//! serves the text.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// This node's metrics. Cloned into every handler's state (several clones
/// per request), so a clone is one reference count rather than one per
/// metric: with two dozen metrics, cloning and dropping them was 10% of the
/// server's CPU in a long-polling handshake (perf, `cargo bench --bench
/// handshake`).
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;
    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

pub struct MetricSet {
    registry: Registry,
    pub handshakes: Family<Labels, Counter>,
    pub live_sockets: Gauge,
    pub revalidation_ticks: Counter,
    pub revalidation_failed_ticks: Counter,
    pub revalidation_queries: Counter,
    pub last_tick_sessions: Gauge,
    pub last_tick_db_seconds: Gauge<f64, AtomicU64>,
    pub last_tick_seconds: Gauge<f64, AtomicU64>,
    pub sessions_ended: Counter,
    pub sessions_refreshed: Counter,
    pub origin_violations: Family<Labels, Counter>,
    pub audit_buffer_depth: Gauge,
    pub audit_dropped: Gauge,
    pub audit_written: Gauge,
    pub session_lookups: Gauge,
    pub session_lookup_statements: Gauge,
    pub session_lookups_early: Counter,
    pub session_lookups_stale: Counter,
    pub db_pool_open: Gauge,
    pub db_pool_idle: Gauge,
    pub db_pool_max: Gauge,
    pub audit_suppressed: Counter,
    pub panics: Counter,
    pub refusals: Family<Labels, Counter>,
    pub background_restarts: Family<Labels, Counter>,
    pub proxy_calls: Family<Labels, Counter>,
    pub proxy_seconds: Histogram,
    pub emitter_received: Family<Labels, Counter>,
    pub emitter_applied: Family<Labels, Counter>,
    pub emitter_malformed: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("sockgate");
        let m = MetricSet {
            registry: Registry::default(),
            handshakes: Family::default(),
            live_sockets: Gauge::default(),
            revalidation_ticks: Counter::default(),
            revalidation_failed_ticks: Counter::default(),
            revalidation_queries: Counter::default(),
            last_tick_sessions: Gauge::default(),
            last_tick_db_seconds: Gauge::default(),
            last_tick_seconds: Gauge::default(),
            sessions_ended: Counter::default(),
            sessions_refreshed: Counter::default(),
            origin_violations: Family::default(),
            audit_buffer_depth: Gauge::default(),
            audit_dropped: Gauge::default(),
            audit_written: Gauge::default(),
            session_lookups: Gauge::default(),
            session_lookup_statements: Gauge::default(),
            session_lookups_early: Counter::default(),
            session_lookups_stale: Counter::default(),
            db_pool_open: Gauge::default(),
            db_pool_idle: Gauge::default(),
            db_pool_max: Gauge::default(),
            audit_suppressed: Counter::default(),
            panics: Counter::default(),
            refusals: Family::default(),
            background_restarts: Family::default(),
            proxy_calls: Family::default(),
            // 5 ms to about 20 s: past the longest EVENT_PROXY_TIMEOUT_MS anyone sets.
            proxy_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 13)),
            emitter_received: Family::default(),
            emitter_applied: Family::default(),
            emitter_malformed: Family::default(),
        };
        r.register(
            "handshakes",
            "Socket.IO handshakes by outcome",
            m.handshakes.clone(),
        );
        r.register(
            "live_sockets",
            "Authenticated sockets on this node",
            m.live_sockets.clone(),
        );
        r.register(
            "revalidation_ticks",
            "Session re-check ticks",
            m.revalidation_ticks.clone(),
        );
        r.register(
            "revalidation_failed_ticks",
            "Session re-check ticks that failed (database unreachable)",
            m.revalidation_failed_ticks.clone(),
        );
        r.register(
            "revalidation_queries",
            "Database queries made by session re-checks",
            m.revalidation_queries.clone(),
        );
        r.register(
            "revalidation_last_tick_sessions",
            "Sessions checked by the last tick",
            m.last_tick_sessions.clone(),
        );
        r.register(
            "revalidation_last_tick_db_seconds",
            "Database time of the last tick",
            m.last_tick_db_seconds.clone(),
        );
        r.register(
            "revalidation_last_tick_seconds",
            "Wall time of the last tick",
            m.last_tick_seconds.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions whose sockets were ended",
            m.sessions_ended.clone(),
        );
        r.register(
            "sessions_refreshed",
            "Sessions extended",
            m.sessions_refreshed.clone(),
        );
        r.register(
            "origin_violations",
            "Requests refused by the Origin allowlist",
            m.origin_violations.clone(),
        );
        r.register(
            "audit_buffer_depth",
            "Audit events waiting to be written",
            m.audit_buffer_depth.clone(),
        );
        r.register(
            "audit_dropped",
            "Audit events dropped because the buffer was full",
            m.audit_dropped.clone(),
        );
        r.register(
            "audit_written",
            "Audit events written",
            m.audit_written.clone(),
        );
        r.register(
            "session_lookups",
            "Session lookups made for handshakes",
            m.session_lookups.clone(),
        );
        r.register(
            "session_lookup_statements",
            "Statements that answered the session lookups (lookups that arrive together share one)",
            m.session_lookup_statements.clone(),
        );
        r.register(
            "session_lookups_early",
            "Handshake lookups started when the engine.io session opened, before its CONNECT",
            m.session_lookups_early.clone(),
        );
        r.register(
            "session_lookups_stale",
            "Early lookups not used (the CONNECT came too long after the open, or the session's deletion was heard in between): looked up again",
            m.session_lookups_stale.clone(),
        );
        r.register(
            "audit_suppressed",
            "Refusals left out of the log and the audit table by the per-client rate limit",
            m.audit_suppressed.clone(),
        );
        r.register(
            "panics",
            "Request handlers that panicked (answered 500)",
            m.panics.clone(),
        );
        r.register(
            "limit_refusals",
            "Requests, connections and sockets refused by a limit, by limit",
            m.refusals.clone(),
        );
        r.register(
            "background_restarts",
            "Background tasks restarted after a panic, by task",
            m.background_restarts.clone(),
        );
        r.register(
            "proxy_calls",
            "Client events for the app's event proxy, by outcome (ok, or the error ack's code)",
            m.proxy_calls.clone(),
        );
        r.register(
            "proxy_seconds",
            "Time from a forwarded event to the app's answer (or its failure)",
            m.proxy_seconds.clone(),
        );
        r.register(
            "emitter_received",
            "Operations received from the Node app's Socket.IO emitter, by source and kind",
            m.emitter_received.clone(),
        );
        r.register(
            "emitter_applied",
            "Emitter operations applied to this node's sockets, by source and kind",
            m.emitter_applied.clone(),
        );
        r.register(
            "db_pool_open_connections",
            "Open connections of the session database's pool",
            m.db_pool_open.clone(),
        );
        r.register(
            "db_pool_idle_connections",
            "Idle connections of the session database's pool",
            m.db_pool_idle.clone(),
        );
        r.register(
            "db_pool_max_connections",
            "Most connections the session database's pool opens (DB_MAX_CONNECTIONS)",
            m.db_pool_max.clone(),
        );
        r.register(
            "emitter_malformed",
            "Emitter messages that could not be decoded (or whose attachment could not be read), by source",
            m.emitter_malformed.clone(),
        );
        Self(Arc::new(MetricSet { registry: r, ..m }))
    }

    pub fn handshake(&self, outcome: &'static str) {
        self.handshakes
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    pub fn refused(&self, limit: &'static str) {
        self.refusals.get_or_create(&vec![("limit", limit)]).inc();
    }

    pub fn emitter_received(&self, source: &'static str, kind: &'static str) {
        self.emitter_received
            .get_or_create(&vec![("source", source), ("kind", kind)])
            .inc();
    }

    pub fn emitter_applied(&self, source: &'static str, kind: &'static str) {
        self.emitter_applied
            .get_or_create(&vec![("source", source), ("kind", kind)])
            .inc();
    }

    pub fn emitter_malformed(&self, source: &'static str) {
        self.emitter_malformed
            .get_or_create(&vec![("source", source)])
            .inc();
    }

    /// One client event's outcome; `elapsed` when the app was called.
    pub fn proxy_call(&self, outcome: &'static str, elapsed: Option<std::time::Duration>) {
        self.proxy_calls
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
        if let Some(elapsed) = elapsed {
            self.proxy_seconds.observe(elapsed.as_secs_f64());
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
