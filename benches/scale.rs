//! One node at scale (issue #17, goals 3 and 4), against PostgreSQL.
//!
//! **Idle scale**: N authenticated websocket sockets held on one sockgate
//! node (the client spreads its connections over loopback source addresses
//! 127.0.0.2, 127.0.0.3, ..., 10,000 each, so ephemeral ports do not run
//! out; 256 handshakes in flight), then: connect time and rate, server RSS
//! per socket, the server's idle CPU (% of one core) over a window of one
//! ping interval + 5 s with heartbeats running and no re-check tick in it,
//! one re-check tick over all N sessions (wall time, database time and
//! queries, from the server's /metrics), and an admin's guest lock: request
//! → `guest:locked` at each of the guest's 3 sockets → their close. The same
//! is run at N/10 first (fresh server, same database), so per-socket figures
//! at both sizes show whether anything grows worse than linearly; then which
//! limit the machine hits first (file descriptors, memory, CPU), from the
//! measured figures.
//!
//! **Reconnect storm**: the N-socket server is killed and a new one started
//! on the same address; BENCH_STORM_CLIENTS clients (each its own session,
//! from 127.0.1.x, 2,000 an address) all connect at once with at most
//! BENCH_STORM_IN_FLIGHT handshakes in flight. A client refused with
//! `Service unavailable` retries after 100-500 ms (uniform jitter), until
//! connected or 120 s; any other refusal is a failure. Reports time to
//! all-connected, refusals by message, whether the server survived, and the
//! pool after: a fresh handshake, /readyz (a query through the pool), and
//! the pool, handshake and audit figures of /metrics.
//!
//!     cargo bench --bench scale       # 100,000 sockets, storm of 20,000 at 2,000 in flight
//!     BENCH_SCALE_SOCKETS=2000 BENCH_STORM_CLIENTS=2000 BENCH_STORM_IN_FLIGHT=500 cargo bench --bench scale
//!
//! Knobs: BENCH_SCALE_SOCKETS (100000), BENCH_STORM_CLIENTS (20000),
//! BENCH_STORM_IN_FLIGHT (2000), BENCH_SCALE_CHECK_SECS (40: the server's
//! SESSION_CHECK_INTERVAL; it must leave the idle window, ping interval + 5 s,
//! between two ticks, which come every interval ±10%). DATABASE_URL names the
//! PostgreSQL server (default the local `test` database); the server's other
//! settings (ADAPTER, DB_MAX_CONNECTIONS, DB_ACQUIRE_TIMEOUT_MS) come from
//! the environment, else their defaults. The bench raises its open-file limit
//! (soft and hard; beyond the hard limit that takes CAP_SYS_RESOURCE) to
//! max(N, storm) + BENCH_SCALE_FD_MARGIN (10000) before starting the
//! servers, which inherit it, and exits saying what it needs when it cannot.
//! Writes target/bench-results/scale.json.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::{BenchDb, HandshakeError, Server, Ws, env_usize, own_cpu};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// User 0 is the admin of organization 1; user 7 its guest (guest id 7),
/// holding 3 of the N sockets (its bulk session and two more).
const ADMIN_USER: usize = 0;
const GUEST_USER: usize = 7;
const GUEST_SOCKETS: usize = 3;
/// The probe after the storm: a session no storm client uses.
const PROBE_USER: i64 = 1_000_000_000;
/// Idle sockets per loopback source address (127.0.0.x).
const PER_SOURCE: usize = 10_000;
/// Storm clients per source address (127.0.1.x): room for a dozen retries
/// each within TIME_WAIT's 60 s, should a client end up closing first.
const STORM_PER_SOURCE: usize = 2_000;
const IN_FLIGHT: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const STORM_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
const STORM_DEADLINE: Duration = Duration::from_secs(120);
/// The handshake's connect_error when the session store is unavailable
/// (`session::auth::AuthError::StoreUnavailable`).
const SERVICE_UNAVAILABLE: &str = "Service unavailable";

const TICKS: &str = "sockgate_revalidation_ticks_total";
const QUERIES: &str = "sockgate_revalidation_queries_total";
const TICK_SESSIONS: &str = "sockgate_revalidation_last_tick_sessions";
const TICK_DB: &str = "sockgate_revalidation_last_tick_db_seconds";
const TICK_WALL: &str = "sockgate_revalidation_last_tick_seconds";
const LIVE: &str = "sockgate_live_sockets";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A `/proc/meminfo` field, in KiB.
fn meminfo_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn nofile() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim
}

