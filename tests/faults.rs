//! Faults a deployment meets: PostgreSQL going away under live sockets and
//! coming back, a reconnect storm after a sockgate restart, and clients that
//! vanish in the middle of a handshake. Each PostgreSQL test runs its own
//! throwaway cluster (it stops it), never a shared server.
//!
//! The tests run one at a time (they time things and share two cores):
//! `cargo test --test faults`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{self, Options, Seen, TestClient, Transport};
use common::engine_io::{self, HandshakeError};
use common::pg::OwnCluster;
use common::wire;
use common::{TestDb, TestEnv};
use serde_json::{Value, json};
use sockgate::{AdapterKind, Config};
use tokio::io::AsyncWriteExt;

/// One fault test at a time, whatever `--test-threads` says.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SERVICE_UNAVAILABLE: &str = "Service unavailable";
/// What `AuthError::reason()` writes for an unreachable store (the
/// `StoreError` display, followed by the database error).
const STORE_REASON_PREFIX: &str = "session store unavailable: ";

/// initdb and the server's start block for seconds: off the runtime's
/// worker thread.
fn own_cluster() -> Option<OwnCluster> {
    tokio::task::block_in_place(OwnCluster::start)
}

fn stop(cluster: &OwnCluster) {
    tokio::task::block_in_place(|| cluster.stop()).expect("PostgreSQL stops");
}

fn restart(cluster: &OwnCluster) {
    tokio::task::block_in_place(|| cluster.restart()).expect("PostgreSQL restarts");
}

/// A server on the test's own cluster (its `postgres` database).
async fn env_on(cluster: &OwnCluster, tweak: impl FnOnce(&mut Config)) -> TestEnv {
    TestEnv::start_on(TestDb::existing_postgres(cluster.url()), tweak).await
}

async fn connect_with(base: &str, transport: Transport, cookie_value: &str) -> TestClient {
    let opts = Options {
        cookie: Some(format!("connect.sid={cookie_value}")),
        ..Default::default()
    };
    client::connect(base, transport, opts).await
}

fn is_refusal(text: &str, message: &str) -> bool {
    let expected = json!({ "message": message }).to_string();
    text.contains("ConnectError") && text.contains(&expected)
}

/// `whoami` answers with this socket's session, and nothing that ends a
/// socket (a close, `session_expired`) arrived before the answer.
async fn still_answers(c: &mut TestClient, sid: &str, when: &str) {
    c.emit("whoami", Value::Null).await;
    match c.next(Duration::from_secs(10)).await {
        Some(Seen::Event(name, me)) if name == "whoami" => {
            assert_eq!(
                me["sessionId"], sid,
                "{when}: whoami answers for its session"
            );
        }
        Some(Seen::Closed) => panic!("{when}: a live socket was closed"),
        Some(Seen::Event(name, p)) if name == "session_expired" => {
            panic!("{when}: a live socket was told session_expired {p}")
        }
        Some(other) => panic!("{when}: unexpected {other:?} on a live socket"),
        None => panic!("{when}: no whoami answer within 10 s"),
    }
}

/// Rows of the socket adapter's LISTEN connection (application_name
/// `sockgate-adapter`, its last statement a LISTEN).
async fn adapter_listeners(url: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'sockgate-adapter' AND query ILIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(client);
    let _ = task.await;
    n
}

async fn delete_session(url: &str, sid: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    // connect-pg-simple's destroy.
    client
        .execute("DELETE FROM \"session\" WHERE sid = $1", &[&sid])
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
}

