//! What engine.io keeps of a Socket.IO request. Knows nothing of sessions or
//! authentication; it only decides which parts of the request outlive the
//! handshake.
//!
//! engineioxide keeps each session's handshake request (`req_parts`) for the
//! session's whole life: socketioxide hands it to the connect middleware, and
//! the audit log records its headers. As hyper delivers it, that is far more
//! than the headers: the header values and the URI are slices of the
//! connection's 16 KiB read buffer (keeping any keeps the buffer), each value
//! that is cloned becomes an allocation of its own, and the extensions carry
//! the router's bookkeeping. [`compact`] rewrites the request before the
//! Socket.IO layer sees it, keeping only what is read after it: the cookie
//! (the CONNECT's authentication), the audited headers and, on a websocket
//! request, the upgrade's own headers (engine.io answers the upgrade, then
//! drops them itself). A browser sends a dozen more (`accept-*`,
//! `sec-fetch-*`, `cache-control`, ...), each about a hundred bytes of
//! header map for the session's life.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Uri, header};

/// In front of the Socket.IO layer, as a request map
/// (`ServiceBuilder::map_request`, tower's `MapRequest`, whose future is the
/// inner one: a held long-poll carries nothing of it); other routes, and the
/// requests of a long-polling session already open, pass untouched.
pub fn compact(req: axum::extract::Request) -> axum::extract::Request {
    if !crate::engine_path::is_engine_path(req.uri().path()) || !is_kept(req.uri().query()) {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    compact_parts(&mut parts);
    axum::extract::Request::from_parts(parts, body)
}

/// Whether engine.io may keep this request: a handshake (no `sid`), or a
/// websocket request (its task holds the request it was opened with). The
/// GETs and POSTs of an open long-polling session are answered and dropped;
/// copying their headers cost every poll an allocation and a copy for
/// nothing.
fn is_kept(query: Option<&str>) -> bool {
    crate::limits::is_handshake(query) || is_websocket(query)
}

fn is_websocket(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|pair| pair == "transport=websocket"))
}

/// The headers engine.io's websocket upgrade reads; it drops them itself
/// once it has answered the upgrade (its `UPGRADE_ONLY_HEADERS`).
const UPGRADE_HEADERS: [HeaderName; 5] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// Whether a header outlives the request: read by the CONNECT middleware
/// (the cookie, the audited headers) or, on a websocket request, by
/// engine.io's upgrade.
fn is_read_later(name: &HeaderName, websocket: bool) -> bool {
    name == header::COOKIE
        || crate::audit::AUDITED_HEADERS.contains(&name.as_str())
        || (websocket && UPGRADE_HEADERS.contains(name))
}

/// The headers [`is_read_later`] keeps, in order, with their values; their
/// bytes move into one buffer of their own. The URI is copied out. Of the
/// extensions, only the client's address (the audit's client ip) and
/// hyper's upgrade handle (the websocket transport needs it) are kept.
pub fn compact_parts(parts: &mut Parts) {
    let websocket = is_websocket(parts.uri.query());
    parts.headers = compact_headers(&parts.headers, websocket);
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    let mut kept = Extensions::new();
    if let Some(addr) = parts.extensions.remove::<ConnectInfo<SocketAddr>>() {
        kept.insert(addr);
    }
    if let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        kept.insert(upgrade);
    }
    parts.extensions = kept;
}

