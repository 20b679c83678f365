//! Time from an admin's disconnect request to the last of a guest's 10
//! sockets closed, on one node and across two nodes joined by the
//! PostgreSQL adapter. Run: `cargo bench --bench guest_disconnect`
//! (PostgreSQL from DATABASE_URL, default the local `test` database;
//! `BENCH_ROUNDS`, default 100, rounds per scenario).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{BenchDb, Server};
use tokio_tungstenite::tungstenite::Message;

const SOCKETS: usize = 10;
/// Rounds per scenario before the measured ones: the first use of each
/// pooled connection (TCP, TLS, `SET search_path`) is not a lock's cost.
const WARMUP: usize = 5;

/// Reads one socket until the server closes it; returns whether
/// `guest:locked` came before the close, and when the close came.
async fn watch(mut ws: support::Ws) -> (bool, Instant) {
    let mut told = false;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) if t.starts_with("42[\"guest:locked\"") => told = true,
            Ok(Message::Text(t)) if t.as_str() == "41" => return (told, Instant::now()),
            Ok(Message::Close(_)) | Err(_) => return (told, Instant::now()),
            _ => {}
        }
    }
    (told, Instant::now())
}

struct Round {
    answered: Duration,
    last_closed: Duration,
}

async fn round(
    admin_node: &SocketAddr,
    guest_node: &SocketAddr,
    admin: &str,
    guest: &str,
    guest_id: usize,
) -> Round {
    let mut watchers = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        let ws = support::handshake(guest_node, guest)
            .await
            .expect("guest connects");
        watchers.push(tokio::spawn(watch(ws)));
    }
    // Built before the clock starts: building a client loads TLS roots.
    let http = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    let started = Instant::now();
    let resp = http
        .post(format!(
            "http://{admin_node}/api/admin/guest/{guest_id}/disconnect"
        ))
        .header("Cookie", format!("connect.sid={admin}"))
        .send()
        .await
        .unwrap();
    let answered = started.elapsed();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["disconnected"], SOCKETS, "{body}");
    let mut last = started;
    for w in watchers {
        let (told, closed) = w.await.unwrap();
        assert!(told, "guest:locked before the close");
        last = last.max(closed);
    }
    Round {
        answered,
        last_closed: last - started,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(mut xs: Vec<Duration>) -> serde_json::Value {
    xs.sort();
    let p = |q: f64| ms(xs[((xs.len() - 1) as f64 * q).round() as usize]);
    serde_json::json!({ "p50_ms": p(0.5), "p90_ms": p(0.9), "max_ms": p(1.0) })
}

#[tokio::main]
async fn main() {
    let rounds = support::env_usize("BENCH_ROUNDS", 100);
    let per_scenario = WARMUP + rounds;
    let db = BenchDb::create().await;
    // User 0 is the admin of organization 1; the others are its guests,
    // one per round.
    let cookies = db.insert_sessions(2 * per_scenario + 1, 3600).await;
    let client = support::pg_client(&db.url).await;
    client
        .batch_execute(&format!(
            "INSERT INTO sockgate.app_user (id, username, created_at) SELECT i::text, 'u' || i, now() FROM generate_series(0, {n}) i;
             INSERT INTO sockgate.organization (id, name, created_at) VALUES (1, 'bench', now());
             INSERT INTO sockgate.member (organization_id, user_id, role) VALUES (1, '0', 'admin');
             INSERT INTO sockgate.guest (id, user_id, organization_id, soft_locked, created_at)
               SELECT i, i::text, 1, false, now() FROM generate_series(1, {n}) i;",
            n = 2 * per_scenario
        ))
        .await
        .unwrap();
    let adapter = [("ADAPTER", "postgres")];
    let a = Server::start(&db.url, &adapter).await;
    let b = Server::start(&db.url, &adapter).await;
    // Let the nodes' first heartbeats meet.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut report = serde_json::Map::new();
    println!(
        "guest with {SOCKETS} sockets, {rounds} rounds after {WARMUP} unmeasured, admin request on node A"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p90 ms", "max ms"
    );
    for (name, guest_node, offset) in [
        ("one node", a.addr, 1),
        ("two nodes (sockets on B)", b.addr, 1 + per_scenario),
    ] {
        let mut answered = Vec::new();
        let mut closed = Vec::new();
        for r in 0..per_scenario {
            let id = offset + r;
            let res = round(&a.addr, &guest_node, &cookies[0], &cookies[id], id).await;
            // An outlier is named, so it can be looked for in the servers'
            // logs (BENCH_SERVER_LOG): sqlx 0.9.0's Nagle stalls showed here.
            if res.last_closed > Duration::from_millis(20) {
                eprintln!(
                    "{name}: slow round {r}: response after {:.1?}, last close after {:.1?}",
                    res.answered, res.last_closed
                );
            }
            if r < WARMUP {
                continue;
            }
            answered.push(res.answered);
            closed.push(res.last_closed);
        }
        let (answered, closed) = (summary(answered), summary(closed));
        for (what, s) in [
            ("request → response", &answered),
            ("request → last close", &closed),
        ] {
            println!(
                "{:<28} {:>10.2} {:>10.2} {:>10.2}",
                format!("{name}: {what}"),
                s["p50_ms"].as_f64().unwrap(),
                s["p90_ms"].as_f64().unwrap(),
                s["max_ms"].as_f64().unwrap()
            );
        }
        report.insert(
            name.to_owned(),
            serde_json::json!({ "response": answered, "last_close": closed }),
        );
    }
    support::write_report("guest_disconnect", &serde_json::Value::Object(report));
    a.stop();
    b.stop();
    db.drop_database().await;
}