/// The `socket.auth_failed` rows whose reason is the unreachable store,
/// once there are at least `at_least` of them (or after 20 s).
async fn store_refusal_rows(env: &TestEnv, at_least: usize) -> Vec<sockgate::audit::AuditRow> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let since = chrono::DateTime::<chrono::Utc>::from_timestamp(0, 0).unwrap();
    loop {
        let rows =
            sockgate::audit::rows_since(env.conn(), env.tables(), "socket.auth_failed", since)
                .await;
        if let Ok(rows) = rows {
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| {
                    r.reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with(STORE_REASON_PREFIX))
                })
                .collect();
            if rows.len() >= at_least || Instant::now() > deadline {
                return rows;
            }
        }
        assert!(Instant::now() < deadline, "audit_log unreadable for 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scenario 1: PostgreSQL stops under live sockets, then comes back.
async fn database_outage_under_live_sockets(adapter: AdapterKind) {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = own_cluster() else {
        return;
    };
    let env = env_on(&cluster, |c| {
        c.session_check_interval = Duration::from_millis(300);
        c.db_acquire_timeout_ms = 500;
        c.adapter = adapter;
    })
    .await;
    let base = env.url();
    let started = Instant::now();

    // Live sockets, each on its own session, over both transports.
    let mut live = Vec::new();
    for (i, transport) in [
        Transport::Polling,
        Transport::Websocket,
        Transport::Polling,
        Transport::Websocket,
    ]
    .into_iter()
    .enumerate()
    {
        let minted = env.mint(&format!("{}", 10 + i)).await;
        let mut c = connect_with(&base, transport, &minted.cookie_value).await;
        c.outcome().await.expect("connects before the outage");
        still_answers(&mut c, &minted.sid, "before the outage").await;
        live.push((minted.sid, c));
    }
    let newcomer = env.mint("20").await;
    assert_eq!(wire::status(&base, "/readyz").await, 200);
    let default_adapter = adapter == AdapterKind::Auto;
    if default_adapter {
        assert_eq!(
            adapter_listeners(&env.db.url).await,
            1,
            "the PostgreSQL adapter LISTENs before the outage"
        );
    }
    let failed_ticks = "sockgate_revalidation_failed_ticks_total";
    let failed_before = wire::metric(&base, failed_ticks).await;

    stop(&cluster);
    let outage = Instant::now();

    // (c) not ready while the database is away.
    assert_eq!(
        wire::status(&base, "/readyz").await,
        503,
        "/readyz in the outage"
    );

    // (a) new handshakes fail closed, on both transports.
    let mut refused = 0usize;
    for transport in Transport::ALL {
        for _ in 0..2 {
            let mut c = connect_with(&base, transport, &newcomer.cookie_value).await;
            c.expect_refused(SERVICE_UNAVAILABLE).await;
            refused += 1;
            c.disconnect().await;
        }
    }

    // (b) several failing re-checks later, every live socket is still there.
    let failed = loop {
        let failed = wire::metric(&base, failed_ticks).await - failed_before;
        if failed >= 3.0 {
            break failed;
        }
        assert!(
            outage.elapsed() < Duration::from_secs(15),
            "the watcher did not re-check (and fail) three times in 15 s of outage: {failed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (sid, c) in &mut live {
        still_answers(c, sid, "during the outage").await;
    }
    assert_eq!(wire::metric(&base, "sockgate_live_sockets").await, 4.0);
    assert_eq!(
        wire::status(&base, "/readyz").await,
        503,
        "/readyz in the outage"
    );
    let outage_len = outage.elapsed();

    restart(&cluster);
    let back = Instant::now();

    // (d) new handshakes succeed again without restarting sockgate.
    let mut fresh = loop {
        let mut c = connect_with(&base, Transport::Websocket, &newcomer.cookie_value).await;
        match c.outcome().await {
            Ok(()) => break c,
            Err(text) if is_refusal(&text, SERVICE_UNAVAILABLE) => refused += 1,
            Err(text) => {
                panic!("after the restart: neither a connection nor {SERVICE_UNAVAILABLE}: {text}")
            }
        }
        c.disconnect().await;
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "no handshake succeeded within 15 s of PostgreSQL's restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reconnected_after = back.elapsed();
    still_answers(&mut fresh, &newcomer.sid, "a new socket after the restart").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while wire::status(&base, "/readyz").await != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz did not come back to 200"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // (e) the refusals made in the outage are audited once it is over: one
    // row per refused handshake, none lost, none doubled.
    let rows = store_refusal_rows(&env, refused).await;
    assert_eq!(
        rows.len(),
        refused,
        "one socket.auth_failed row per refused handshake; reasons: {:?}",
        rows.iter().map(|r| &r.reason).collect::<Vec<_>>()
    );
    let newcomer_ref = sockgate::session::fingerprint(&newcomer.sid);
    for row in &rows {
        assert_eq!(row.severity, "WARN");
        assert_eq!(row.session_ref.as_deref(), Some(newcomer_ref.as_str()));
        assert!(row.socket_id.is_some() && row.client_ip.is_some());
    }
    assert_eq!(
        wire::metric(&base, "sockgate_handshakes_total").await
            - wire::metric(
                &base,
                "sockgate_handshakes_total{outcome=\"authenticated\"}"
            )
            .await,
        refused as f64,
        "every refusal was counted as store_unavailable"
    );
    assert_eq!(wire::metric(&base, "sockgate_audit_dropped").await, 0.0);

    // The live sockets kept working through it all.
    for (sid, c) in &mut live {
        still_answers(c, sid, "after the restart").await;
    }

    // The watcher recovered: a session deleted now ends its socket.
    let (gone_sid, mut gone) = live.remove(0);
    delete_session(&env.db.url, &gone_sid).await;
    let payload = gone.expect_event_then_closed("session_expired").await;
    assert_eq!(payload["reason"], "deleted");
    for (sid, c) in &mut live {
        still_answers(c, sid, "after another session ended").await;
    }

    // The PostgreSQL adapter LISTENs again (what it hears is tested with two
    // nodes below).
    let relistened = if default_adapter {
        loop {
            if adapter_listeners(&env.db.url).await == 1 {
                break Some(back.elapsed());
            }
            assert!(
                back.elapsed() < Duration::from_secs(15),
                "the PostgreSQL adapter did not LISTEN again within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        None
    };
    eprintln!(
        "outage ({adapter:?} adapter): {refused} handshakes refused, outage {outage_len:?}, \
         first handshake {reconnected_after:?} after PostgreSQL was back, \
         {failed} failed re-checks, adapter LISTENing again after {relistened:?}, \
         test {:?}",
        started.elapsed()
    );
    for (_, c) in live {
        c.disconnect().await;
    }
    fresh.disconnect().await;
    env.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_closed_keeps_live_sockets_and_recovers() {
    database_outage_under_live_sockets(AdapterKind::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_with_the_local_adapter() {
    database_outage_under_live_sockets(AdapterKind::Local).await;
}

const ORG: i64 = 1;
const ADMIN: &str = "100";

async fn seed_guests(env: &TestEnv, guests: &[(i64, &str)]) {
    env.add_org(ORG, "Acme").await;
    env.add_member(ORG, ADMIN, "admin").await;
    let guests: Vec<(i64, String)> = guests
        .iter()
        .map(|(id, u)| (*id, (*u).to_owned()))
        .collect();
    env.add_guests(ORG, &guests).await;
}

async fn lock_guest(base: &str, guest: i64, admin_cookie: &str) -> (u16, Value) {
    let resp = common::http()
        .post(format!("{base}/api/admin/guest/{guest}/disconnect"))
        .header("Cookie", format!("connect.sid={admin_cookie}"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A lock requested on node A reaches a guest on node B through the
/// PostgreSQL adapter, before and after PostgreSQL restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_adapter_carries_a_guest_lock_between_nodes_after_a_restart() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = own_cluster() else {
        return;
    };
    let tweak = |c: &mut Config| {
        // The watcher must not find the lock by itself: only the adapter
        // may carry it to node B.
        c.session_check_interval = Duration::from_secs(3600);
        c.db_acquire_timeout_ms = 500;
    };
    let a = env_on(&cluster, tweak).await;
    let b = env_on(&cluster, tweak).await;
    seed_guests(&a, &[(20, "200"), (21, "201")]).await;
    let admin = a.mint(ADMIN).await;

    let lock_reaches_b = async |guest: i64, user: &str, when: &str| {
        let minted = b.mint(user).await;
        let mut c = connect_with(&b.url(), Transport::Websocket, &minted.cookie_value).await;
        c.outcome().await.expect("the guest connects to node B");
        let (status, answer) = lock_guest(&a.url(), guest, &admin.cookie_value).await;
        assert_eq!(
            (status, answer),
            (200, json!({"success": true, "disconnected": 1})),
            "{when}: node A locks the guest and counts the socket on node B"
        );
        c.expect_event_then_closed("guest:locked").await;
    };
    lock_reaches_b(20, "200", "before the outage").await;

    stop(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    restart(&cluster);
    let back = Instant::now();
    for node in [&a, &b] {
        let minted = node.mint("300").await;
        loop {
            let mut c = connect_with(&node.url(), Transport::Websocket, &minted.cookie_value).await;
            let outcome = c.outcome().await;
            c.disconnect().await;
            if outcome.is_ok() {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(15),
                "node did not recover"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Both nodes' adapters LISTEN again.
    loop {
        let listening = adapter_listeners(&a.db.url).await;
        if listening == 2 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "15 s after PostgreSQL's restart, {listening} of 2 socket adapters LISTEN again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "both socket adapters LISTEN again {:?} after PostgreSQL's restart",
        back.elapsed()
    );
    lock_reaches_b(21, "201", "after PostgreSQL restarted").await;
}

/// What one client of the storm saw.
enum Outcome {
    Connected(Box<engine_io::Ws>),
    Refused(String),
    Error(String),
    TimedOut,
}

/// Scenario 2: 5,000 clients reconnect at once after a sockgate restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_after_a_server_restart() {
    const CLIENTS: usize = 5_000;
    let _serial = SERIAL.lock().await;
    let Some(cluster) = own_cluster() else {
        return;
    };
    let started = Instant::now();
    let env = env_on(&cluster, |c| {
        c.db_max_connections = 10;
        // The production default: how long a handshake may queue for the pool.
        c.db_acquire_timeout_ms = 2_000;
    })
    .await;

    // Sessions written in bulk, as connect-pg-simple would have written them.
    let (pg, conn) = tokio_postgres::connect(&env.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    pg.execute(
        "INSERT INTO \"session\" (sid, sess, expire) \
         SELECT 'storm-' || i, json_build_object('cookie', json_build_object('originalMaxAge', 86400000), \
                'passport', json_build_object('user', i)), to_timestamp($1) \
         FROM generate_series(0, $2 - 1) AS i",
        &[
            &((common::now_secs() + 3600) as f64),
            &(CLIENTS as i32),
        ],
    )
    .await
    .unwrap();
    drop(pg);
    let _ = conn_task.await;
    let cookies: Arc<Vec<String>> = Arc::new(
        (0..CLIENTS)
            .map(|i| wire::cookie_value(&format!("storm-{i}"), common::SECRET))
            .collect(),
    );
    let addr = env.server.local_addr;
    engine_io::handshake(&addr, &cookies[0])
        .await
        .expect("a handshake before the restart");

    let env = env.restart().await;
    assert_eq!(env.server.local_addr, addr);

    // Each held socket is two descriptors in this process (client and
    // server side); without room for them, sockets are closed once answered.
    let nofile = {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        }
        lim.rlim_cur
    };
    let hold = nofile >= (2 * CLIENTS + 2_000) as u64;
    let concurrency = if nofile >= 4_000 { 1_000 } else { 200 };
    eprintln!(
        "storm: ulimit -n {nofile}; {concurrency} handshakes in flight; sockets {}",
        if hold {
            "held until the end"
        } else {
            "closed once answered (descriptor limit too low to hold them)"
        }
    );

    let storm = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let sem = sem.clone();
        let cookies = cookies.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let t0 = Instant::now();
            let outcome = match tokio::time::timeout(
                Duration::from_secs(20),
                engine_io::handshake(&addr, &cookies[i]),
            )
            .await
            {
                Ok(Ok(ws)) => Outcome::Connected(Box::new(ws)),
                Ok(Err(HandshakeError::Refused(packet))) => Outcome::Refused(packet),
                Ok(Err(HandshakeError::Transport(e))) => Outcome::Error(e),
                Err(_) => Outcome::TimedOut,
            };
            (outcome, t0.elapsed())
        }));
    }
    let mut held = Vec::new();
    let (mut connected, mut refused, mut timed_out) = (0usize, 0usize, 0usize);
    let mut errors = Vec::new();
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    let mut slowest = Duration::ZERO;
    for t in tasks {
        let (outcome, took) = t.await.unwrap();
        slowest = slowest.max(took);
        match outcome {
            Outcome::Connected(ws) => {
                connected += 1;
                if hold {
                    held.push(ws);
                }
            }
            Outcome::Refused(packet) => {
                refused += 1;
                *refusals.entry(packet).or_default() += 1;
            }
            Outcome::Error(e) => errors.push(e),
            Outcome::TimedOut => timed_out += 1,
        }
    }
    let took = storm.elapsed();
    eprintln!(
        "storm: {CLIENTS} handshakes in {took:?} ({:.0}/s): connected {connected}, refused {refused} {refusals:?}, \
         errors {}, timed out {timed_out}; slowest handshake {slowest:?}",
        CLIENTS as f64 / took.as_secs_f64(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "transport errors, e.g. {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_eq!(timed_out, 0, "handshakes left unanswered for 20 s");
    assert_eq!(connected + refused, CLIENTS);
    let clear = format!("44{}", json!({ "message": SERVICE_UNAVAILABLE }));
    assert!(
        refusals.keys().all(|packet| *packet == clear),
        "the only refusal is {clear}: {refusals:?}"
    );
    assert!(connected > 0, "nobody got through the storm");

    let base = env.url();
    assert_eq!(wire::status(&base, "/healthz").await, 200);
    if hold {
        assert_eq!(
            wire::metric(&base, "sockgate_live_sockets").await,
            connected as f64,
            "the server counts the sockets the clients hold"
        );
    }
    // The pool is not exhausted: a new handshake goes through promptly.
    let probe = Instant::now();
    let ws = engine_io::handshake(&addr, &cookies[0])
        .await
        .expect("a handshake right after the storm");
    let probe_took = probe.elapsed();
    assert!(
        probe_took < Duration::from_secs(1),
        "a handshake after the storm took {probe_took:?}"
    );
    drop(ws);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    while wire::metric(&base, "sockgate_live_sockets").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "sockets still counted live after every client left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.server.state.registry.socket_count(), 0);
    assert_eq!(wire::status(&base, "/readyz").await, 200);
    eprintln!(
        "storm: probe handshake {probe_took:?}; test {:?}",
        started.elapsed()
    );
    env.server.shutdown().await;
}

/// How a client of scenario 3 goes away.
#[derive(Clone, Copy, Debug)]
enum Vanish {
    /// Half an HTTP request line and headers, then the connection drops.
    PartialHttp,
    /// A polling session is opened, then a POST whose body never arrives.
    PartialPollingPost,
    /// The engine.io open over a websocket, then gone before CONNECT.
    AfterOpen,
    /// CONNECT sent, gone (TCP reset) before the server answers; the delay
    /// (ms) sweeps the moment through the session lookup.
    AfterConnect(u64),
}

async fn vanish(addr: SocketAddr, cookie: String, how: Vanish) {
    match how {
        Vanish::PartialHttp => {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = tcp
                .write_all(
                    format!(
                        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nCookie: connect.sid="
                    )
                    .as_bytes(),
                )
                .await;
        }
        Vanish::PartialPollingPost => {
            let open =
                wire::polling_open(&format!("http://{addr}"), &format!("connect.sid={cookie}"))
                    .await;
            let sid = open["sid"].as_str().expect("an engine.io open packet");
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = tcp
                .write_all(
                    format!(
                        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {addr}\r\n\
                         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 20\r\n\r\n4"
                    )
                    .as_bytes(),
                )
                .await;
        }
        Vanish::AfterOpen => {
            let ws = engine_io::open(&addr, &cookie).await.unwrap();
            drop(ws);
        }
        Vanish::AfterConnect(delay_ms) => {
            let mut ws = engine_io::open(&addr, &cookie).await.unwrap();
            engine_io::send_connect(&mut ws).await.unwrap();
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                let _ = tcp.set_zero_linger();
            }
            drop(ws);
        }
    }
}

/// Scenario 3: clients that vanish mid-handshake leave nothing behind.
async fn vanishing_clients(env: TestEnv) {
    const ROUNDS: usize = 400;
    let started = Instant::now();
    let base = env.url();
    let addr = env.server.local_addr;
    let minted = env.mint("7").await;
    let kinds = [
        Vanish::PartialHttp,
        Vanish::PartialPollingPost,
        Vanish::AfterOpen,
        Vanish::AfterConnect(0),
        Vanish::AfterConnect(1),
        Vanish::AfterConnect(3),
        Vanish::AfterConnect(10),
        Vanish::AfterConnect(30),
    ];
    let sem = Arc::new(tokio::sync::Semaphore::new(50));
    let mut tasks = Vec::new();
    for i in 0..ROUNDS {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let cookie = minted.cookie_value.clone();
        let how = kinds[i % kinds.len()];
        tasks.push(tokio::spawn(async move {
            vanish(addr, cookie, how).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.expect("a vanishing client did what it meant to");
    }

    assert_eq!(
        wire::status(&base, "/healthz").await,
        200,
        "the server is up"
    );
    let authenticated = wire::metric(
        &base,
        "sockgate_handshakes_total{outcome=\"authenticated\"}",
    )
    .await;
    assert!(
        authenticated > 0.0,
        "some CONNECTs were authenticated before their client vanished"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = wire::metric(&base, "sockgate_live_sockets").await;
        let registered = env.server.state.registry.socket_count();
        if live == 0.0 && registered == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after the last client vanished: live sockets gauge {live}, registry {registered} \
             ({authenticated} handshakes authenticated)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every socket that reached the connect handler was counted out exactly
    // once (the others were refused their CONNECT by socketioxide itself,
    // as the transport was already closed).
    let mut disconnected = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = env.audit_rows("socket.disconnected", 0).await;
        let settled = now.len() == disconnected.len()
            && wire::metric(&base, "sockgate_audit_buffer_depth").await == 0.0;
        disconnected = now;
        if settled {
            break;
        }
    }
    let mut ids: Vec<_> = disconnected.iter().map(|r| r.socket_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        disconnected.len(),
        "one socket.disconnected row per socket"
    );
    assert!(disconnected.len() <= authenticated as usize);
    let in_handshake = disconnected
        .iter()
        .filter(|r| r.reason.as_deref() == Some("transport closed during the handshake"))
        .count();

    // A normal client still connects and is counted, then uncounted.
    for transport in Transport::ALL {
        let mut c = connect_with(&base, transport, &minted.cookie_value).await;
        c.outcome().await.expect("a normal client connects");
        let when = format!("{transport:?} after the vanishing clients");
        still_answers(&mut c, &minted.sid, &when).await;
        assert_eq!(wire::metric(&base, "sockgate_live_sockets").await, 1.0);
        c.disconnect().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while wire::metric(&base, "sockgate_live_sockets").await != 0.0 {
            assert!(Instant::now() < deadline, "a closed socket stays counted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "vanishing clients ({}): {ROUNDS} clients, {authenticated} authenticated before vanishing, \
         {} reached the connect handler, {in_handshake} of them already gone; test {:?}",
        if env.db.is_postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        disconnected.len(),
        started.elapsed()
    );
    env.server.shutdown().await;
}

fn long_interval(c: &mut Config) {
    // The watcher prunes closed sockets from the registry on each tick; keep
    // it out of the way so a leak shows.
    c.session_check_interval = Duration::from_secs(3600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_handshake_leave_nothing_behind_sqlite() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::start_with(common::Backend::Sqlite, long_interval)
        .await
        .unwrap();
    vanishing_clients(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_handshake_leave_nothing_behind_postgres() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = own_cluster() else {
        return;
    };
    vanishing_clients(env_on(&cluster, long_interval).await).await;
}

/// A client may emit as soon as it reads CONNECT (socket.io-client flushes
/// its send buffer right then): the event must find its handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sent_right_after_connect_is_answered() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const CLIENTS: usize = 1_000;
    let _serial = SERIAL.lock().await;
    let env = TestEnv::start_with(common::Backend::Sqlite, long_interval)
        .await
        .unwrap();
    let addr = env.server.local_addr;
    let minted = env.mint("8").await;
    let sem = Arc::new(tokio::sync::Semaphore::new(20));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let cookie = minted.cookie_value.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = engine_io::handshake(&addr, &cookie)
                .await
                .expect("connects");
            ws.send(Message::text(r#"42["whoami"]"#)).await.unwrap();
            let answered = tokio::time::timeout(Duration::from_secs(3), async {
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg
                        && t.as_str().starts_with(r#"42["whoami""#)
                    {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            drop(permit);
            answered
        }));
    }
    let mut unanswered = 0;
    for t in tasks {
        if !t.await.unwrap() {
            unanswered += 1;
        }
    }
    assert_eq!(
        unanswered, 0,
        "{unanswered} of {CLIENTS} whoami events sent right after CONNECT were never answered"
    );
    env.server.shutdown().await;
}
