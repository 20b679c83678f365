//! Shared by the benches: a throwaway PostgreSQL database, the server as a
//! child process, and a load client that speaks the engine.io v4 /
//! Socket.IO v5 handshake over a websocket directly.
#![allow(dead_code)]

pub mod ceiling;
#[path = "../../tests/common/engine_io.rs"]
mod engine_io;
#[path = "../../tests/common/unlimited_env.rs"]
mod unlimited_env;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "bench-secret";

pub struct BenchDb {
    pub admin: String,
    pub url: String,
    pub name: String,
}

impl BenchDb {
    pub async fn create() -> BenchDb {
        let admin = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| u.starts_with("postgres"))
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("sockgate_bench_{}", std::process::id());
        let client = pg_client(&admin).await;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        let db = BenchDb {
            admin,
            url: url.to_string(),
            name,
        };
        let mut config = sockgate::Config::for_database(db.url.clone());
        config.secrets = vec![SECRET.into()];
        let conn = sockgate::db::connect(&config).await.unwrap();
        sockgate::db::migrate(&config, &conn).await.unwrap();
        sockgate::db::create_session_table(&conn.conn, None, "session")
            .await
            .unwrap();
        db
    }

    /// `n` logged-in sessions written as connect-pg-simple writes them, of
    /// users 0..n; returns their signed, URL-encoded cookie values.
    pub async fn insert_sessions(&self, n: usize, ttl_secs: i64) -> Vec<String> {
        self.insert(n, None, ttl_secs).await
    }

    /// `n` logged-in sessions all of one user, `user` (tabs and devices of
    /// one person, each its own session); returns their cookie values.
    pub async fn insert_sessions_of_user(&self, n: usize, user: i64, ttl_secs: i64) -> Vec<String> {
        self.insert(n, Some(user), ttl_secs).await
    }

    /// Session `i` is of `user`, or of user `i` when there is none.
    async fn insert(&self, n: usize, user: Option<i64>, ttl_secs: i64) -> Vec<String> {
        let client = pg_client(&self.url).await;
        let prefix = match user {
            None => "bench-".to_owned(),
            Some(user) => format!("bench-u{user}-"),
        };
        let expire = chrono::Utc::now().timestamp() + ttl_secs;
        client
            .execute(
                "INSERT INTO \"session\" (sid, sess, expire) \
                 SELECT $3::text || i, json_build_object('cookie', json_build_object('originalMaxAge', 86400000), \
                        'passport', json_build_object('user', coalesce($4::bigint, i))), to_timestamp($1) \
                 FROM generate_series(0, $2 - 1) AS i",
                &[&(expire as f64), &(n as i32), &prefix, &user],
            )
            .await
            .unwrap();
        (0..n)
            .map(|i| {
                let signed = format!(
                    "s:{}",
                    sockgate::session::sign(&format!("{prefix}{i}"), SECRET)
                );
                percent_encoding::utf8_percent_encode(&signed, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            })
            .collect()
    }

    pub async fn drop_database(&self) {
        let client = pg_client(&self.admin).await;
        let _ = client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// A knob from the environment, else its default.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of this process (the bench's own client).
pub fn own_cpu() -> Duration {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// User + system CPU time of every `postgres` process on the machine (the
/// database's share of a run on a shared machine; a server in a container
/// counts too, as would another cluster's).
pub fn postgres_cpu() -> Duration {
    let ticks = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(head, _)| head.ends_with("(postgres"))
        })
        .map(|stat| stat_ticks(&stat))
        .sum();
    clock_ticks(ticks)
}

