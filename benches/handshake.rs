//! Authenticated handshakes against PostgreSQL, over each transport, next to
//! the library's ceiling (the same stack with authentication off):
//! handshakes per second, p50/p99 latency, server CPU per handshake (the
//! server process's own accounting), database transactions per handshake
//! (pg_stat_database), and resident memory per idle socket at 10,000.
//!
//!     cargo bench --bench handshake
//!
//! Knobs: BENCH_HANDSHAKES (5000), BENCH_CONCURRENCY (32), BENCH_IDLE
//! (10000); DATABASE_URL names the PostgreSQL server (default the local
//! `test` database). Writes target/bench-results/handshake.json.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{BenchDb, HandshakeError, Server};
use tokio::sync::Semaphore;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn own_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Websocket,
    Polling,
}

enum Held {
    Ws(Box<support::Ws>),
    Polling(String),
}

struct Run {
    handshakes: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    server_cpu: Duration,
    client_cpu: Duration,
    db_xacts: Option<f64>,
    failed: usize,
}

impl Run {
    fn rate(&self) -> f64 {
        self.handshakes as f64 / self.wall.as_secs_f64()
    }
    fn pct(&self, q: f64) -> f64 {
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
    fn server_cpu_ms(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1000.0 / self.handshakes as f64
    }
    fn client_cpu_ms(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1000.0 / self.handshakes as f64
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "handshakes": self.handshakes,
            "failed": self.failed,
            "per_second": self.rate(),
            "p50_ms": self.pct(0.5),
            "p99_ms": self.pct(0.99),
            "server_cpu_ms_per_handshake": self.server_cpu_ms(),
            "client_cpu_ms_per_handshake": self.client_cpu_ms(),
            "db_transactions_per_handshake": self.db_xacts,
        })
    }
}

/// Committed + rolled-back transactions of the bench database so far; each
/// autocommit statement sockgate sends is one. Backends flush these counters
/// when idle, at most every 10 s, hence the wait.
async fn db_transactions(db: &BenchDb) -> f64 {
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (client, conn) = tokio_postgres::connect(&db.admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT (xact_commit + xact_rollback)::float8 FROM pg_stat_database WHERE datname = $1",
            &[&db.name],
        )
        .await
        .unwrap();
    row.get(0)
}

async fn run(
    server: &Server,
    transport: Transport,
    cookies: &[String],
    concurrency: usize,
    db: Option<&BenchDb>,
) -> Run {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let xacts_before = match db {
        Some(db) => Some(db_transactions(db).await),
        None => None,
    };
    let sem = std::sync::Arc::new(Semaphore::new(concurrency));
    let addr: SocketAddr = server.addr;
    let (cpu0, client0, started) = (server.cpu_time(), own_cpu(), Instant::now());
    let mut tasks = Vec::with_capacity(cookies.len());
    for cookie in cookies {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (cookie, http) = (cookie.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let held = match transport {
                Transport::Websocket => support::handshake(&addr, &cookie)
                    .await
                    .map(|ws| Held::Ws(Box::new(ws))),
                Transport::Polling => support::polling_handshake(&http, &addr, &cookie)
                    .await
                    .map(Held::Polling),
            };
            drop(permit);
            (t.elapsed(), held)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut held = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        let (latency, result) = t.await.unwrap();
        match result {
            Ok(h) => {
                latencies.push(latency);
                held.push(h);
            }
            Err(HandshakeError::Refused(m) | HandshakeError::Transport(m)) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("handshake failed: {m}");
                }
            }
        }
    }
    let wall = started.elapsed();
    let (server_cpu, client_cpu) = (server.cpu_time() - cpu0, own_cpu() - client0);
    latencies.sort();
    let handshakes = latencies.len();
    let db_xacts = match (db, xacts_before) {
        (Some(db), Some(before)) => Some((db_transactions(db).await - before) / handshakes as f64),
        _ => None,
    };
    for h in held {
        match h {
            Held::Ws(ws) => drop(ws),
            Held::Polling(sid) => support::polling_close(&http, &addr, &sid).await,
        }
    }
    Run {
        handshakes,
        wall,
        latencies,
        server_cpu,
        client_cpu,
        db_xacts,
        failed,
    }
}

