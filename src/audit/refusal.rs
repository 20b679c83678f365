//! Refusals of a client (a failed handshake, a limit crossed) reach the log
//! and the audit table through here, rate-limited per client IP; the
//! caller has already counted every one in `/metrics`.

use std::net::IpAddr;

use crate::audit::writer::{AuditEvent, Severity};
use crate::state::AppState;

/// Writes `event` (and its log line) unless `ip` is over its refusal
/// budget; the row carries `suppressed_since_last` in its details. Returns
/// whether it was written.
pub fn record(
    state: &AppState,
    ip: Option<IpAddr>,
    mut event: AuditEvent,
    log: impl FnOnce(u64),
) -> bool {
    let key = ip.unwrap_or(crate::limits::UNKNOWN_CLIENT);
    let Some(suppressed) = state.refusals.admit(key) else {
        state.metrics.audit_suppressed.inc();
        return false;
    };
    log(suppressed);
    let details = event.details.get_or_insert_with(|| serde_json::json!({}));
    if let Some(map) = details.as_object_mut() {
        map.insert("suppressed_since_last".into(), suppressed.into());
    }
    state.audit.record(event);
    true
}

/// An audit event for a limit crossed by `ip`.
pub fn limit_event(
    limit: &'static str,
    ip: Option<IpAddr>,
    details: serde_json::Value,
) -> AuditEvent {
    let mut event = AuditEvent::new(crate::audit::writer::action::LIMIT_REFUSED, Severity::Warn);
    event.reason = Some(limit.to_owned());
    event.client_ip = ip.map(|ip| ip.to_string());
    event.details = Some(details);
    event
}
