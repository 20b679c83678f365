//! Authenticated handshakes against PostgreSQL, over each transport, next to
//! the library's ceiling (the same stack with authentication off):
//! handshakes per second, p50/p99 latency, server CPU per handshake (the
//! server process's own accounting), database transactions per handshake
//! (pg_stat_database), handshakes per session lookup statement (`hs/stmt`,
//! sockgate's /metrics: how much concurrent handshakes share), resident
//! memory per idle websocket socket at 10,000 and per held long-polling
//! socket at 2,000. Each run also prints the CPU the machine's `postgres`
//! processes spent per handshake and, on long-polling, the p50/p99 of each
//! of the handshake's three steps.
//!
//!     cargo bench --bench handshake
//!
//! Knobs: BENCH_HANDSHAKES (5000), BENCH_CONCURRENCY (32), BENCH_IDLE
//! (10000 websocket sockets held), BENCH_IDLE_POLLING (2000 long-polling
//! sockets held), BENCH_ONLY (`handshakes`, `idle` or `polling`: one part
//! of the run), BENCH_TRANSPORT (`websocket` or `polling`: the handshakes
//! over one transport only), BENCH_ROUNDS (1: how many times each server
//! runs the handshakes, the two taking turns to go first; past one, the
//! median of the rounds' ratios is printed too), BENCH_CALLGRIND (`1`: both servers under
//! valgrind's callgrind, and the handshakes also report the server's
//! instructions per handshake, which repeat from run to run where CPU time
//! does not; the times are then meaningless); DATABASE_URL names the PostgreSQL server (default the local
//! `test` database). Writes target/bench-results/handshake.json.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{BenchDb, HandshakeError, Server, env_usize, own_cpu};
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Websocket,
    Polling,
}

enum Held {
    Ws(Box<support::Ws>),
    Polling(String, [Duration; 3]),
}

/// The `q` quantile of `sorted` (nearest rank), in ms.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct Run {
    handshakes: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    server_cpu: Duration,
    /// Server instructions over the run (`BENCH_CALLGRIND`).
    server_instructions: Option<u64>,
    client_cpu: Duration,
    db_xacts: Option<f64>,
    /// Handshakes per session lookup statement (sockgate's /metrics).
    per_statement: Option<f64>,
    /// CPU time of the machine's `postgres` processes over the run (those
    /// alive at its end: a backend that exits during it is not counted).
    db_cpu: Duration,
    /// Long-polling: each handshake's opening GET, CONNECT POST and polls
    /// until the answer, each sorted on its own.
    steps: [Vec<Duration>; 3],
    failed: usize,
}

impl Run {
    fn rate(&self) -> f64 {
        self.handshakes as f64 / self.wall.as_secs_f64()
    }
    fn pct(&self, q: f64) -> f64 {
        percentile_ms(&self.latencies, q)
    }
    fn server_cpu_ms(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1000.0 / self.handshakes as f64
    }
    fn server_instructions(&self) -> Option<f64> {
        self.server_instructions
            .map(|i| i as f64 / self.handshakes as f64)
    }
    fn client_cpu_ms(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1000.0 / self.handshakes as f64
    }
    fn db_cpu_ms(&self) -> f64 {
        self.db_cpu.as_secs_f64() * 1000.0 / self.handshakes as f64
    }
    /// p50 and p99 of each long-polling step, in ms (empty on websocket).
    fn steps_ms(&self) -> Vec<(f64, f64)> {
        self.steps
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| (percentile_ms(v, 0.5), percentile_ms(v, 0.99)))
            .collect()
    }
    fn json(&self) -> serde_json::Value {
        let steps: serde_json::Map<_, _> = ["open", "connect", "answer"]
            .into_iter()
            .zip(self.steps_ms())
            .map(|(step, (p50, p99))| {
                (
                    step.to_owned(),
                    serde_json::json!({ "p50": p50, "p99": p99 }),
                )
            })
            .collect();
        serde_json::json!({
            "handshakes": self.handshakes,
            "failed": self.failed,
            "per_second": self.rate(),
            "p50_ms": self.pct(0.5),
            "p99_ms": self.pct(0.99),
            "server_cpu_ms_per_handshake": self.server_cpu_ms(),
            "client_cpu_ms_per_handshake": self.client_cpu_ms(),
            "db_cpu_ms_per_handshake": self.db_cpu_ms(),
            "polling_steps_ms": steps,
            "server_instructions_per_handshake": self.server_instructions(),
            "db_transactions_per_handshake": self.db_xacts,
            "lookups_per_statement": self.per_statement,
        })
    }
}