/// Raises RLIMIT_NOFILE (soft and hard) to at least `needed`, before any
/// server starts (the servers inherit it); exits saying what is needed when
/// the system refuses. Returns the limits found.
fn raise_nofile(needed: u64) -> libc::rlimit {
    let found = nofile();
    if found.rlim_cur >= needed {
        return found;
    }
    let want = libc::rlimit {
        rlim_cur: needed,
        rlim_max: found.rlim_max.max(needed),
    };
    // SAFETY: a valid in-pointer.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) };
    if rc != 0 || nofile().rlim_cur < needed {
        let err = std::io::Error::last_os_error();
        eprintln!(
            "scale bench: needs an open-file limit (RLIMIT_NOFILE) of at least {needed} \
             (max(BENCH_SCALE_SOCKETS, BENCH_STORM_CLIENTS) + BENCH_SCALE_FD_MARGIN) for \
             itself and the server it starts; found soft {} / hard {}, and raising it failed \
             ({err}). Raising the hard limit takes CAP_SYS_RESOURCE (root in a container may \
             lack it: see CapEff in /proc/self/status, bit 24): run with it, or \
             `ulimit -Hn {needed}; ulimit -n {needed}` first (fs.nr_open is {}), or lower \
             BENCH_SCALE_SOCKETS / BENCH_STORM_CLIENTS / BENCH_SCALE_FD_MARGIN.",
            found.rlim_cur,
            found.rlim_max,
            read_u64("/proc/sys/fs/nr_open").unwrap_or(0),
        );
        std::process::exit(2);
    }
    found
}

/// Organization 1 with user 0 its admin and user 7 its (unlocked) guest 7.
async fn setup_org(url: &str) -> tokio_postgres::Client {
    let client = support::pg_client(url).await;
    client
        .batch_execute(&format!(
            "INSERT INTO sockgate.app_user (id, username, created_at) VALUES
               ('{ADMIN_USER}', 'admin', now()), ('{GUEST_USER}', 'guest', now());
             INSERT INTO sockgate.organization (id, name, created_at) VALUES (1, 'bench', now());
             INSERT INTO sockgate.member (organization_id, user_id, role) VALUES (1, '{ADMIN_USER}', 'admin');
             INSERT INTO sockgate.guest (id, user_id, organization_id, soft_locked, created_at)
               VALUES ({GUEST_USER}, '{GUEST_USER}', 1, false, now());"
        ))
        .await
        .unwrap();
    client
}

/// Undoes the admin's lock, so the next server's sockets of user 7 connect.
async fn unlock_guest(db: &tokio_postgres::Client) {
    db.batch_execute(&format!(
        "UPDATE sockgate.guest SET soft_locked = false, locked_at = NULL, lock_reason = NULL \
         WHERE id = {GUEST_USER}"
    ))
    .await
    .unwrap();
}

/// Waits until the server counts `n` live sockets.
async fn wait_live(server: &Server, n: usize, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let live = server.metrics().await.get(LIVE);
        if live as usize == n || Instant::now() > deadline {
            return live;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Tick {
    wall_ms: f64,
    db_ms: f64,
    queries: f64,
    /// The ticks counter when the tick had ended.
    ticks: f64,
}

/// The next re-check tick to finish over exactly `sessions` sessions. The
/// ticks counter moves when a tick starts and the gauges when it ends; ticks
/// are ≥ 0.9 × the interval apart, far more than the 200 ms between polls.
async fn full_tick(server: &Server, sessions: usize, within: Duration) -> Tick {
    let deadline = Instant::now() + within;
    let mut base = server.metrics().await;
    loop {
        assert!(
            Instant::now() < deadline,
            "no re-check tick over {sessions} sessions within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = server.metrics().await;
        let started = m.get(TICKS) - base.get(TICKS);
        if started != 1.0 {
            // None started since `base` (or two did): start over from here.
            base = m;
            continue;
        }
        let ended = [TICK_WALL, TICK_DB, TICK_SESSIONS]
            .iter()
            .any(|g| m.get(g) != base.get(g));
        if !ended {
            continue;
        }
        if m.get(TICK_SESSIONS) as usize == sessions {
            return Tick {
                wall_ms: m.get(TICK_WALL) * 1000.0,
                db_ms: m.get(TICK_DB) * 1000.0,
                queries: m.get(QUERIES) - base.get(QUERIES),
                ticks: m.get(TICKS),
            };
        }
        base = m;
    }
}

/// One of the guest's sockets: answers pings; when `guest:locked` came and
/// when the server closed the socket.
async fn watch(mut ws: Ws) -> (Option<Instant>, Instant) {
    let mut told = None;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) if t.as_str() == "2" => {
                let _ = ws.send(Message::text("3")).await;
            }
            Ok(Message::Text(t)) if t.starts_with("42[\"guest:locked\"") => {
                told.get_or_insert_with(Instant::now);
            }
            Ok(Message::Text(t)) if t.as_str() == "41" => return (told, Instant::now()),
            Ok(Message::Close(_)) | Err(_) => return (told, Instant::now()),
            _ => {}
        }
    }
    (told, Instant::now())
}