/// utime + stime, in clock ticks, from the text of a `/proc/<pid>/stat`.
fn stat_ticks(stat: &str) -> u64 {
    // The command name may hold spaces and parentheses: count fields after
    // its closing parenthesis. utime and stime are fields 14 and 15 (1-based).
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    [11, 12]
        .iter()
        .map(|&i| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn clock_ticks(ticks: u64) -> Duration {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// A PostgreSQL client on `url`, its connection driven by a task of its own.
pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL for the bench (set DATABASE_URL)");
    tokio::spawn(conn);
    client
}

pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    /// Where callgrind writes this server's dumps, when it runs under it.
    callgrind: Option<PathBuf>,
}

/// `BENCH_CALLGRIND=1`: the servers run under valgrind's callgrind, and a
/// run also reports the server's instructions per handshake. Those counts
/// repeat from run to run of one build, where CPU time on a shared virtual
/// machine moves by tens of per cent; they count user space only (the
/// kernel's side of a syscall is not in them), and under valgrind the
/// times and latencies mean nothing.
fn callgrind_dir() -> Option<PathBuf> {
    std::env::var_os("BENCH_CALLGRIND")
        .filter(|v| !v.is_empty() && v != "0")
        .map(|_| {
            std::env::temp_dir().join(format!("sockgate-bench-callgrind-{}", std::process::id()))
        })
}

/// `cmd`, run under callgrind writing into `dir`.
fn under_callgrind(cmd: &Command, dir: &Path) -> Command {
    let mut wrapped = Command::new("valgrind");
    wrapped
        .arg("--tool=callgrind")
        .arg("--quiet")
        // Each dump names its functions in full, so that one run's dump
        // reads on its own (`callgrind_annotate`).
        .arg("--compress-strings=no")
        .arg(format!(
            "--callgrind-out-file={}/callgrind.%p",
            dir.display()
        ))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

impl Server {
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Server {
        Self::start_at(free_addr(), database_url, env).await
    }

    /// [`Server::start`] listening on `addr`: e.g. the address of a server
    /// just stopped, for a restart its clients reconnect to.
    pub async fn start_at(addr: SocketAddr, database_url: &str, env: &[(&str, &str)]) -> Server {
        // SOCKGATE_BIN runs another build of the server (an A/B of two
        // builds under one bench binary).
        let bin = std::env::var_os("SOCKGATE_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_sockgate").into());
        let mut cmd = Command::new(bin);
        cmd.env("DATABASE_URL", database_url)
            .env("SESSION_SECRET", SECRET)
            .env("LISTEN_ADDR", addr.to_string())
            // BENCH_SERVER_LOG: the servers' RUST_LOG, to see where a slow
            // sample went (default: warnings only).
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            // One client address drives thousands of connections.
            .envs(unlimited_env::UNLIMITED_ENV)
            .envs(env.iter().copied());
        Self::spawn(cmd, addr, "the sockgate server").await
    }

    /// The ceiling server: this bench binary again, in a process of its
    /// own, serving [`ceiling::serve`] (the bench's `main` checks
    /// [`ceiling::ENV`] first).
    pub async fn start_ceiling() -> Server {
        let addr = free_addr();
        let mut cmd = Command::new(std::env::current_exe().expect("the bench binary"));
        cmd.env(ceiling::ENV, addr.to_string());
        Self::spawn(cmd, addr, "the ceiling server").await
    }

    /// Starts `cmd` and waits until it listens on `addr`.
    async fn spawn(cmd: Command, addr: SocketAddr, what: &str) -> Server {
        let callgrind = callgrind_dir();
        let mut cmd = match &callgrind {
            Some(dir) => {
                std::fs::create_dir_all(dir).expect("the callgrind dump directory");
                under_callgrind(&cmd, dir)
            }
            None => cmd,
        };
        // The server logs to stdout: shown only when asked for.
        let logs = if std::env::var_os("BENCH_SERVER_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let child = cmd
            .stdout(logs)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let server = Server {
            addr,
            child,
            callgrind,
        };
        // Valgrind translates the whole binary before it runs.
        let startup = if server.callgrind.is_some() { 120 } else { 30 };
        let deadline = Instant::now() + Duration::from_secs(startup);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "{what} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sets the server's callgrind counters to zero (under
    /// `BENCH_CALLGRIND`; otherwise nothing).
    pub fn zero_instructions(&self) {
        if self.callgrind.is_some() {
            self.callgrind_control("--zero");
        }
    }

    /// Instructions the server ran since its counters were last zeroed,
    /// under `BENCH_CALLGRIND`: callgrind dumps them, and the dump's
    /// summary line is read back.
    pub fn instructions(&self) -> Option<u64> {
        let dir = self.callgrind.as_ref()?;
        self.callgrind_control("--dump");
        // Dumps are numbered callgrind.<pid>.1, .2, ...: the newest.
        let prefix = format!("callgrind.{}.", self.pid());
        let newest = std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
                Some((n, e.path()))
            })
            .max()?
            .1;
        let dump = std::fs::read_to_string(newest).ok()?;
        dump.lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    fn callgrind_control(&self, action: &str) {
        let status = Command::new("callgrind_control")
            .arg(action)
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("callgrind_control (valgrind's)");
        assert!(status.success(), "callgrind_control {action} failed");
    }

    /// How the server process ended, or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// File descriptors the server process has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The server process's soft limit on open files (`Max open files`).
    pub fn nofile_limit(&self) -> Option<u64> {
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap_or_default();
        limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Resident memory of the server process.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// User + system CPU time of the server process, from its own accounting.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        clock_ticks(stat_ticks(&stat))
    }

    pub async fn metrics(&self) -> Metrics {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut values = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((name, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                *values.entry(name.to_owned()).or_insert(0.0) += v;
            }
        }
        Metrics(values)
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    /// A metric summed over its label sets (`name{...}` lines included).
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

pub use engine_io::{HandshakeError, Ws, handshake, handshake_from};

/// One authenticated Socket.IO connection over HTTP long-polling: the
/// handshake GET (which carries the cookie the server authenticates), the
/// namespace CONNECT by POST, and the answer on the next GET. Returns the
/// engine.io session id.
pub async fn polling_handshake(
    client: &reqwest::Client,
    addr: &SocketAddr,
    cookie: &str,
) -> Result<String, HandshakeError> {
    polling_handshake_timed(client, addr, cookie)
        .await
        .map(|(sid, _)| sid)
}

/// [`polling_handshake`], with how long each of its steps took: the opening
/// GET, the CONNECT's POST, and the polls until the answer.
pub async fn polling_handshake_timed(
    client: &reqwest::Client,
    addr: &SocketAddr,
    cookie: &str,
) -> Result<(String, [Duration; 3]), HandshakeError> {
    let started = Instant::now();
    let base = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
    let t = |e: reqwest::Error| HandshakeError::Transport(e.to_string());
    let cookie = format!("connect.sid={cookie}");
    let open = client
        .get(&base)
        .header("cookie", &cookie)
        .send()
        .await
        .map_err(t)?;
    let open = open.text().await.map_err(t)?;
    let sid = open
        .strip_prefix('0')
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v["sid"].as_str().map(str::to_owned))
        .ok_or_else(|| HandshakeError::Transport(format!("no open packet: {open}")))?;
    let opened = Instant::now();
    let url = format!("{base}&sid={sid}");
    client
        .post(&url)
        .header("cookie", &cookie)
        .body("40")
        .send()
        .await
        .map_err(t)?;
    let posted = Instant::now();
    // The answer may follow a ping (a session's first ping comes one
    // `pingInterval` after it opens, 25 s by default; before the vendored
    // engineioxide's item 11, at once): keep polling, answering pings, as
    // a client does.
    for _ in 0..5 {
        let reply = client
            .get(&url)
            .header("cookie", &cookie)
            .send()
            .await
            .map_err(t)?;
        let reply = reply.text().await.map_err(t)?;
        for packet in reply.split('\u{1e}') {
            if packet.starts_with("40") {
                let steps = [opened - started, posted - opened, posted.elapsed()];
                return Ok((sid, steps));
            }
            if packet.starts_with("44") {
                return Err(HandshakeError::Refused(packet.to_owned()));
            }
            if packet == "2" {
                client.post(&url).body("3").send().await.map_err(t)?;
            }
        }
    }
    Err(HandshakeError::Transport(
        "no answer to CONNECT after 5 polls".into(),
    ))
}

/// Ends a long-polling session (engine.io close packet).
pub async fn polling_close(client: &reqwest::Client, addr: &SocketAddr, sid: &str) {
    let url = format!("http://{addr}/socket.io/?EIO=4&transport=polling&sid={sid}");
    let _ = client.post(&url).body("1").send().await;
}

/// Keeps a socket alive: answers pings until the server closes it.
pub async fn hold(mut ws: Ws) {
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg
            && t.as_str() == "2"
            && ws.send(Message::text("3")).await.is_err()
        {
            break;
        }
    }
}

/// Connects every cookie, at most `concurrency` handshakes at a time, and
/// holds the sockets (answering pings) until the server closes them.
pub async fn connect_many(
    addr: &SocketAddr,
    cookies: &[String],
    concurrency: usize,
) -> Vec<Option<tokio::task::JoinHandle<()>>> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(cookies.len());
    for cookie in cookies {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let addr = *addr;
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let ws = handshake(&addr, &cookie).await;
            drop(permit);
            ws.ok().map(|ws| tokio::spawn(hold(ws)))
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The loopback address `127.0.<block>.<2 + i / per_address>`: connection
/// `i` of a client spreading its connections over loopback source addresses,
/// `per_address` each, so no one address runs out of ephemeral ports
/// (32768-60999 here: 28,232 a destination).
pub fn loopback_source(block: u8, i: usize, per_address: usize) -> std::net::IpAddr {
    let host = 2 + i / per_address;
    assert!(
        host <= 254,
        "{i} connections at {per_address} an address need more than 127.0.{block}.2-254"
    );
    std::net::Ipv4Addr::new(127, 0, block, host as u8).into()
}

/// [`connect_many`] with connection `i` made from `source(i)` (see
/// [`loopback_source`]), each handshake given `timeout`. Holds the
/// sockets (answering pings) until the server closes them; a connection
/// that failed is its error.
pub async fn connect_many_from(
    addr: &SocketAddr,
    cookies: &[String],
    concurrency: usize,
    source: impl Fn(usize) -> std::net::IpAddr,
    timeout: Duration,
) -> Vec<Result<tokio::task::JoinHandle<()>, String>> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(cookies.len());
    for (i, cookie) in cookies.iter().enumerate() {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let addr = *addr;
        let cookie = cookie.clone();
        let local = source(i);
        tasks.push(tokio::spawn(async move {
            let ws = tokio::time::timeout(timeout, handshake_from(&addr, &cookie, local)).await;
            drop(permit);
            match ws {
                Ok(Ok(ws)) => Ok(tokio::spawn(hold(ws))),
                Ok(Err(e)) => Err(format!("{e:?}")),
                Err(_) => Err(format!("no answer in {timeout:?}")),
            }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The engine's heartbeat as a client is told it in the open packet
/// (`pingInterval`, `pingTimeout`), from a websocket opened from `local`.
pub async fn heartbeat(
    addr: &SocketAddr,
    cookie: &str,
    local: std::net::IpAddr,
) -> (Duration, Duration) {
    let (ws, open) = engine_io::open_from(addr, cookie, local)
        .await
        .expect("an engine.io open packet");
    drop(ws);
    let v: serde_json::Value = serde_json::from_str(&open[1..]).expect("open packet JSON");
    let field =
        |k: &str| Duration::from_millis(v[k].as_u64().unwrap_or_else(|| panic!("{k} in {open}")));
    (field("pingInterval"), field("pingTimeout"))
}

/// Writes the bench's numbers to target/bench-results/<name>.json for
/// comparison between runs.
pub fn write_report(name: &str, json: &serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}

/// A loopback address with a port free right now.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