/// Committed + rolled-back transactions of the bench database so far; each
/// autocommit statement sockgate sends is one. Backends flush these counters
/// when idle, at most every 10 s, hence the wait.
async fn db_transactions(db: &BenchDb) -> f64 {
    tokio::time::sleep(Duration::from_secs(11)).await;
    let client = support::pg_client(&db.admin).await;
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
    let lookups = async || {
        let m = server.metrics().await;
        (
            m.get("sockgate_session_lookups"),
            m.get("sockgate_session_lookup_statements"),
        )
    };
    let lookups_before = match db {
        Some(_) => Some(lookups().await),
        None => None,
    };
    let sem = std::sync::Arc::new(Semaphore::new(concurrency));
    let addr: SocketAddr = server.addr;
    server.zero_instructions();
    let (cpu0, client0, db0, started) = (
        server.cpu_time(),
        own_cpu(),
        support::postgres_cpu(),
        Instant::now(),
    );
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
                Transport::Polling => support::polling_handshake_timed(&http, &addr, &cookie)
                    .await
                    .map(|(sid, steps)| Held::Polling(sid, steps)),
            };
            drop(permit);
            (t.elapsed(), held)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut held = Vec::with_capacity(tasks.len());
    let mut steps: [Vec<Duration>; 3] = Default::default();
    let mut failed = 0;
    for t in tasks {
        let (latency, result) = t.await.unwrap();
        match result {
            Ok(h) => {
                latencies.push(latency);
                if let Held::Polling(_, taken) = &h {
                    for (all, took) in steps.iter_mut().zip(taken) {
                        all.push(*took);
                    }
                }
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
    let (server_cpu, client_cpu, db_cpu) = (
        server.cpu_time().saturating_sub(cpu0),
        own_cpu().saturating_sub(client0),
        support::postgres_cpu().saturating_sub(db0),
    );
    steps.iter_mut().for_each(|s| s.sort());
    let server_instructions = server.instructions();
    latencies.sort();
    let handshakes = latencies.len();
    let db_xacts = match (db, xacts_before) {
        (Some(db), Some(before)) => Some((db_transactions(db).await - before) / handshakes as f64),
        _ => None,
    };
    let per_statement = match lookups_before {
        Some((looked_up, statements)) => {
            let (l, st) = lookups().await;
            Some((l - looked_up) / (st - statements).max(1.0))
        }
        None => None,
    };
    for h in held {
        match h {
            Held::Ws(ws) => drop(ws),
            Held::Polling(sid, _) => support::polling_close(&http, &addr, &sid).await,
        }
    }
    Run {
        handshakes,
        wall,
        latencies,
        server_cpu,
        server_instructions,
        client_cpu,
        db_xacts,
        per_statement,
        db_cpu,
        steps,
        failed,
    }
}

/// Prints one round's rows for both servers and their ratios; returns the
/// ratios.
fn print_pair(transport: Transport, auth: &Run, bare: &Run) -> serde_json::Value {
    for (name, r) in [("sockgate", auth), ("ceiling", bare)] {
        println!(
            "{:<10} {:<9} {:>10.0} {:>8.2} {:>8.2} {:>13.3} {:>13.3} {:>9} {:>10}",
            format!("{transport:?}").to_lowercase(),
            name,
            r.rate(),
            r.pct(0.5),
            r.pct(0.99),
            r.server_cpu_ms(),
            r.client_cpu_ms(),
            r.db_xacts.map_or("-".into(), |x| format!("{x:.3}")),
            r.per_statement.map_or("-".into(), |x| format!("{x:.1}"))
        );
    }
    for (name, r) in [("sockgate", auth), ("ceiling", bare)] {
        let steps = r.steps_ms();
        let steps = match steps.as_slice() {
            [open, connect, answer] => format!(
                "; p50/p99 ms of the opening GET {:.2}/{:.2}, the CONNECT POST {:.2}/{:.2}, the polls to the answer {:.2}/{:.2}",
                open.0, open.1, connect.0, connect.1, answer.0, answer.1
            ),
            _ => String::new(),
        };
        println!(
            "{:<10} {name:<9} postgres CPU {:.3} ms/hs{steps}",
            "",
            r.db_cpu_ms()
        );
    }
    let mut ratios = serde_json::json!({
        "rate": auth.rate() / bare.rate(),
        "server_cpu": auth.server_cpu_ms() / bare.server_cpu_ms(),
        "p50": auth.pct(0.5) / bare.pct(0.5),
        "p99": auth.pct(0.99) / bare.pct(0.99),
    });
    if let (Some(a), Some(b)) = (auth.server_instructions(), bare.server_instructions()) {
        println!(
            "{:<10} server instructions per handshake (callgrind): sockgate {a:.0}, ceiling {b:.0}, ratio {:.3}",
            "",
            a / b
        );
        ratios["server_instructions"] = (a / b).into();
    }
    print_ratios("ratio", &ratios, "");
    ratios
}

/// One line of sockgate / ceiling ratios, in the table's columns.
fn print_ratios(label: &str, ratios: &serde_json::Value, note: &str) {
    let r = |key: &str| ratios[key].as_f64().unwrap_or(f64::NAN);
    println!(
        "{:<10} {label:<9} {:>10.2} {:>8.2} {:>8.2} {:>13.2}   (sockgate / ceiling{note})",
        "",
        r("rate"),
        r("p50"),
        r("p99"),
        r("server_cpu")
    );
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

/// Answers a long-polling session's pings and keeps one GET pending on the
/// server, as socket.io-client does, until the session ends.
async fn hold_polling(http: reqwest::Client, addr: SocketAddr, sid: String) {
    let url = format!("http://{addr}/socket.io/?EIO=4&transport=polling&sid={sid}");
    loop {
        let Ok(reply) = http.get(&url).send().await else {
            return;
        };
        let Ok(reply) = reply.text().await else {
            return;
        };
        for packet in reply.split('\u{1e}') {
            match packet {
                "2" if http.post(&url).body("3").send().await.is_err() => return,
                "1" | "" => return,
                _ => {}
            }
        }
    }
}

/// Sockets (TCP connections and listeners) the process has open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Resident memory per held long-polling socket: a fresh server, one
/// warm-up socket, then `n` more, each with a GET pending on the server (the
/// long-poll) and its pings answered by POST. Measured once the sockets are
/// up, and again after the header read timeout (10 s) has closed the
/// keep-alive connections left idle by the handshakes' POSTs, so that what
/// remains per socket is the session and the connection of its pending GET.
async fn idle_polling_memory(server: &Server, cookies: &[String]) -> serde_json::Value {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .unwrap();
    let addr = server.addr;
    let mut holders = Vec::with_capacity(cookies.len());
    let warm = support::polling_handshake(&http, &addr, &cookies[0])
        .await
        .expect("warm-up polling socket");
    holders.push(tokio::spawn(hold_polling(http.clone(), addr, warm)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, sockets_before) = (server.rss_kib(), open_sockets(server.pid()));
    let sem = std::sync::Arc::new(Semaphore::new(64));
    let mut opening = Vec::with_capacity(cookies.len());
    for cookie in &cookies[1..] {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (http, cookie) = (http.clone(), cookie.clone());
        opening.push(tokio::spawn(async move {
            let sid = support::polling_handshake(&http, &addr, &cookie).await;
            drop(permit);
            sid.ok()
                .map(|sid| tokio::spawn(hold_polling(http, addr, sid)))
        }));
    }
    let mut connected = 0;
    for o in opening {
        if let Some(h) = o.await.unwrap() {
            holders.push(h);
            connected += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (up, sockets_up) = (server.rss_kib(), open_sockets(server.pid()));
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (settled, sockets_settled) = (server.rss_kib(), open_sockets(server.pid()));
    for h in holders {
        h.abort();
    }
    let per = |kib: u64| kib.saturating_sub(before) as f64 / connected as f64;
    let conns = |n: usize| n.saturating_sub(sockets_before) as f64 / connected as f64;
    serde_json::json!({
        "sockets": connected,
        "rss_before_kib": before,
        "rss_up_kib": up,
        "rss_settled_kib": settled,
        "kib_per_socket_up": per(up),
        "kib_per_socket": per(settled),
        "connections_per_socket_up": conns(sockets_up),
        "connections_per_socket": conns(sockets_settled),
    })
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
    let rounds_wanted = env_usize("BENCH_ROUNDS", 1).max(1);
    let idle = env_usize("BENCH_IDLE", 10_000);
    let db = BenchDb::create().await;
    let cookies = db.insert_sessions(n.max(idle + 1), 3600).await;
    let mut report = serde_json::Map::new();
    let only = std::env::var("BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);

    if part("handshakes") {
        println!(
            "{n} handshakes per run at concurrency {concurrency}, PostgreSQL, 2 cores shared by server, client and database"
        );
        println!(
            "{:<10} {:<9} {:>10} {:>8} {:>8} {:>13} {:>13} {:>9} {:>10}",
            "transport",
            "server",
            "per sec",
            "p50 ms",
            "p99 ms",
            "srv CPU ms/hs",
            "cli CPU ms/hs",
            "DB tx/hs",
            "hs/stmt"
        );
        let transports = [Transport::Websocket, Transport::Polling];
        let chosen = std::env::var("BENCH_TRANSPORT").ok();
        for transport in transports.into_iter().filter(|t| {
            chosen
                .as_deref()
                .is_none_or(|c| format!("{t:?}").eq_ignore_ascii_case(c))
        }) {
            let sockgate = Server::start(&db.url, &[]).await;
            let ceiling = Server::start_ceiling().await;
            // Warm both (first-connection allocations, prepared statements).
            run(&sockgate, transport, &cookies[..50], concurrency, None).await;
            run(&ceiling, transport, &cookies[..50], concurrency, None).await;
            // Rounds alternate which server goes first, so neither always
            // meets the machine as the other left it.
            let mut rounds = Vec::with_capacity(rounds_wanted);
            for round in 0..rounds_wanted {
                if rounds_wanted > 1 {
                    println!("{:<10} round {} of {rounds_wanted}", "", round + 1);
                }
                let (auth, bare) = if round % 2 == 0 {
                    let auth =
                        run(&sockgate, transport, &cookies[..n], concurrency, Some(&db)).await;
                    (
                        auth,
                        run(&ceiling, transport, &cookies[..n], concurrency, None).await,
                    )
                } else {
                    let bare = run(&ceiling, transport, &cookies[..n], concurrency, None).await;
                    (
                        run(&sockgate, transport, &cookies[..n], concurrency, Some(&db)).await,
                        bare,
                    )
                };
                let ratios = print_pair(transport, &auth, &bare);
                rounds.push(serde_json::json!({ "sockgate": auth.json(), "ceiling": bare.json(), "ratio": ratios }));
            }
            let mut entry = rounds.last().cloned().expect("at least one round");
            if rounds_wanted > 1 {
                // The upper of the middle two for an even count; a ratio a
                // round could not measure (no CPU tick on a tiny run) is left out.
                let median = |key: &str| {
                    let mut v: Vec<f64> = rounds
                        .iter()
                        .filter_map(|r| r["ratio"][key].as_f64())
                        .collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                let medians = serde_json::json!({
                    "rate": median("rate"),
                    "p50": median("p50"),
                    "p99": median("p99"),
                    "server_cpu": median("server_cpu"),
                });
                print_ratios(
                    "median",
                    &medians,
                    &format!(", median of {rounds_wanted} rounds"),
                );
                entry["median_ratio"] = medians;
            }
            entry["rounds"] = rounds.into();
            report.insert(format!("{transport:?}").to_lowercase(), entry);
            sockgate.stop();
            ceiling.stop();
        }
    }

    if part("idle") {
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
    }

    if part("polling") {
        let idle_polling = env_usize("BENCH_IDLE_POLLING", 2000).min(cookies.len() - 1);
        println!("\nheld long-polling sockets, a GET pending on each (fresh servers)");
        let sockgate = Server::start(&db.url, &[]).await;
        let auth = idle_polling_memory(&sockgate, &cookies[..idle_polling + 1]).await;
        sockgate.stop();
        let ceiling = Server::start_ceiling().await;
        let bare = idle_polling_memory(&ceiling, &cookies[..idle_polling + 1]).await;
        ceiling.stop();
        for (name, m) in [("sockgate", &auth), ("ceiling", &bare)] {
            println!(
                "{name:<9} {} sockets: RSS {} → {} KiB, {:.2} KiB per socket ({:.2} connections each); \
             after the idle keep-alive connections closed: {} KiB, {:.2} KiB per socket ({:.2} connections each)",
                m["sockets"],
                m["rss_before_kib"],
                m["rss_up_kib"],
                m["kib_per_socket_up"].as_f64().unwrap(),
                m["connections_per_socket_up"].as_f64().unwrap(),
                m["rss_settled_kib"],
                m["kib_per_socket"].as_f64().unwrap(),
                m["connections_per_socket"].as_f64().unwrap(),
            );
        }
        report.insert(
            "idle_polling_memory".into(),
            serde_json::json!({ "sockgate": auth, "ceiling": bare }),
        );
    }
    report.insert(
        "config".into(),
        serde_json::json!({ "handshakes": n, "concurrency": concurrency, "idle": idle, "only": only }),
    );
    support::write_report("handshake", &serde_json::Value::Object(report));
    db.drop_database().await;
}
