//! sockgate's event vocabulary: every thing that happens to a client or a
//! session and is worth a record, as one typed [`Event`], and the one place
//! ([`Events::report`]) that turns an event into its audit row(s), its
//! metric and its log line. Callers say what happened; they never assemble
//! a row, pick a severity or word a log line. Refusals are rate-limited per
//! client (origin violations globally) before they reach the log and the
//! table, and every one is counted whether written or not.
//!
//! Knows the audit writer, the metrics and the rate limits; knows nothing
//! of HTTP handlers, sockets or the database's tables.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use serde_json::{Value as Json, json};

use crate::audit::writer::{AuditEvent, AuditLog, Severity, action, audit_headers};
use crate::limits::{RefusalLog, UNKNOWN_CLIENT, ViolationLog};
use crate::metrics::Metrics;
use crate::origin::{Allowlist, Rejection};
use crate::proxy::rules::{ProxyError, shown};
use crate::session::auth::AuthError;
use crate::session::rules::{EndReason, UserId, fingerprint};

/// Where a client-side event came from: its address and the request's
/// headers (only the audited ones are kept), when there was a request.
#[derive(Clone, Copy, Default)]
pub struct Client<'a> {
    pub ip: Option<IpAddr>,
    pub headers: Option<&'a HeaderMap>,
    /// `Polling` / `Websocket`, as the engine names them.
    pub transport: Option<&'static str>,
}

/// Which socket an event is about: its id, its user and its session.
#[derive(Clone, Copy)]
pub struct Who<'a> {
    pub id: &'a str,
    pub user: &'a UserId,
    pub sid: &'a str,
}

/// The outcome of an admin's guest lock, as the audit row keeps it.
pub struct GuestLockOutcome<'a> {
    pub admin: &'a UserId,
    pub guest_id: &'a Json,
    pub guest_user: &'a str,
    pub organization_id: &'a Json,
    pub message: &'a str,
    pub newly_locked: bool,
    pub disconnected: Result<usize, String>,
}

pub enum Event<'a> {
    /// A handshake passed: the socket is the session's user's.
    Authenticated {
        socket: Who<'a>,
        source: &'static str,
    },
    /// A handshake refused for its session (or its lack of one).
    HandshakeRefused {
        socket_id: &'a str,
        error: &'a AuthError,
        sid: Option<&'a str>,
    },
    /// A client crossed one of the limits on what it may hold or do.
    LimitRefused {
        limit: &'static str,
        socket: Option<Who<'a>>,
        details: Json,
    },
    /// A request's Origin is not on the allowlist.
    OriginRejected {
        rejection: &'a Rejection,
        path: &'a str,
        allowlist: &'a Allowlist,
    },
    /// The re-check extended a session near its expiry.
    SessionExtended {
        sid: &'a str,
        user: Option<&'a UserId>,
        /// The cookie's new `expires`, as express-session writes it.
        expires: &'a str,
    },
    /// A session ended (expired, deleted, logged out): its sockets on this
    /// node are told and closed.
    SessionEnded {
        sid: &'a str,
        user: Option<&'a UserId>,
        sockets: &'a [String],
        reason: EndReason,
    },
    /// The re-check found a soft-locked guest's sockets still open here
    /// and ended them.
    LockedGuestFound {
        user: &'a UserId,
        message: &'a str,
        sockets: usize,
    },
    /// An admin soft-locked a guest and disconnected them everywhere.
    GuestLocked(GuestLockOutcome<'a>),
    /// The app answered a client event forwarded to it: counted, not
    /// audited (it is the app's traffic, not a refusal).
    ProxyAnswered {
        socket: Who<'a>,
        elapsed: std::time::Duration,
    },
    /// A client event got an error ack instead of the app's answer: refused
    /// here (not allowed, too many in flight) or the call failed (timeout,
    /// status, unreachable, bad answer, socket gone). `elapsed` when the
    /// app was called.
    ProxyRefused {
        socket: Who<'a>,
        event: &'a str,
        error: &'a ProxyError,
        elapsed: Option<std::time::Duration>,
    },
    /// A socket is gone.
    Disconnected {
        socket: Who<'a>,
        reason: &'a str,
        error: bool,
    },
}

/// The audit log, the metrics and the refusal budgets, together.
#[derive(Clone)]
pub struct Events {
    audit: AuditLog,
    metrics: Metrics,
    refusals: Arc<RefusalLog>,
    violations: Arc<ViolationLog>,
}

