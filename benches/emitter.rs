//! The Node app reaching one user's sockets through the official
//! `@socket.io/postgres-emitter`: `io.to("user:N").emit("bench", seq)` to
//! every socket of user N, spread evenly over two sockgate nodes
//! (`ADAPTER=postgres`) on one PostgreSQL. Per round: the time from just
//! before the emitter hands its NOTIFY to `pg` (stamped inside Node) to the
//! last socket receiving the packet; and deliveries per second over all
//! rounds. Run: `cargo bench --bench emitter` (PostgreSQL from DATABASE_URL,
//! default the local `test` database; Node.js and npm, the fixture's packages
//! installed on first use as the tests do).
//!
//! Knobs: BENCH_EMIT_SOCKETS (10000), BENCH_EMIT_ROUNDS (20). Writes
//! target/bench-results/emitter.json.
//!
//! The app is `tests/fixtures/emitters/bench.js`, one long-running Node
//! process reading sequence numbers on stdin, so Node's start-up is not in
//! the number. It and this process stamp with the same clock
//! (CLOCK_MONOTONIC). The sockets are the raw engine.io client of
//! `tests/common/engine_io.rs` (a tokio task each), in this process, on the
//! same cores as both servers and PostgreSQL: their reads are in the number.

mod support;
// The tests' installer of the fixture's npm packages (`npm ci` on first
// use), and its one-shot emit for the warm-up round.
#[allow(dead_code)]
#[path = "../tests/common/node_app.rs"]
mod node_app;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::{BenchDb, Server, env_usize, own_cpu};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// The user every socket belongs to.
const USER: i64 = 42;
/// Rounds before the measured ones: the first through a one-shot
/// `node emit.js` (the tests' path), then through the long-running app.
const WARMUP: usize = 3;
/// A round that has not reached every socket by then is a failure.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
const HANDSHAKE_CONCURRENCY: usize = 64;

/// CLOCK_MONOTONIC in nanoseconds: what Node's `process.hrtime.bigint()`
/// reads, so the two processes' stamps compare.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Room for this many sockets in this process (and in the servers, which
/// inherit the limit): the soft limit on open files raised to the hard one.
fn raise_nofile(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer / in-pointer to an rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    assert!(
        lim.rlim_cur >= needed,
        "open-file limit {} is below the {needed} this bench needs (raise `ulimit -Hn`)",
        lim.rlim_cur
    );
}

/// What the sockets saw in the current round.
struct Round {
    /// The sequence number being sent; any other is counted as stray.
    seq: AtomicU64,
    delivered: AtomicUsize,
    stray: AtomicUsize,
    first_ns: AtomicU64,
    /// Last delivery per node.
    last_ns: [AtomicU64; 2],
    expected: usize,
    all_delivered: Notify,
}

impl Round {
    fn reset(&self, seq: u64) {
        self.delivered.store(0, Ordering::SeqCst);
        self.first_ns.store(u64::MAX, Ordering::SeqCst);
        for l in &self.last_ns {
            l.store(0, Ordering::SeqCst);
        }
        self.seq.store(seq, Ordering::SeqCst);
    }

    fn delivered(&self, node: usize, seq: u64, at: u64) {
        if seq != self.seq.load(Ordering::SeqCst) {
            self.stray.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.first_ns.fetch_min(at, Ordering::SeqCst);
        self.last_ns[node].fetch_max(at, Ordering::SeqCst);
        if self.delivered.fetch_add(1, Ordering::SeqCst) + 1 == self.expected {
            self.all_delivered.notify_one();
        }
    }
}

/// One socket: answers pings and stamps every `bench` event, until the
/// server closes it.
async fn socket(mut ws: support::Ws, node: usize, round: Arc<Round>) {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        if let Some(rest) = t.as_str().strip_prefix("42[\"bench\",") {
            let at = mono_ns();
            let seq = rest.trim_end_matches(']').parse().unwrap_or(u64::MAX);
            round.delivered(node, seq, at);
        } else if t.as_str() == "2" && ws.send(Message::text("3")).await.is_err() {
            break;
        }
    }
}

/// Connects `cookies[i]` to node `i % 2`, at most
/// [`HANDSHAKE_CONCURRENCY`] handshakes at a time.
async fn connect_all(nodes: [SocketAddr; 2], cookies: &[String], round: &Arc<Round>) {
    let sem = Arc::new(Semaphore::new(HANDSHAKE_CONCURRENCY));
    let mut tasks = Vec::with_capacity(cookies.len());
    for (i, cookie) in cookies.iter().enumerate() {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (cookie, round) = (cookie.clone(), round.clone());
        tasks.push(tokio::spawn(async move {
            let node = i % 2;
            let ws = support::handshake(&nodes[node], &cookie).await;
            drop(permit);
            ws.map(|ws| {
                tokio::spawn(socket(ws, node, round));
            })
        }));
    }
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    assert_eq!(
        failed, 0,
        "{failed} sockets failed to connect: {first_error:?}"
    );
}

