//! The event proxy's round trip: a client event through sockgate to an HTTP
//! app and the app's answer back as the ack, next to the same app called
//! directly with the same signed body (one keep-alive POST per call): p50 /
//! p99 and calls per second. Run: `cargo bench --bench proxy` (PostgreSQL
//! from DATABASE_URL, default the local `test` database).
//!
//! Knobs: BENCH_CALLS (5000), BENCH_CONCURRENCY (16 sockets, one call in
//! flight each). Writes target/bench-results/proxy.json.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::{BenchDb, Server, env_usize};
use tokio_tungstenite::tungstenite::Message;

const PROXY_SECRET: &str = "bench-proxy-secret-of-32-bytes!!";

fn mac(timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(PROXY_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The app: checks the signature as the README's snippet does and acks the
/// first argument back.
async fn answer(headers: HeaderMap, body: Bytes) -> Response {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("x-sockgate-signature") != mac(header("x-sockgate-timestamp"), &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let call: Value = serde_json::from_slice(&body).unwrap_or_default();
    axum::Json(json!({ "ack": call["args"][0] })).into_response()
}

async fn start_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/events", axum::routing::post(answer));
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

struct Run {
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn pct(&self, q: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        let i = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn report(&self, path: &str) -> Value {
        println!(
            "| {path} | {} | {:.0} | {:.2} | {:.2} |",
            self.latencies.len(),
            self.rate(),
            self.pct(0.5),
            self.pct(0.99)
        );
        json!({"calls": self.latencies.len(), "per_sec": self.rate(),
               "p50_ms": self.pct(0.5), "p99_ms": self.pct(0.99)})
    }
}

/// One socket per cookie, each sending `per_socket` events one after the
/// other and waiting for each ack.
async fn through_sockgate(addr: SocketAddr, cookies: &[String], per_socket: usize) -> Run {
    let mut sockets = Vec::new();
    for cookie in cookies {
        sockets.push(support::handshake(&addr, cookie).await.expect("connects"));
    }
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_socket);
                for i in 0..per_socket {
                    let id = i % 1000;
                    let sent = Instant::now();
                    ws.send(Message::text(format!(r#"42{id}["bench:echo",{i}]"#)))
                        .await
                        .unwrap();
                    let ack = format!("43{id}[{i}]");
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) if t.as_str() == ack => break,
                            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                                ws.send(Message::text("3")).await.unwrap();
                            }
                            Some(Ok(Message::Text(t))) if t.starts_with("43") => {
                                panic!("unexpected ack {t}")
                            }
                            Some(Ok(_)) => {}
                            other => panic!("socket ended: {other:?}"),
                        }
                    }
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Run {
        wall: started.elapsed(),
        latencies,
    }
}

/// The same number of callers POSTing the body sockgate would send, signed,
/// straight to the app.
async fn direct(app: SocketAddr, callers: usize, per_caller: usize) -> Run {
    let client = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    let url = format!("http://{app}/events");
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_caller);
                for i in 0..per_caller {
                    let sent = Instant::now();
                    let body = serde_json::to_vec(&json!({
                        "event": "bench:echo", "args": [i], "userId": c.to_string(),
                        "socketId": "direct", "sessionRef": "000000000000", "rooms": [format!("user:{c}")]
                    }))
                    .unwrap();
                    let timestamp = chrono::Utc::now().timestamp().to_string();
                    let answer: Value = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-sockgate-signature", mac(&timestamp, &body))
                        .header("x-sockgate-timestamp", timestamp)
                        .body(body)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(answer["ack"], i);
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Run {
        wall: started.elapsed(),
        latencies,
    }
}

#[tokio::main]
async fn main() {
    let calls = env_usize("BENCH_CALLS", 5000);
    let concurrency = env_usize("BENCH_CONCURRENCY", 16).max(1);
    let per_socket = calls.div_ceil(concurrency);
    let db = BenchDb::create().await;
    let cookies = db.insert_sessions(concurrency, 3600).await;
    let app = start_app().await;
    let url = format!("http://{app}/events");
    let server = Server::start(
        &db.url,
        &[
            ("EVENT_PROXY_URL", url.as_str()),
            ("EVENT_PROXY_EVENTS", "bench:*"),
            ("EVENT_PROXY_SECRET", PROXY_SECRET),
        ],
    )
    .await;
    // Warm-up: connections to the app, the pool, the JIT-less caches.
    through_sockgate(server.addr, &cookies, 20).await;
    direct(app, concurrency, 20).await;

    println!("{concurrency} callers, one call in flight each");
    println!("| path | calls | calls/s | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- |");
    let proxied = through_sockgate(server.addr, &cookies, per_socket).await;
    let plain = direct(app, concurrency, per_socket).await;
    let report = json!({
        "concurrency": concurrency,
        "through_sockgate": proxied.report("client → sockgate → app → ack"),
        "direct": plain.report("POST to the app directly"),
    });
    support::write_report("proxy", &report);
    server.stop();
    db.drop_database().await;
}