impl Events {
    pub fn new(
        audit: AuditLog,
        metrics: Metrics,
        refusals: Arc<RefusalLog>,
        violations: Arc<ViolationLog>,
    ) -> Self {
        Self {
            audit,
            metrics,
            refusals,
            violations,
        }
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Counts, logs and audits `event`. Refusals and origin violations over
    /// their budget are counted only; the next one written says how many
    /// were left out before it.
    pub fn report(&self, client: Client<'_>, event: Event<'_>) {
        let ip = client.ip.map(|ip| ip.to_string());
        let row = |action: &'static str, severity: Severity| {
            let mut row = AuditEvent::new(action, severity);
            row.client_ip = ip.clone();
            row.headers = client.headers.map(audit_headers);
            row
        };
        match event {
            Event::Authenticated { socket, source } => {
                self.metrics.handshake("authenticated");
                tracing::info!(socket = socket.id, user = %socket.user, session = %fingerprint(socket.sid), source, "socket authenticated");
                let mut r = row(action::AUTHENTICATED, Severity::Info);
                name_socket(&mut r, &socket);
                r.details = Some(json!({ "transport": client.transport }));
                self.audit.record(r);
            }
            Event::HandshakeRefused {
                socket_id,
                error,
                sid,
            } => {
                self.metrics.handshake(error.outcome());
                let Some(suppressed) = self.admit_refusal(client.ip) else {
                    return;
                };
                match error {
                    AuthError::StoreUnavailable(e) => {
                        tracing::error!(socket = socket_id, error = %e, suppressed_since_last = suppressed, "session store unreachable: handshake refused (fail closed)")
                    }
                    _ => {
                        tracing::warn!(socket = socket_id, reason = %error.reason(), ip = ?client.ip, suppressed_since_last = suppressed, "handshake refused")
                    }
                }
                let mut r = row(action::AUTH_FAILED, Severity::Warn);
                r.socket_id = Some(socket_id.to_owned());
                r.user_id = error.user().map(ToString::to_string);
                r.session_ref = sid.map(fingerprint);
                r.reason = Some(error.reason());
                r.details = Some(json!({
                    "transport": client.transport,
                    "suppressed_since_last": suppressed,
                }));
                self.audit.record(r);
            }
            Event::LimitRefused {
                limit,
                socket,
                mut details,
            } => {
                self.metrics.refused(limit);
                if socket.is_some() {
                    self.metrics.handshake("limit");
                }
                let Some(suppressed) = self.admit_refusal(client.ip) else {
                    return;
                };
                match &socket {
                    Some(s) => {
                        tracing::warn!(socket = s.id, user = %s.user, limit, ip = ?client.ip, suppressed_since_last = suppressed, "refused: limit crossed")
                    }
                    None => {
                        tracing::warn!(limit, ip = ?client.ip, suppressed_since_last = suppressed, "refused: limit crossed")
                    }
                }
                let mut r = row(action::LIMIT_REFUSED, Severity::Warn);
                if let Some(s) = &socket {
                    name_socket(&mut r, s);
                }
                r.reason = Some(limit.to_owned());
                if let Some(map) = details.as_object_mut() {
                    if let Some(transport) = client.transport {
                        map.insert("transport".into(), transport.into());
                    }
                    map.insert("suppressed_since_last".into(), suppressed.into());
                }
                r.details = Some(details);
                self.audit.record(r);
            }
            Event::OriginRejected {
                rejection,
                path,
                allowlist,
            } => {
                let transport = client.transport.unwrap_or("other");
                self.metrics
                    .origin_violations
                    .get_or_create(&vec![("transport", transport)])
                    .inc();
                let Some(suppressed) = self.violations.admit() else {
                    return;
                };
                // Worded only for the violations that are written.
                let (origin, reason) = (rejection.shown(), rejection.reason());
                let allowlist = allowlist.describe();
                tracing::warn!(%origin, transport, ip = ?client.ip, path, %allowlist, reason,
                    suppressed_since_last = suppressed, "origin rejected");
                let mut r = row(action::ORIGIN_REJECTED, Severity::Warn);
                r.reason = Some(reason.to_owned());
                r.details = Some(json!({
                    "origin": origin,
                    "transport": transport,
                    "path": path,
                    "allowlist": allowlist,
                    "suppressed_since_last": suppressed,
                }));
                self.audit.record(r);
            }
            Event::SessionExtended { sid, user, expires } => {
                self.metrics.sessions_refreshed.inc();
                tracing::info!(session = %fingerprint(sid), expires, "session extended");
                let mut r = row(action::SESSION_REFRESHED, Severity::Info);
                r.session_ref = Some(fingerprint(sid));
                r.user_id = user.map(ToString::to_string);
                r.details = Some(json!({ "expires": expires }));
                self.audit.record(r);
            }
            Event::SessionEnded {
                sid,
                user,
                sockets,
                reason,
            } => {
                self.metrics.sessions_ended.inc();
                tracing::info!(session = %fingerprint(sid), reason = reason.as_str(), sockets = sockets.len(), "session ended: disconnecting its sockets");
                for socket in sockets {
                    let mut r = row(action::SESSION_EXPIRED, Severity::Info);
                    r.socket_id = Some(socket.clone());
                    r.session_ref = Some(fingerprint(sid));
                    r.reason = Some(reason.as_str().to_owned());
                    r.user_id = user.map(ToString::to_string);
                    self.audit.record(r);
                }
            }
            Event::LockedGuestFound {
                user,
                message,
                sockets,
            } => {
                tracing::warn!(user = %user, sockets, "soft-locked guest found connected: disconnected");
                let mut r = row(action::GUEST_LOCKED, Severity::Warn);
                r.user_id = Some(user.to_string());
                r.reason = Some(message.to_owned());
                r.details = Some(json!({ "sockets": sockets, "found_by": "session re-check" }));
                self.audit.record(r);
            }
            Event::GuestLocked(o) => {
                match &o.disconnected {
                    Ok(count) => {
                        tracing::info!(admin = %o.admin, guest = %o.guest_id, user = o.guest_user, disconnected = count, newly_locked = o.newly_locked, "guest soft-locked and disconnected")
                    }
                    Err(e) => {
                        tracing::error!(admin = %o.admin, guest = %o.guest_id, user = o.guest_user, error = %e, "guest soft-locked but the disconnect failed")
                    }
                }
                let mut r = row(action::GUEST_DISCONNECTED, Severity::Info);
                r.user_id = Some(o.admin.to_string());
                r.reason = Some(o.message.to_owned());
                r.details = Some(json!({
                    "guest_id": o.guest_id,
                    "guest_user_id": o.guest_user,
                    "organization_id": o.organization_id,
                    "newly_locked": o.newly_locked,
                    "disconnected": o.disconnected.as_ref().ok(),
                    "error": o.disconnected.as_ref().err(),
                }));
                self.audit.record(r);
            }
            Event::ProxyAnswered { socket, elapsed } => {
                self.metrics.proxy_call("ok", Some(elapsed));
                tracing::debug!(socket = socket.id, user = %socket.user, ?elapsed, "client event answered by the app");
            }
            Event::ProxyRefused {
                socket,
                event,
                error,
                elapsed,
            } => {
                self.metrics.proxy_call(error.code(), elapsed);
                let Some(suppressed) = self.admit_refusal(client.ip) else {
                    return;
                };
                let event = shown(event);
                let code = error.code();
                if error.before_the_app() {
                    tracing::warn!(socket = socket.id, user = %socket.user, event, code, ip = ?client.ip, suppressed_since_last = suppressed, "client event refused");
                } else {
                    tracing::error!(socket = socket.id, user = %socket.user, event, code, error = %error, ?elapsed, suppressed_since_last = suppressed, "client event: the app's answer failed");
                }
                let mut r = row(action::PROXY_REFUSED, Severity::Warn);
                name_socket(&mut r, &socket);
                r.reason = Some(code.to_owned());
                r.details = Some(json!({
                    "event": event,
                    "error": error.to_string(),
                    "elapsed_ms": elapsed.map(|e| e.as_millis() as u64),
                    "transport": client.transport,
                    "suppressed_since_last": suppressed,
                }));
                self.audit.record(r);
            }
            Event::Disconnected {
                socket,
                reason,
                error,
            } => {
                if error {
                    tracing::warn!(socket = socket.id, user = %socket.user, session = %fingerprint(socket.sid), error = %reason, "socket error");
                }
                tracing::info!(socket = socket.id, user = %socket.user, session = %fingerprint(socket.sid), %reason, "socket disconnected");
                let mut r = row(action::DISCONNECTED, Severity::Info);
                name_socket(&mut r, &socket);
                r.headers = None;
                r.reason = Some(reason.to_owned());
                self.audit.record(r);
            }
        }
    }

    /// `Some(n)`: write this refusal, noting `n` left out before it.
    fn admit_refusal(&self, ip: Option<IpAddr>) -> Option<u64> {
        let admitted = self.refusals.admit(ip.unwrap_or(UNKNOWN_CLIENT));
        if admitted.is_none() {
            self.metrics.audit_suppressed.inc();
        }
        admitted
    }
}

fn name_socket(row: &mut AuditEvent, socket: &Who<'_>) {
    row.socket_id = Some(socket.id.to_owned());
    row.user_id = Some(socket.user.to_string());
    row.session_ref = Some(fingerprint(socket.sid));
}