/// Phase A at one size; the server and the client's socket tasks are
/// handed back with the figures.
struct Idle {
    report: serde_json::Value,
    server: Server,
    held: Vec<JoinHandle<()>>,
}

struct IdleArgs<'a> {
    db_url: &'a str,
    env: &'a [(&'a str, &'a str)],
    size: usize,
    bulk: &'a [String],
    guest: &'a [String],
    admin: &'a str,
    check_interval: Duration,
    pg: &'a tokio_postgres::Client,
}

async fn idle_scale(a: IdleArgs<'_>) -> Idle {
    let size = a.size;
    println!("\n== idle scale: {size} sockets ==");
    let mut server = Server::start(a.db_url, a.env).await;
    let (ping_interval, ping_timeout) =
        support::heartbeat(&server.addr, a.admin, support::loopback_source(2, 0, 1)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_kib();
    let fds_before = server.open_fds();
    let slab_before = meminfo_kib("Slab");

    // The guest's bulk session is one of its three watched sockets.
    let cookies: Vec<String> = a.bulk[..size - (GUEST_SOCKETS - 1)]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != GUEST_USER)
        .map(|(_, c)| c.clone())
        .collect();
    let started = Instant::now();
    let results = support::connect_many_from(
        &server.addr,
        &cookies,
        IN_FLIGHT,
        |i| support::loopback_source(0, i, PER_SOURCE),
        HANDSHAKE_TIMEOUT,
    )
    .await;
    let mut watchers = Vec::new();
    let guest_cookies = std::iter::once(&a.bulk[GUEST_USER]).chain(a.guest);
    for (k, cookie) in guest_cookies.enumerate() {
        let ws = support::handshake_from(&server.addr, cookie, support::loopback_source(3, k, 1))
            .await
            .expect("the guest connects");
        watchers.push(tokio::spawn(watch(ws)));
    }
    let connect_time = started.elapsed();
    let mut held = Vec::with_capacity(results.len());
    let mut failures = BTreeMap::<String, usize>::new();
    for r in results {
        match r {
            Ok(h) => held.push(h),
            Err(e) => *failures.entry(e).or_default() += 1,
        }
    }
    let connected = held.len() + watchers.len();
    let rate = connected as f64 / connect_time.as_secs_f64();
    println!(
        "connected {connected}/{size} in {connect_time:.2?} ({rate:.0}/s, {IN_FLIGHT} in flight, \
         sources 127.0.0.2-127.0.0.{}), failures: {failures:?}",
        2 + (size - 1) / PER_SOURCE
    );
    assert_eq!(connected, size, "every socket authenticated: {failures:?}");
    let live = wait_live(&server, size, Duration::from_secs(10)).await;
    assert_eq!(live as usize, size, "the server counts every socket");

    let tick_within = a.check_interval.mul_f64(2.2) + Duration::from_secs(30);
    let tick = full_tick(&server, size, tick_within).await;
    println!(
        "re-check tick over {size} sessions: wall {:.1} ms, db {:.1} ms, {} queries",
        tick.wall_ms, tick.db_ms, tick.queries
    );

    // Idle: right after a tick, one ping interval + 5 s, no scrape in it.
    let window = ping_interval + Duration::from_secs(5);
    let (cpu0, own0, t0) = (server.cpu_time(), own_cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let (cpu1, own1, elapsed) = (server.cpu_time(), own_cpu(), t0.elapsed());
    if let Some(status) = server.exit_status() {
        panic!("the server exited during the idle window: {status}");
    }
    let rss_after = server.rss_kib();
    let fds_after = server.open_fds();
    let slab_after = meminfo_kib("Slab");
    let ticks_in_window = server.metrics().await.get(TICKS) - tick.ticks;
    let idle_pct = (cpu1 - cpu0).as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let client_pct = (own1 - own0).as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let kib_per_socket = rss_after.saturating_sub(rss_before) as f64 / size as f64;
    if ticks_in_window > 0.0 {
        println!(
            "NOTE: the idle window had a re-check tick in it: raise BENCH_SCALE_CHECK_SECS \
             above (pingInterval + 5 s) / 0.9"
        );
    }
    println!(
        "idle over {elapsed:.1?} (pingInterval {ping_interval:?}, pingTimeout {ping_timeout:?}; \
         {ticks_in_window} re-check ticks in it): server {idle_pct:.2}% of one core, \
         client {client_pct:.2}%"
    );
    println!(
        "server RSS {rss_before} KiB -> {rss_after} KiB ({kib_per_socket:.2} KiB per socket); \
         fds {fds_before} -> {fds_after}; kernel Slab {slab_before} -> {slab_after} KiB"
    );

    // The admin locks the guest: request → guest:locked → close. The
    // client is built first: its first build loads TLS roots (tens of ms),
    // which is the bench's cost, not the server's.
    let http = reqwest::Client::new();
    let t = Instant::now();
    let resp = http
        .post(format!(
            "http://{}/api/admin/guest/{GUEST_USER}/disconnect",
            server.addr
        ))
        .header("Cookie", format!("connect.sid={}", a.admin))
        .send()
        .await
        .unwrap();
    let answered = t.elapsed();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(body["disconnected"], GUEST_SOCKETS, "{body}");
    let mut told = Vec::new();
    let mut closed = Vec::new();
    for w in watchers {
        let (notice, close) = w.await.unwrap();
        told.push(notice.expect("guest:locked before the close") - t);
        closed.push(close - t);
    }
    told.sort();
    closed.sort();
    println!(
        "guest lock: response {:.1} ms, guest:locked at {GUEST_SOCKETS} sockets {:.1}-{:.1} ms, \
         last close {:.1} ms",
        ms(answered),
        ms(told[0]),
        ms(told[GUEST_SOCKETS - 1]),
        ms(closed[GUEST_SOCKETS - 1])
    );
    unlock_guest(a.pg).await;
    let live_after = wait_live(&server, size - GUEST_SOCKETS, Duration::from_secs(5)).await;
    assert_eq!(
        live_after as usize,
        size - GUEST_SOCKETS,
        "only the guest's sockets were closed"
    );

    let report = json!({
        "sockets": size,
        "connect_s": connect_time.as_secs_f64(),
        "handshakes_per_s": rate,
        "connect_failures": failures,
        "ping_interval_ms": ms(ping_interval),
        "ping_timeout_ms": ms(ping_timeout),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "kib_per_socket": kib_per_socket,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "server_nofile_limit": server.nofile_limit(),
        "slab_kib_before": slab_before,
        "slab_kib_after": slab_after,
        "idle_window_s": elapsed.as_secs_f64(),
        "idle_ticks_in_window": ticks_in_window,
        "idle_cpu_pct_one_core": idle_pct,
        "idle_cpu_us_per_socket_per_s": idle_pct / 100.0 * 1e6 / size as f64,
        "client_cpu_pct_one_core": client_pct,
        "tick_wall_ms": tick.wall_ms,
        "tick_db_ms": tick.db_ms,
        "tick_queries": tick.queries,
        "tick_wall_ms_per_1000": tick.wall_ms * 1000.0 / size as f64,
        "tick_db_ms_per_1000": tick.db_ms * 1000.0 / size as f64,
        "lock_response_ms": ms(answered),
        "lock_first_notice_ms": ms(told[0]),
        "lock_last_notice_ms": ms(told[GUEST_SOCKETS - 1]),
        "lock_last_close_ms": ms(closed[GUEST_SOCKETS - 1]),
    });
    Idle {
        report,
        server,
        held,
    }
}

/// Kills the server and ends the client's sockets (their descriptors
/// closed before the next phase opens more).
async fn tear_down(server: Server, held: Vec<JoinHandle<()>>) {
    server.stop();
    for h in &held {
        h.abort();
    }
    for h in held {
        let _ = h.await;
    }
}

#[derive(Default)]
struct StormClient {
    connected_at: Option<Duration>,
    hold: Option<JoinHandle<()>>,
    attempts: u32,
    unavailable: u32,
    /// Refusals other than Service unavailable (the packet as sent).
    unexpected: Vec<String>,
    transport: Vec<String>,
    timeouts: u32,
}

/// The `message` of a CONNECT_ERROR packet (`44{"message":...}`).
fn refusal_message(packet: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(packet.strip_prefix("44")?).ok()?;
    v["message"].as_str().map(str::to_owned)
}

/// One client of the storm: connects, retrying after `Service unavailable`
/// (and transport failures) as socket.io-client's reconnection does, with
/// 100-500 ms of jittered backoff, until connected or `deadline`.
async fn storm_client(
    addr: SocketAddr,
    cookie: String,
    local: IpAddr,
    in_flight: Arc<Semaphore>,
    started: Instant,
    deadline: Instant,
) -> StormClient {
    let mut c = StormClient::default();
    while Instant::now() < deadline {
        let permit = in_flight.acquire().await.unwrap();
        c.attempts += 1;
        let res = tokio::time::timeout(
            STORM_HANDSHAKE_TIMEOUT,
            support::handshake_from(&addr, &cookie, local),
        )
        .await;
        drop(permit);
        match res {
            Ok(Ok(ws)) => {
                c.connected_at = Some(started.elapsed());
                c.hold = Some(tokio::spawn(support::hold(ws)));
                return c;
            }
            Ok(Err(HandshakeError::Refused(packet))) => {
                if refusal_message(&packet).as_deref() == Some(SERVICE_UNAVAILABLE) {
                    c.unavailable += 1;
                } else {
                    c.unexpected.push(packet);
                    return c;
                }
            }
            Ok(Err(HandshakeError::Transport(e))) => c.transport.push(e),
            Err(_) => c.timeouts += 1,
        }
        let backoff = rand::random_range(100..=500);
        tokio::time::sleep(Duration::from_millis(backoff)).await;
    }
    c
}

struct StormArgs<'a> {
    db_url: &'a str,
    env: &'a [(&'a str, &'a str)],
    addr: SocketAddr,
    cookies: &'a [String],
    probe: &'a str,
    in_flight: usize,
}

