//! Below the Socket.IO client: the raw websocket handshake
//! ([`super::engine_io`]), raw HTTP requests, and reading `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

/// The signed, URL-encoded cookie value of `sid` under `secret`.
pub fn cookie_value(sid: &str, secret: &str) -> String {
    let signed = format!("s:{}", sockgate::session::sign(sid, secret));
    percent_encoding::utf8_percent_encode(&signed, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A metric from `/metrics`, summed over its label sets; counters are
/// exposed with `_total`.
pub async fn metric(base_url: &str, name: &str) -> f64 {
    let text = super::http()
        .get(format!("{base_url}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Waits until `/metrics` shows `name` at `want`, for counts a task of the
/// server's own moves (a session lookup is counted when its statement goes
/// out); panics after 10 s.
pub async fn metric_reaches(base_url: &str, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(base_url, name).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {now}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens an engine.io long-polling session on `base_url` with `cookie` (a
/// whole `Cookie` header): its open packet (`sid`, `pingInterval`, ...).
pub async fn polling_open(base_url: &str, cookie: &str) -> serde_json::Value {
    let open = super::http()
        .get(format!("{base_url}/socket.io/?EIO=4&transport=polling"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("GET the polling handshake")
        .text()
        .await
        .unwrap();
    serde_json::from_str(open.strip_prefix('0').expect("an engine.io open packet"))
        .expect("the open packet's JSON")
}

/// CONNECT on the long-polling session opened as `open` (its open packet),
/// then one poll: what that poll read, packets joined as engine.io joins
/// them. The session is closed after.
pub async fn polling_connect(base_url: &str, open: &serde_json::Value, cookie: &str) -> String {
    let http = super::http();
    let url = format!(
        "{base_url}/socket.io/?EIO=4&transport=polling&sid={}",
        open["sid"].as_str().expect("the open packet's sid")
    );
    let posted = http
        .post(&url)
        .header("cookie", cookie)
        .body("40")
        .send()
        .await
        .expect("POST the CONNECT");
    assert!(posted.status().is_success(), "{}", posted.status());
    let reply = http
        .get(&url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("GET the CONNECT's answer")
        .text()
        .await
        .unwrap();
    let _ = http.post(&url).body("1").send().await;
    reply
}

/// The status of `GET <base_url><path>`, or 0 when there is no answer.
pub async fn status(base_url: &str, path: &str) -> u16 {
    super::http()
        .get(format!("{base_url}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Sends `request` as written on a new TCP connection and reads until the
/// server closes or `limit` passes: the status code (0 for none) and the
/// whole answer as text. Requests should say `Connection: close`.
pub async fn raw(addr: &SocketAddr, request: &[u8], limit: Duration) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A GET of `path_and_query` with extra header lines (`Name: value`).
pub fn get(path_and_query: &str, headers: &[&str]) -> Vec<u8> {
    let mut req = format!("GET {path_and_query} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The body of an answer read by [`raw`].
pub fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}