/// The long-running app: `bench.js`, its stdin and stdout.
struct App {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl App {
    async fn start(db_url: &str) -> App {
        let mut child = tokio::process::Command::new("node")
            .arg(node_app::fixture().join("bench.js"))
            .arg(db_url)
            .arg(format!("user:{USER}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = stdout.next_line().await.unwrap();
        assert_eq!(ready.as_deref(), Some("ready"), "bench.js did not start");
        App {
            child,
            stdin,
            stdout,
        }
    }

    /// Emits `seq`; returns the NOTIFY's stamps (handed to pg, answered).
    async fn emit(&mut self, seq: u64) -> (u64, u64) {
        self.stdin
            .write_all(format!("{seq}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        let line = self
            .stdout
            .next_line()
            .await
            .unwrap()
            .expect("bench.js answers");
        let f: Vec<&str> = line.split(' ').collect();
        assert!(
            f.len() == 4 && f[0] == "sent" && f[1] == seq.to_string(),
            "bench.js: {line}"
        );
        (f[2].parse().unwrap(), f[3].parse().unwrap())
    }
}

/// One round's numbers, in nanoseconds after the NOTIFY was handed to pg.
struct Timing {
    notify_answered: u64,
    first: u64,
    last_node: [u64; 2],
    last: u64,
}

async fn wait_round(round: &Round, seq: u64) {
    if tokio::time::timeout(ROUND_TIMEOUT, round.all_delivered.notified())
        .await
        .is_err()
    {
        panic!(
            "round {seq}: {} of {} sockets got the event in {ROUND_TIMEOUT:?}",
            round.delivered.load(Ordering::SeqCst),
            round.expected
        );
    }
}

async fn measured_round(app: &mut App, round: &Round, seq: u64) -> Timing {
    round.reset(seq);
    let (t0, t1) = app.emit(seq).await;
    wait_round(round, seq).await;
    let last_node = [
        round.last_ns[0].load(Ordering::SeqCst),
        round.last_ns[1].load(Ordering::SeqCst),
    ];
    Timing {
        notify_answered: t1.saturating_sub(t0),
        first: round.first_ns.load(Ordering::SeqCst).saturating_sub(t0),
        last_node: last_node.map(|l| l.saturating_sub(t0)),
        last: last_node[0].max(last_node[1]).saturating_sub(t0),
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// p50 / p90 / max of `xs` (nanoseconds), in milliseconds.
fn summary(mut xs: Vec<u64>) -> [f64; 3] {
    xs.sort_unstable();
    let p = |q: f64| ms(xs[((xs.len() - 1) as f64 * q).round() as usize]);
    [p(0.5), p(0.9), p(1.0)]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let sockets = env_usize("BENCH_EMIT_SOCKETS", 10_000).max(2);
    let rounds = env_usize("BENCH_EMIT_ROUNDS", 20).max(1);
    raise_nofile(sockets as u64 + 1024);

    let db = BenchDb::create().await;
    let cookies = db.insert_sessions_of_user(sockets, USER, 3600).await;
    let adapter = [("ADAPTER", "postgres")];
    let servers = [
        Server::start(&db.url, &adapter).await,
        Server::start(&db.url, &adapter).await,
    ];
    let nodes = [servers[0].addr, servers[1].addr];
    // Let the nodes' first heartbeats meet and their listeners LISTEN.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = servers.each_ref().map(Server::rss_kib);

    let round = Arc::new(Round {
        seq: AtomicU64::new(u64::MAX),
        delivered: AtomicUsize::new(0),
        stray: AtomicUsize::new(0),
        first_ns: AtomicU64::new(u64::MAX),
        last_ns: [AtomicU64::new(0), AtomicU64::new(0)],
        expected: sockets,
        all_delivered: Notify::new(),
    });
    let connecting = std::time::Instant::now();
    connect_all(nodes, &cookies, &round).await;
    println!(
        "{sockets} sockets of user {USER} connected ({} + {}) in {:.1} s",
        sockets.div_ceil(2),
        sockets / 2,
        connecting.elapsed().as_secs_f64()
    );

    // Warm-up: once through the tests' one-shot emit.js (installs the npm
    // packages on first use), then through the long-running app.
    round.reset(0);
    node_app::emit(
        &db.url,
        &json!({"op": "emit", "to": [format!("user:{USER}")], "event": "bench", "args": [0]}),
    )
    .await;
    wait_round(&round, 0).await;
    let mut app = App::start(&db.url).await;
    for seq in 1..WARMUP as u64 {
        measured_round(&mut app, &round, seq).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = servers.each_ref().map(Server::rss_kib);
    let cpu_before = servers.each_ref().map(Server::cpu_time);
    let client_cpu_before = own_cpu();

    let mut timings = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let seq = (WARMUP + r) as u64;
        timings.push(measured_round(&mut app, &round, seq).await);
        // Let each socket's reads finish before the next round.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = servers
        .each_ref()
        .map(Server::cpu_time)
        .iter()
        .zip(cpu_before)
        .map(|(after, before)| (*after - before).as_secs_f64() * 1000.0 / rounds as f64)
        .collect::<Vec<_>>();
    let client_cpu = (own_cpu() - client_cpu_before).as_secs_f64() * 1000.0 / rounds as f64;
    let rss_after = servers.each_ref().map(Server::rss_kib);
    let stray = round.stray.load(Ordering::SeqCst);
    assert_eq!(stray, 0, "{stray} deliveries of another round's event");
    let applied = [servers[0].metrics().await, servers[1].metrics().await]
        .map(|m| m.get("sockgate_emitter_applied_total"));

    let busy: u64 = timings.iter().map(|t| t.last).sum();
    let per_sec = (sockets * rounds) as f64 / (busy as f64 / 1e9);
    let rows = [
        (
            "NOTIFY answered (in Node)",
            summary(timings.iter().map(|t| t.notify_answered).collect()),
        ),
        (
            "first delivery",
            summary(timings.iter().map(|t| t.first).collect()),
        ),
        (
            "last delivery, node A",
            summary(timings.iter().map(|t| t.last_node[0]).collect()),
        ),
        (
            "last delivery, node B",
            summary(timings.iter().map(|t| t.last_node[1]).collect()),
        ),
        (
            "last delivery (both nodes)",
            summary(timings.iter().map(|t| t.last).collect()),
        ),
    ];
    println!(
        "io.to(\"user:{USER}\").emit through @socket.io/postgres-emitter to {sockets} sockets on 2 nodes, {rounds} rounds"
    );
    println!("| from just before the NOTIFY to | p50 ms | p90 ms | max ms |");
    println!("| --- | --- | --- | --- |");
    for (what, [p50, p90, max]) in &rows {
        println!("| {what} | {p50:.1} | {p90:.1} | {max:.1} |");
    }
    println!(
        "deliveries/s: {per_sec:.0} ({sockets} sockets x {rounds} rounds / {:.3} s from NOTIFY to last delivery, summed)",
        busy as f64 / 1e9
    );
    println!(
        "CPU per round: node A {:.1} ms, node B {:.1} ms, the bench's sockets {client_cpu:.1} ms",
        cpu[0], cpu[1]
    );
    for (i, name) in ["A", "B"].iter().enumerate() {
        println!(
            "node {name} RSS: {:.1} MiB idle, {:.1} MiB with its sockets, {:.1} MiB after the rounds; {} operations applied",
            mib(rss_idle[i]),
            mib(rss_before[i]),
            mib(rss_after[i]),
            applied[i]
        );
    }
    let [p50_last, p90_last, max_last] = rows[4].1;
    println!(
        "README: | {sockets} | {rounds} | {:.1} | {p50_last:.1} | {p90_last:.1} | {per_sec:.0} |",
        rows[1].1[0]
    );

    let report = json!({
        "sockets": sockets,
        "rounds": rounds,
        "deliveries_per_sec": per_sec,
        "ms": rows.iter().map(|(what, [p50, p90, max])| json!({
            "what": what, "p50": p50, "p90": p90, "max": max
        })).collect::<Vec<_>>(),
        "last_delivery_ms": { "p50": p50_last, "p90": p90_last, "max": max_last },
        "server_cpu_ms_per_round": cpu,
        "client_cpu_ms_per_round": client_cpu,
        "rss_kib": { "idle": rss_idle, "with_sockets": rss_before, "after": rss_after },
        "applied": applied,
    });
    support::write_report("emitter", &report);
    drop(app.stdin);
    let _ = app.child.wait().await;
    for s in servers {
        s.stop();
    }
    db.drop_database().await;
}