async fn storm(a: StormArgs<'_>) -> (serde_json::Value, bool) {
    let clients = a.cookies.len();
    println!(
        "\n== reconnect storm: {clients} clients, {} in flight, after a restart ==",
        a.in_flight
    );
    let t = Instant::now();
    let mut server = Server::start_at(a.addr, a.db_url, a.env).await;
    let restart = t.elapsed();
    println!("new server on {} listening after {restart:.2?}", a.addr);

    let sem = Arc::new(Semaphore::new(a.in_flight));
    let started = Instant::now();
    let deadline = started + STORM_DEADLINE;
    let cpu0 = server.cpu_time();
    let tasks: Vec<_> = a
        .cookies
        .iter()
        .enumerate()
        .map(|(i, cookie)| {
            tokio::spawn(storm_client(
                a.addr,
                cookie.clone(),
                support::loopback_source(1, i, STORM_PER_SOURCE),
                sem.clone(),
                started,
                deadline,
            ))
        })
        .collect();
    let mut results = Vec::with_capacity(clients);
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let storm_time = started.elapsed();
    let storm_cpu = server.cpu_time().saturating_sub(cpu0);

    let connected = results.iter().filter(|c| c.connected_at.is_some()).count();
    let all_connected = (connected == clients)
        .then(|| results.iter().filter_map(|c| c.connected_at).max())
        .flatten();
    let mut times: Vec<Duration> = results.iter().filter_map(|c| c.connected_at).collect();
    times.sort();
    let pct = |q: f64| {
        times
            .get(((times.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or(0.0, |d| ms(*d))
    };
    let attempts: u64 = results.iter().map(|c| c.attempts as u64).sum();
    let unavailable: u64 = results.iter().map(|c| c.unavailable as u64).sum();
    let refused_clients = results.iter().filter(|c| c.unavailable > 0).count();
    let timeouts: u64 = results.iter().map(|c| c.timeouts as u64).sum();
    let mut refusals = BTreeMap::<String, u64>::new();
    if unavailable > 0 {
        refusals.insert(SERVICE_UNAVAILABLE.to_owned(), unavailable);
    }
    let mut unexpected = BTreeMap::<String, u64>::new();
    let mut transport = BTreeMap::<String, u64>::new();
    for c in &results {
        for p in &c.unexpected {
            *unexpected.entry(p.clone()).or_default() += 1;
            let m = refusal_message(p).unwrap_or_else(|| p.clone());
            *refusals.entry(m).or_default() += 1;
        }
        for e in &c.transport {
            *transport.entry(e.clone()).or_default() += 1;
        }
    }
    println!(
        "storm over in {storm_time:.2?}: connected {connected}/{clients}, all connected after {}; \
         {attempts} handshakes tried, refusals {refusals:?} ({refused_clients} clients refused at \
         least once), transport errors {}, timeouts {timeouts}; server CPU {storm_cpu:.2?}",
        all_connected.map_or("-".to_owned(), |d| format!("{d:.2?}")),
        transport.values().sum::<u64>(),
    );
    for (p, n) in &unexpected {
        println!("FAILURE: refused {n}x with {p} (only {SERVICE_UNAVAILABLE} is allowed)");
    }
    for (e, n) in transport.iter().take(10) {
        println!("FAILURE: transport error {n}x: {e}");
    }

    // Alive, and the pool healthy after.
    let alive = server.exit_status();
    println!(
        "server process: {}",
        alive.map_or("alive".to_owned(), |s| format!("EXITED ({s})"))
    );
    let (mut probe_ms, mut ready, mut metrics_after) = (None, None, serde_json::Map::new());
    if alive.is_none() {
        let live = wait_live(&server, connected, Duration::from_secs(5)).await;
        let t = Instant::now();
        let resp = reqwest::get(format!("http://{}/readyz", a.addr)).await;
        ready = Some((
            resp.map(|r| r.status().as_u16()).unwrap_or(0),
            ms(t.elapsed()),
        ));
        let t = Instant::now();
        let probe = tokio::time::timeout(
            Duration::from_secs(10),
            support::handshake_from(&a.addr, a.probe, support::loopback_source(2, 1, 1)),
        )
        .await;
        match probe {
            Ok(Ok(ws)) => {
                probe_ms = Some(ms(t.elapsed()));
                drop(ws);
            }
            other => println!("FAILURE: the handshake after the storm: {other:?}"),
        }
        let m = server.metrics().await;
        let mut keys: Vec<_> =
            m.0.iter()
                .filter(|(k, _)| {
                    [
                        "sockgate_handshakes_total",
                        "sockgate_limit_refusals_total",
                        "sockgate_audit_",
                        "sockgate_panics_total",
                        "sockgate_revalidation_failed_ticks_total",
                        "sockgate_db_pool_",
                    ]
                    .iter()
                    .any(|p| k.starts_with(p))
                })
                .collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        metrics_after.insert(LIVE.into(), json!(live));
        for (k, v) in keys {
            metrics_after.insert(k.clone(), json!(v));
        }
        println!(
            "pool after: /readyz {} in {:.1} ms (a query through the pool); a fresh handshake {}; \
             live sockets {live} (connected {connected}); /metrics:",
            ready.map_or(0, |r| r.0),
            ready.map_or(0.0, |r| r.1),
            probe_ms.map_or("FAILED".to_owned(), |p| format!("{p:.1} ms")),
        );
        for (k, v) in &metrics_after {
            println!("    {k} {v}");
        }
    }
    let healthy = alive.is_none()
        && probe_ms.is_some()
        && ready.is_some_and(|(s, _)| s == 200)
        && unexpected.is_empty()
        && transport.is_empty()
        && timeouts == 0
        && connected == clients;

    let report = json!({
        "clients": clients,
        "in_flight": a.in_flight,
        "restart_to_listening_s": restart.as_secs_f64(),
        "storm_s": storm_time.as_secs_f64(),
        "connected": connected,
        "all_connected_s": all_connected.map(|d| d.as_secs_f64()),
        "connected_p50_ms": pct(0.5),
        "connected_p99_ms": pct(0.99),
        "handshakes_tried": attempts,
        "refusals": refusals,
        "unexpected_refusals": unexpected,
        "clients_refused_at_least_once": refused_clients,
        "transport_errors": transport,
        "timeouts": timeouts,
        "server_cpu_s": storm_cpu.as_secs_f64(),
        "server_alive": alive.is_none(),
        "readyz": ready.map(|(s, t)| json!({ "status": s, "ms": t })),
        "probe_handshake_ms": probe_ms,
        "metrics_after": metrics_after,
    });
    let held: Vec<JoinHandle<()>> = results.into_iter().filter_map(|c| c.hold).collect();
    tear_down(server, held).await;
    (report, healthy)
}

#[tokio::main]
async fn main() {
    let sockets = env_usize("BENCH_SCALE_SOCKETS", 100_000);
    let storm_clients = env_usize("BENCH_STORM_CLIENTS", 20_000);
    let storm_in_flight = env_usize("BENCH_STORM_IN_FLIGHT", 2_000);
    let check_interval = Duration::from_secs(env_usize("BENCH_SCALE_CHECK_SECS", 40) as u64);
    assert!(
        sockets >= 100,
        "BENCH_SCALE_SOCKETS of at least 100 (the small run, N/10, holds the guest's sockets)"
    );
    let margin = env_usize("BENCH_SCALE_FD_MARGIN", 10_000);
    let needed = (sockets.max(storm_clients) + margin) as u64;
    let found = raise_nofile(needed);
    let limit = nofile();
    let mem_total = meminfo_kib("MemTotal");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let setting = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
    let check = format!("{}s", check_interval.as_secs());
    let env = [
        ("SESSION_CHECK_INTERVAL", check.as_str()),
        ("SESSION_REFRESH_WINDOW", "0s"),
    ];
    println!(
        "open files: soft {} / hard {} found, {} / {} in effect (needed {needed}); \
         MemTotal {mem_total} KiB; {cores} cores",
        found.rlim_cur, found.rlim_max, limit.rlim_cur, limit.rlim_max
    );
    println!(
        "server: SESSION_CHECK_INTERVAL={check}, SESSION_REFRESH_WINDOW=0s, ADAPTER={}, \
         DB_MAX_CONNECTIONS={}, DB_ACQUIRE_TIMEOUT_MS={}, per-client limits off",
        setting("ADAPTER", "auto (postgres)"),
        setting("DB_MAX_CONNECTIONS", "10"),
        setting("DB_ACQUIRE_TIMEOUT_MS", "2000"),
    );

    let db = BenchDb::create().await;
    // Session i is of user i; the guest's two more and the probe's are
    // their own users' sessions.
    let bulk = db
        .insert_sessions((sockets - (GUEST_SOCKETS - 1)).max(storm_clients), 3 * 3600)
        .await;
    let guest = db
        .insert_sessions_of_user(GUEST_SOCKETS - 1, GUEST_USER as i64, 3 * 3600)
        .await;
    let probe = db.insert_sessions_of_user(1, PROBE_USER, 3 * 3600).await;
    let pg = setup_org(&db.url).await;
    pg.batch_execute("ANALYZE \"session\"").await.unwrap();

    let mut idle = Vec::new();
    let mut last = None;
    for size in [sockets / 10, sockets] {
        let run = idle_scale(IdleArgs {
            db_url: &db.url,
            env: &env,
            size,
            bulk: &bulk,
            guest: &guest,
            admin: &bulk[ADMIN_USER],
            check_interval,
            pg: &pg,
        })
        .await;
        idle.push(run.report);
        if size == sockets {
            last = Some((run.server, run.held));
        } else {
            tear_down(run.server, run.held).await;
        }
    }
    let (server, held) = last.unwrap();
    let addr = server.addr;
    println!("\nkilling the server with {sockets} sockets");
    tear_down(server, held).await;
    let (storm_report, storm_ok) = storm(StormArgs {
        db_url: &db.url,
        env: &env,
        addr,
        cookies: &bulk[..storm_clients],
        probe: &probe[0],
        in_flight: storm_in_flight,
    })
    .await;
    drop(pg);
    db.drop_database().await;

    // Which limit comes first, from the figures at N.
    let (small, big) = (&idle[0], &idle[1]);
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let fds_before = f(big, "fds_before");
    let fds_per_socket = (f(big, "fds_after") - fds_before) / sockets as f64;
    let nr_open = read_u64("/proc/sys/fs/nr_open").unwrap_or(0);
    let by_fds = |lim: u64| ((lim as f64 - fds_before) / fds_per_socket).max(0.0);
    let kib = f(big, "kib_per_socket");
    let rss_at_n = f(big, "rss_kib_after");
    let by_memory = (mem_total as f64 - f(big, "rss_kib_before")) / kib;
    let slab_per_conn = (f(big, "slab_kib_after") - f(big, "slab_kib_before")) / sockets as f64;
    let idle_pct = f(big, "idle_cpu_pct_one_core");
    let by_cpu = if idle_pct > 0.0 {
        sockets as f64 * 100.0 / idle_pct
    } else {
        f64::INFINITY
    };
    let mut caps = [
        (
            format!(
                "file descriptors (the hard limit found, {}: the most a process gets without \
                 CAP_SYS_RESOURCE)",
                found.rlim_max
            ),
            by_fds(found.rlim_max),
        ),
        ("memory (server RSS vs MemTotal)".to_owned(), by_memory),
        ("CPU (idle heartbeats fill one core)".to_owned(), by_cpu),
    ];
    caps.sort_by(|a, b| a.1.total_cmp(&b.1));

    println!("\n## Idle scale (one node, websocket, heartbeats on)\n");
    println!(
        "| sockets | connect s | handshakes/s | RSS before → after MiB | KiB/socket | idle CPU % of one core | CPU µs/socket/s | tick wall ms | tick db ms | queries/tick | tick wall ms per 1,000 | lock → last guest:locked ms | lock → last close ms |"
    );
    println!(
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &idle {
        println!(
            "| {} | {:.1} | {:.0} | {:.1} → {:.1} | {:.2} | {:.2} | {:.3} | {:.1} | {:.1} | {} | {:.2} | {:.1} | {:.1} |",
            r["sockets"],
            f(r, "connect_s"),
            f(r, "handshakes_per_s"),
            f(r, "rss_kib_before") / 1024.0,
            f(r, "rss_kib_after") / 1024.0,
            f(r, "kib_per_socket"),
            f(r, "idle_cpu_pct_one_core"),
            f(r, "idle_cpu_us_per_socket_per_s"),
            f(r, "tick_wall_ms"),
            f(r, "tick_db_ms"),
            f(r, "tick_queries"),
            f(r, "tick_wall_ms_per_1000"),
            f(r, "lock_last_notice_ms"),
            f(r, "lock_last_close_ms"),
        );
    }
    let ratio = |k: &str| {
        let (s, b) = (f(small, k), f(big, k));
        if s > 0.0 && b > 0.0 {
            format!("{:.2}", b / s)
        } else {
            "n/a (0 at one size: below the 10 ms CPU accounting tick)".to_owned()
        }
    };
    println!(
        "\nN vs N/10, per socket (1.0 = linear): RSS {}, idle CPU {}, tick wall {}, tick db {}",
        ratio("kib_per_socket"),
        ratio("idle_cpu_us_per_socket_per_s"),
        ratio("tick_wall_ms_per_1000"),
        ratio("tick_db_ms_per_1000"),
    );
    println!(
        "heartbeat: pingInterval {} ms, pingTimeout {} ms (engine.io defaults; no sockgate setting); \
         idle window {:.1} s with {} re-check ticks in it",
        f(big, "ping_interval_ms"),
        f(big, "ping_timeout_ms"),
        f(big, "idle_window_s"),
        f(big, "idle_ticks_in_window"),
    );
    println!("\n## Limits at {sockets} sockets (measured)\n");
    println!(
        "- fds: {fds_per_socket:.3} per socket in the server ({fds_before} before); limit in \
         effect {} (found soft {} / hard {}), fs.nr_open {nr_open}: {:.0} sockets at the soft \
         limit found, {:.0} at the hard limit found, {:.0} at nr_open",
        limit.rlim_cur,
        found.rlim_cur,
        found.rlim_max,
        by_fds(found.rlim_cur),
        by_fds(found.rlim_max),
        by_fds(nr_open),
    );
    println!(
        "- memory: {kib:.2} KiB per socket × {sockets} = {:.0} MiB (server RSS {:.0} MiB) of \
         MemTotal {:.0} MiB: {by_memory:.0} sockets fill it (user space only; the kernel's Slab \
         grew {slab_per_conn:.2} KiB per connection, both ends on this machine)",
        kib * sockets as f64 / 1024.0,
        rss_at_n / 1024.0,
        mem_total as f64 / 1024.0,
    );
    println!(
        "- CPU: idle {idle_pct:.2}% of one core at {sockets} sockets: {by_cpu:.0} sockets to fill \
         one core ({cores} cores here)"
    );
    println!(
        "- first: {} at ~{:.0} sockets; then {} (~{:.0}), {} (~{:.0})",
        caps[0].0, caps[0].1, caps[1].0, caps[1].1, caps[2].0, caps[2].1
    );

    let s = &storm_report;
    println!("\n## Reconnect storm after a restart\n");
    println!(
        "| clients | in flight | all connected s | p50 / p99 connected ms | handshakes tried | Service unavailable | other refusals | transport errors / timeouts | server alive | fresh handshake after ms | /readyz |"
    );
    println!("| ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- | ---: | --- |");
    println!(
        "| {} | {} | {} | {:.0} / {:.0} | {} | {} | {} | {} / {} | {} | {} | {} |",
        s["clients"],
        s["in_flight"],
        s["all_connected_s"]
            .as_f64()
            .map_or("not all".to_owned(), |v| format!("{v:.2}")),
        f(s, "connected_p50_ms"),
        f(s, "connected_p99_ms"),
        s["handshakes_tried"],
        s["refusals"][SERVICE_UNAVAILABLE].as_u64().unwrap_or(0),
        s["unexpected_refusals"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum::<u64>()),
        s["transport_errors"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum::<u64>()),
        s["timeouts"],
        s["server_alive"],
        s["probe_handshake_ms"]
            .as_f64()
            .map_or("FAILED".to_owned(), |v| format!("{v:.1}")),
        s["readyz"]["status"],
    );

    let limits = json!({
        "nofile_found": [found.rlim_cur, found.rlim_max],
        "nofile_in_effect": [limit.rlim_cur, limit.rlim_max],
        "nr_open": nr_open,
        "mem_total_kib": mem_total,
        "cores": cores,
        "fds_per_socket": fds_per_socket,
        "sockets_by_fds_soft_limit_found": by_fds(found.rlim_cur),
        "sockets_by_fds_hard_limit_found": by_fds(found.rlim_max),
        "sockets_by_fds_nr_open": by_fds(nr_open),
        "sockets_by_memory": by_memory,
        "slab_kib_per_connection_both_ends": slab_per_conn,
        "sockets_by_cpu_one_core": by_cpu,
        "first": caps[0].0,
    });
    support::write_report(
        "scale",
        &json!({
            "bench": "scale",
            "settings": {
                "session_check_interval": check,
                "adapter": setting("ADAPTER", "auto"),
                "db_max_connections": setting("DB_MAX_CONNECTIONS", "10"),
                "db_acquire_timeout_ms": setting("DB_ACQUIRE_TIMEOUT_MS", "2000"),
                "per_source_address": PER_SOURCE,
                "in_flight": IN_FLIGHT,
                "fd_margin": margin,
            },
            "idle": idle,
            "limits": limits,
            "storm": storm_report,
        }),
    );
    assert!(
        storm_ok,
        "the storm: every client connected or refused with {SERVICE_UNAVAILABLE} only, the \
         server alive and the pool healthy after (see FAILURE lines above)"
    );
}
