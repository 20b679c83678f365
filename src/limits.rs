//! What one client may make the server hold or do: connections per IP,
//! handshakes per IP per second, sockets per user and per session, and how
//! often its refusals reach the log and the audit table. Plain types with
//! no knowledge of HTTP or Socket.IO; the layers that enforce them count
//! every refusal in `/metrics`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a handshake that authenticated is still refused. `Display` is the
/// client's `connect_error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SocketLimit {
    #[error("Too many connections")]
    PerUser,
    #[error("Too many connections")]
    PerSession,
}

impl SocketLimit {
    pub fn label(self) -> &'static str {
        match self {
            SocketLimit::PerUser => "sockets_per_user",
            SocketLimit::PerSession => "sockets_per_session",
        }
    }
}

/// The newest socket is refused when its user or its session already holds
/// the maximum on this node; the ones already open are never cut.
pub fn check_sockets(
    user_sockets: usize,
    session_sockets: usize,
    max_per_user: usize,
    max_per_session: usize,
) -> Result<(), SocketLimit> {
    if session_sockets >= max_per_session {
        return Err(SocketLimit::PerSession);
    }
    if user_sockets >= max_per_user {
        return Err(SocketLimit::PerUser);
    }
    Ok(())
}

/// Whether an engine.io request opens a new session (a handshake): the
/// engine's own rule, a query without `sid=`.
pub fn is_handshake(query: Option<&str>) -> bool {
    !query.is_some_and(|q| q.split('&').any(|pair| pair.starts_with("sid=")))
}

/// Key for clients whose address is unknown (no `ConnectInfo`): they share
/// one budget rather than escaping it.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Keys kept before the limiters forget clients not seen recently: an
/// attacker with many addresses cannot grow them without bound.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// A rate per client IP, with a node-wide cap above it.
pub struct PerClientRate {
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    node: DefaultDirectRateLimiter,
}

impl PerClientRate {
    pub fn new(per_client_per_sec: u32, per_client_burst: u32, node_per_sec: u32) -> Self {
        let quota = |rate: u32, burst: u32| {
            let rate = NonZeroU32::new(rate.max(1)).unwrap();
            Quota::per_second(rate).allow_burst(NonZeroU32::new(burst.max(1)).unwrap())
        };
        Self {
            per_client: RateLimiter::keyed(quota(per_client_per_sec, per_client_burst)),
            node: RateLimiter::direct(quota(node_per_sec, node_per_sec.saturating_mul(5))),
        }
    }

    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.per_client.len() > MAX_TRACKED_CLIENTS {
            self.per_client.retain_recent();
            self.per_client.shrink_to_fit();
        }
        self.per_client.check_key(&ip).is_ok() && self.node.check().is_ok()
    }
}