/// Resident memory per idle authenticated socket: a fresh server, one warm-up
/// socket, then `n` more held open.
async fn idle_memory(server: &Server, cookies: &[String]) -> serde_json::Value {
    let warm = support::connect_many(&server.addr, &cookies[..1], 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    let held = support::connect_many(&server.addr, &cookies[1..], 64).await;
    let connected = held.iter().filter(|h| h.is_some()).count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    let per_socket = (after.saturating_sub(before)) as f64 / connected as f64;
    drop((warm, held));
    serde_json::json!({ "sockets": connected, "rss_before_kib": before, "rss_after_kib": after, "kib_per_socket": per_socket })
}

/// The same allocator as the sockgate binary, so that the ceiling (this
/// binary re-run) is compared like for like.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    if let Ok(listen) = std::env::var(support::ceiling::ENV) {
        let listen = listen
            .parse()
            .expect("SOCKGATE_BENCH_CEILING is an address");
        support::ceiling::serve(listen)
            .await
            .expect("the ceiling server");
        return;
    }
    let n = env_usize("BENCH_HANDSHAKES", 5000);
    let concurrency = env_usize("BENCH_CONCURRENCY", 32);
    let idle = env_usize("BENCH_IDLE", 10_000);
    let db = BenchDb::create().await;
    let cookies = db.insert_sessions(n.max(idle + 1), 3600).await;
    let mut report = serde_json::Map::new();

    println!(
        "{n} handshakes per run at concurrency {concurrency}, PostgreSQL, 2 cores shared by server, client and database"
    );
    println!(
        "{:<10} {:<9} {:>10} {:>8} {:>8} {:>13} {:>13} {:>9}",
        "transport",
        "server",
        "per sec",
        "p50 ms",
        "p99 ms",
        "srv CPU ms/hs",
        "cli CPU ms/hs",
        "DB tx/hs"
    );
    for transport in [Transport::Websocket, Transport::Polling] {
        let sockgate = Server::start(&db.url, &[]).await;
        let ceiling = Server::start_ceiling().await;
        // Warm both (first-connection allocations, prepared statements).
        run(&sockgate, transport, &cookies[..50], concurrency, None).await;
        run(&ceiling, transport, &cookies[..50], concurrency, None).await;
        let auth = run(&sockgate, transport, &cookies[..n], concurrency, Some(&db)).await;
        let bare = run(&ceiling, transport, &cookies[..n], concurrency, None).await;
        for (name, r) in [("sockgate", &auth), ("ceiling", &bare)] {
            println!(
                "{:<10} {:<9} {:>10.0} {:>8.2} {:>8.2} {:>13.3} {:>13.3} {:>9}",
                format!("{transport:?}").to_lowercase(),
                name,
                r.rate(),
                r.pct(0.5),
                r.pct(0.99),
                r.server_cpu_ms(),
                r.client_cpu_ms(),
                r.db_xacts.map_or("-".into(), |x| format!("{x:.3}"))
            );
        }
        let ratios = serde_json::json!({
            "rate": auth.rate() / bare.rate(),
            "server_cpu": auth.server_cpu_ms() / bare.server_cpu_ms(),
            "p50": auth.pct(0.5) / bare.pct(0.5),
        });
        println!(
            "{:<10} {:<9} {:>10.2} {:>8.2} {:>8} {:>13.2}   (sockgate / ceiling)",
            "",
            "ratio",
            ratios["rate"].as_f64().unwrap(),
            ratios["p50"].as_f64().unwrap(),
            "",
            ratios["server_cpu"].as_f64().unwrap()
        );
        report.insert(
            format!("{transport:?}").to_lowercase(),
            serde_json::json!({ "sockgate": auth.json(), "ceiling": bare.json(), "ratio": ratios }),
        );
        sockgate.stop();
        ceiling.stop();
    }

    println!("\nidle websocket sockets held open (fresh servers)");
    let sockgate = Server::start(&db.url, &[]).await;
    let auth = idle_memory(&sockgate, &cookies[..idle + 1]).await;
    sockgate.stop();
    let ceiling = Server::start_ceiling().await;
    let bare = idle_memory(&ceiling, &cookies[..idle + 1]).await;
    ceiling.stop();
    for (name, m) in [("sockgate", &auth), ("ceiling", &bare)] {
        println!(
            "{name:<9} {} sockets: RSS {} → {} KiB, {:.2} KiB per socket",
            m["sockets"],
            m["rss_before_kib"],
            m["rss_after_kib"],
            m["kib_per_socket"].as_f64().unwrap()
        );
    }
    report.insert(
        "idle_memory".into(),
        serde_json::json!({ "sockgate": auth, "ceiling": bare }),
    );
    report.insert(
        "config".into(),
        serde_json::json!({ "handshakes": n, "concurrency": concurrency, "idle": idle }),
    );
    support::write_report("handshake", &serde_json::Value::Object(report));
    db.drop_database().await;
}