fn compact_headers(headers: &HeaderMap, websocket: bool) -> HeaderMap {
    let kept = || {
        headers
            .iter()
            .filter(move |(name, _)| is_read_later(name, websocket))
    };
    let mut buf = Vec::with_capacity(kept().map(|(_, value)| value.len()).sum());
    for (_, value) in kept() {
        buf.extend_from_slice(value.as_bytes());
    }
    let buf = Bytes::from(buf);
    let mut out = HeaderMap::with_capacity(kept().count());
    let mut at = 0;
    for (name, value) in kept() {
        let end = at + value.len();
        // Slices of one shared buffer: no allocation per value.
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(buf.slice(at..end)) {
            copy.set_sensitive(value.is_sensitive());
            out.append(name.clone(), copy);
        }
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Parts {
        let (mut parts, ()) = http::Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket&x=%20y")
            .header("host", "127.0.0.1:3000")
            .header("cookie", "connect.sid=s%3Aabc.def")
            .header("cookie", "theme=dark")
            .header("x-forwarded-for", "10.0.0.7")
            .header("user-agent", "test/1.0")
            .body(())
            .unwrap()
            .into_parts();
        parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 7], 4242))));
        parts.extensions.insert("router bookkeeping");
        parts
    }

    fn pairs(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        h.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(HeaderName::as_str).collect()
    }

    fn insert_all(parts: &mut Parts, headers: &[(&'static str, &'static str)]) {
        for &(name, value) in headers {
            parts.headers.insert(name, HeaderValue::from_static(value));
        }
    }

    /// The headers of [`request`] that are read later, in its order.
    const READ_LATER: [&str; 4] = ["host", "cookie", "x-forwarded-for", "user-agent"];

    #[test]
    fn the_headers_read_later_are_kept_in_order_with_their_values() {
        let before = request();
        let mut after = request();
        insert_all(
            &mut after,
            &[("accept-language", "en"), ("sec-fetch-mode", "cors")],
        );
        compact_parts(&mut after);
        assert_eq!(pairs(&after.headers), pairs(&before.headers));
        assert_eq!(after.headers.get_all("cookie").iter().count(), 2);
        assert_eq!(after.uri, before.uri);
        assert_eq!(after.method, before.method);
    }

    #[test]
    fn what_nothing_reads_later_is_dropped() {
        let mut parts = request();
        insert_all(
            &mut parts,
            &[
                ("accept", "x"),
                ("accept-encoding", "x"),
                ("cache-control", "x"),
                ("sec-fetch-site", "x"),
            ],
        );
        compact_parts(&mut parts);
        assert_eq!(names(&parts.headers), READ_LATER);
    }

    #[test]
    fn a_websocket_upgrade_keeps_its_own_headers() {
        let mut parts = request();
        insert_all(
            &mut parts,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
                ("sec-websocket-extensions", "permessage-deflate"),
            ],
        );
        let before = pairs(&parts.headers);
        insert_all(&mut parts, &[("sec-websocket-protocol", "chat")]);
        compact_parts(&mut parts);
        assert_eq!(pairs(&parts.headers), before);
    }

    #[test]
    fn a_polling_handshake_keeps_no_upgrade_headers() {
        let mut parts = request();
        parts.uri = Uri::from_static("/socket.io/?EIO=4&transport=polling&t=x");
        insert_all(
            &mut parts,
            &[("connection", "keep-alive"), ("upgrade", "websocket")],
        );
        compact_parts(&mut parts);
        assert_eq!(names(&parts.headers), READ_LATER);
    }

    #[test]
    fn only_the_client_address_is_kept_of_the_extensions() {
        let mut parts = request();
        compact_parts(&mut parts);
        assert_eq!(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
            Some(SocketAddr::from(([10, 0, 0, 7], 4242)))
        );
        assert!(parts.extensions.get::<&str>().is_none());
    }

    #[test]
    fn only_requests_engine_io_keeps_are_compacted() {
        assert!(is_kept(Some("EIO=4&transport=polling")));
        assert!(is_kept(Some("EIO=4&transport=websocket")));
        assert!(is_kept(Some("EIO=4&transport=websocket&sid=abc")));
        assert!(is_kept(None));
        assert!(!is_kept(Some("EIO=4&transport=polling&sid=abc")));
        assert!(!is_kept(Some("sid=abc&EIO=4&transport=polling&t=x")));
    }

    #[test]
    fn sensitive_marks_survive() {
        let mut parts = request();
        let mut secret = HeaderValue::from_static("connect.sid=s%3Aabc.def");
        secret.set_sensitive(true);
        parts.headers.insert("cookie", secret);
        compact_parts(&mut parts);
        assert!(parts.headers["cookie"].is_sensitive());
        assert!(!parts.headers["user-agent"].is_sensitive());
    }
}