/// How often origin violations reach the log and the audit table (the
/// metric counts every one): a burst of 50, then 10 a second for the node,
/// so that a flood cannot fill either; what was left out is carried on the
/// next row.
pub struct ViolationLog {
    limiter: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl Default for ViolationLog {
    fn default() -> Self {
        Self {
            limiter: RateLimiter::direct(
                Quota::per_second(NonZeroU32::new(10).unwrap())
                    .allow_burst(NonZeroU32::new(50).unwrap()),
            ),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl ViolationLog {
    /// `Some(n)`: write this violation, noting `n` left out before it;
    /// `None`: leave it out (it is counted).
    pub fn admit(&self) -> Option<u64> {
        if self.limiter.check().is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// How often a client's refusals are written to the log and the audit
/// table (every one is counted in `/metrics`): a burst, then a rate, per
/// client IP, and at most 100 a second for the node. What was left out is
/// counted and carried on the client's next row.
pub struct RefusalLog {
    rate: PerClientRate,
    suppressed: Mutex<HashMap<IpAddr, u64>>,
    /// Suppressed refusals of clients no longer tracked one by one.
    suppressed_untracked: AtomicU64,
}

impl RefusalLog {
    pub fn new(per_client_per_sec: u32, per_client_burst: u32) -> Self {
        Self {
            rate: PerClientRate::new(per_client_per_sec, per_client_burst, 100),
            suppressed: Mutex::default(),
            suppressed_untracked: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: write this refusal, noting `n` left out before it;
    /// `None`: leave it out (it is counted).
    pub fn admit(&self, ip: IpAddr) -> Option<u64> {
        let mut suppressed = self.suppressed.lock().unwrap();
        if self.rate.allow(ip) {
            let own = suppressed.remove(&ip).unwrap_or(0);
            return Some(own + self.suppressed_untracked.swap(0, Ordering::Relaxed));
        }
        if suppressed.len() >= MAX_TRACKED_CLIENTS && !suppressed.contains_key(&ip) {
            self.suppressed_untracked.fetch_add(1, Ordering::Relaxed);
        } else {
            *suppressed.entry(ip).or_default() += 1;
        }
        None
    }
}

/// Open TCP connections per client IP.
#[derive(Clone)]
pub struct ConnectionCounter {
    max_per_ip: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection, counted until dropped.
pub struct ConnectionPermit {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionCounter {
    pub fn new(max_per_ip: usize) -> Self {
        Self {
            max_per_ip,
            open: Arc::default(),
        }
    }

    pub fn acquire(&self, ip: IpAddr) -> Option<ConnectionPermit> {
        let mut open = self.open.lock().unwrap();
        let count = open.entry(ip).or_default();
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            ip,
            open: self.open.clone(),
        })
    }

    #[cfg(test)]
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection's stream carrying its permit, so that a connection
/// upgraded to a websocket stays counted for as long as the websocket
/// lives (hyper hands the stream itself to the upgrade).
pub struct Counted<S> {
    inner: S,
    _permit: ConnectionPermit,
}

impl<S> Counted<S> {
    pub fn new(inner: S, permit: ConnectionPermit) -> Self {
        Self {
            inner,
            _permit: permit,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn handshake_is_a_request_without_sid() {
        assert!(is_handshake(None));
        assert!(is_handshake(Some("EIO=4&transport=polling")));
        assert!(is_handshake(Some("EIO=4&transport=polling&xsid=1")));
        assert!(!is_handshake(Some("EIO=4&transport=polling&sid=abc")));
        assert!(!is_handshake(Some("sid=abc&EIO=4")));
    }

    #[test]
    fn connections_are_counted_per_ip_until_dropped() {
        let c = ConnectionCounter::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = c.acquire(ip).unwrap();
        let _b = c.acquire(ip).unwrap();
        assert!(c.acquire(ip).is_none());
        assert!(c.acquire(other).is_some());
        drop(a);
        assert_eq!(c.open_from(ip), 1);
        assert!(c.acquire(ip).is_some());
    }

    #[test]
    fn refusal_log_carries_what_it_left_out() {
        let log = RefusalLog::new(1, 10);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let mut written = 0;
        let mut left_out = 0;
        for _ in 0..50 {
            match log.admit(ip) {
                Some(_) => written += 1,
                None => left_out += 1,
            }
        }
        assert!(
            written <= 11,
            "a burst of 10 (and at most one refill): {written}"
        );
        assert_eq!(written + left_out, 50);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(log.admit(ip), Some(left_out));
        // Another client has a budget of its own.
        assert_eq!(log.admit("192.0.2.10".parse().unwrap()), Some(0));
    }

    proptest! {
        #[test]
        fn the_newest_socket_is_refused_exactly_at_the_limits(
            user in 0usize..10, session in 0usize..10, max_user in 1usize..8, max_session in 1usize..8,
        ) {
            let verdict = check_sockets(user, session, max_user, max_session);
            prop_assert_eq!(verdict.is_ok(), user < max_user && session < max_session);
        }
    }
}
