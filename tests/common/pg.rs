//! Finding the PostgreSQL servers for the tests. Two, of different major
//! versions, since the Node apps sockgate serves run on many:
//!
//! - the primary: `SOCKGATE_TEST_PG_URL` or `DATABASE_URL` if set; else a
//!   container where a Docker daemon answers (image `SOCKGATE_TEST_PG_IMAGE`,
//!   default `postgres:17`); else a throwaway cluster started from the local
//!   `initdb`/`postgres` binaries. Every PostgreSQL suite runs on it.
//! - the second: `SOCKGATE_TEST_PG_SECOND_URL` if set; else a container
//!   (image `SOCKGATE_TEST_PG_SECOND_IMAGE`, default `postgres:15`). The
//!   suites where a version difference could matter (session store, expiry
//!   and time zones, catalog queries, guests, live sessions, revocation) run
//!   on it too.
//!
//! One server of each per test binary. Without one, its tests skip loudly,
//! unless `SOCKGATE_REQUIRE_PG=1` (primary) or `SOCKGATE_REQUIRE_PG_SECOND=1`
//! (second) is set, as CI sets both: then they fail.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::Connection;

use super::containers;

/// Which of the tests' PostgreSQL servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgServer {
    Primary,
    Second,
}

/// The admin URL of the primary PostgreSQL.
pub fn admin_url() -> Option<String> {
    admin_url_of(PgServer::Primary)
}

/// The admin URL of a PostgreSQL the tests may create databases in.
pub fn admin_url_of(server: PgServer) -> Option<String> {
    static PRIMARY: OnceLock<Option<String>> = OnceLock::new();
    static SECOND: OnceLock<Option<String>> = OnceLock::new();
    match server {
        PgServer::Primary => PRIMARY.get_or_init(find_primary).clone(),
        PgServer::Second => SECOND.get_or_init(find_second).clone(),
    }
}

/// URLs of the servers the tests started themselves (containers, local
/// clusters): only those may be reconfigured.
static STARTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn started(url: String) -> String {
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(url.clone());
    url
}

pub fn started_by_tests(url: &str) -> bool {
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|u| u == url)
}

/// Turns TLS on in a server the tests started, with a self-signed
/// certificate written into its data directory through the server itself
/// (`lo_export` as superuser), so it works inside a container too.
pub async fn enable_tls(admin: &str) {
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    let (ssl,): (String,) = sqlx::query_as("SHOW ssl")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    if ssl == "on" {
        return;
    }
    let (cert, key) = self_signed();
    for (pem, file) in [(cert, "sockgate-test.crt"), (key, "sockgate-test.key")] {
        let (oid,): (i64,) = sqlx::query_as("SELECT lo_from_bytea(0, $1)::int8")
            .bind(pem.into_bytes())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        for sql in [
            "SELECT lo_export($1::int8::oid, current_setting('data_directory') || '/' || $2)",
            "SELECT lo_unlink($1::int8::oid), $2",
        ] {
            sqlx::query(sql)
                .bind(oid)
                .bind(file)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("writing {file}: {e}"));
        }
    }
    // lo_export leaves the file readable by all, which the server refuses
    // for a key; a superuser's COPY TO PROGRAM runs in the data directory.
    // The program reads the row first: a `chmod` alone never reads its
    // stdin and may exit before the server has written it, which fails the
    // COPY with "could not close pipe to external command: Broken pipe".
    sqlx::raw_sql("COPY (SELECT 1) TO PROGRAM 'cat >/dev/null && chmod 0600 sockgate-test.key'")
        .execute(&mut conn)
        .await
        .unwrap();
    for sql in [
        "ALTER SYSTEM SET ssl_cert_file = 'sockgate-test.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'sockgate-test.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fresh = sqlx::PgConnection::connect(admin).await.unwrap();
        let (ssl,): (String,) = sqlx::query_as("SHOW ssl")
            .fetch_one(&mut fresh)
            .await
            .unwrap();
        if ssl == "on" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ssl did not turn on after a reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn self_signed() -> (String, String) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::{X509, X509NameBuilder};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "sockgate-test").unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = String::from_utf8(cert.build().to_pem().unwrap()).unwrap();
    let key = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert, key)
}

fn find_primary() -> Option<String> {
    let from_env = std::env::var("SOCKGATE_TEST_PG_URL")
        .ok()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| u.starts_with("postgres"));
    let found = match from_env {
        Some(url) => {
            announce_url("primary", &url);
            Some(url)
        }
        None => match containers::postgres("primary", "SOCKGATE_TEST_PG_IMAGE", "postgres:17") {
            Ok(url) => Some(started(url)),
            Err(why) => {
                containers::announce(&format!(
                    "no PostgreSQL container ({why}); trying a local initdb cluster"
                ));
                match Cluster::start() {
                    Ok(cluster) => {
                        announce_url("primary, local initdb cluster", &cluster.url());
                        Some(started(cluster.url()))
                    }
                    Err(why) => {
                        loud(&format!("no PostgreSQL for the tests: {why}"));
                        None
                    }
                }
            }
        },
    };
    if found.is_none() && require_pg() {
        panic!(
            "SOCKGATE_REQUIRE_PG=1 but no PostgreSQL was found (set DATABASE_URL, start a Docker daemon, or install initdb/postgres)"
        );
    }
    found
}

fn find_second() -> Option<String> {
    let found = match std::env::var("SOCKGATE_TEST_PG_SECOND_URL") {
        Ok(url) => {
            announce_url("second", &url);
            Some(url)
        }
        Err(_) => {
            match containers::postgres("second", "SOCKGATE_TEST_PG_SECOND_IMAGE", "postgres:15") {
                Ok(url) => Some(started(url)),
                Err(why) => {
                    containers::announce(&format!(
                        "\n!!!!!!!! no second PostgreSQL major version for the tests ({why}; set SOCKGATE_TEST_PG_SECOND_URL or start a Docker daemon)\n!!!!!!!! the postgres_second tests are SKIPPED in this run\n"
                    ));
                    None
                }
            }
        }
    };
    if found.is_none() && require_pg_second() {
        panic!(
            "SOCKGATE_REQUIRE_PG_SECOND=1 but no second PostgreSQL was found (set SOCKGATE_TEST_PG_SECOND_URL or start a Docker daemon)"
        );
    }
    found
}

/// Says which server a URL from the environment is, version included.
fn announce_url(role: &str, url: &str) {
    let shown = url::Url::parse(url)
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(5432)
            )
        })
        .unwrap_or_else(|_| "?".into());
    let url = url.to_owned();
    let version = containers::on_own_runtime(async move { server_version(&url).await })
        .unwrap_or_else(|e| format!("version unknown: {e}"));
    containers::announce(&format!(
        "PostgreSQL for the tests ({role}): {shown} ({version})"
    ));
}

/// `PostgreSQL 17.2 ...` as the server reports itself.
pub async fn server_version(url: &str) -> Result<String, String> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let (version,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("PostgreSQL {version}"))
}

pub fn require_pg_second() -> bool {
    std::env::var("SOCKGATE_REQUIRE_PG_SECOND").is_ok_and(|v| v == "1")
}

pub fn require_pg() -> bool {
    std::env::var("SOCKGATE_REQUIRE_PG").is_ok_and(|v| v == "1")
}

/// Written past the test harness's output capture, so a skip is seen.
pub fn loud(msg: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! {msg}\n!!!!!!!! PostgreSQL tests are SKIPPED in this run\n"
    );
}

/// A PostgreSQL cluster of our own in a temporary directory. The server is
/// a child that dies with the test process (PR_SET_PDEATHSIG), so no
/// cluster outlives the run.
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
}

fn pg_bin(name: &str) -> Option<PathBuf> {
    if let Ok(out) = Command::new("which").arg(name).output()
        && out.status.success()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// initdb and postgres refuse to run as root; run them as `postgres`.
fn run_as() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Removes the directories of clusters whose test process has exited (their
/// servers died with it).
fn sweep_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("sockgate-pg-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The cluster's data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Fast shutdown (SIGINT to the postmaster, as `pg_ctl stop -m fast`):
    /// open connections are terminated. Returns once the port refuses
    /// connections and the postmaster has exited.
    pub fn stop(&self) -> Result<(), String> {
        let pidfile = self.data().join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile)
            .map_err(|e| format!("reading {}: {e}", pidfile.display()))?;
        let pid: libc::pid_t = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| format!("no pid in {}", pidfile.display()))?;
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            return Err(format!(
                "signalling postmaster {pid}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
            // The postmaster removes its pid file last; a restart before
            // that would find the lock taken.
            let exited = !pidfile.exists() || unsafe { libc::kill(pid, 0) } != 0;
            if refused && exited {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("postmaster {pid} did not stop within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port and data directory, and
    /// waits until it accepts connections.
    pub fn restart(&self) -> Result<(), String> {
        let postgres = pg_bin("postgres").ok_or("postgres binary not found")?;
        self.spawn_server(&postgres, &self.data(), run_as())?;
        self.wait_ready(Duration::from_secs(30))
    }

    pub fn start() -> Result<Cluster, String> {
        let initdb = pg_bin("initdb").ok_or("initdb not found")?;
        let postgres = pg_bin("postgres").ok_or("postgres binary not found")?;
        sweep_stale_clusters();
        let dir = std::env::temp_dir().join(format!(
            "sockgate-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let user = run_as();
        if let Some((uid, gid)) = user {
            let c = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).unwrap();
            unsafe { libc::chown(c.as_ptr(), uid, gid) };
        }
        let data = dir.join("data");
        let mut cmd = Command::new(&initdb);
        cmd.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = free_port();
        let cluster = Cluster { port, dir };
        cluster.spawn_server(&postgres, &data, user)?;
        cluster.wait_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn spawn_server(
        &self,
        postgres: &Path,
        data: &Path,
        user: Option<(u32, u32)>,
    ) -> Result<(), String> {
        let mut cmd = Command::new(postgres);
        cmd.arg("-D")
            .arg(data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-k")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        // Runs after the uid change (which would clear it).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        // The death signal follows the spawning *thread*: keep one alive
        // for the life of the process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(format!("postgres: {e}")));
            }
        });
        rx.recv().map_err(|e| e.to_string())?
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let url = self.url();
        // Callers may be inside a test runtime.
        containers::on_own_runtime(async move {
            let deadline = Instant::now() + limit;
            loop {
                if sqlx::PgConnection::connect(&url).await.is_ok() {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err("the throwaway cluster did not become ready".to_owned());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// A cluster of a test's own (never the shared server), stopped and removed
/// when dropped. `None` when initdb/postgres are missing or fail (said
/// loudly); with SOCKGATE_REQUIRE_PG=1 that is a failure instead.
pub struct OwnCluster(pub Cluster);

impl OwnCluster {
    pub fn start() -> Option<OwnCluster> {
        match Cluster::start() {
            Ok(cluster) => Some(OwnCluster(cluster)),
            Err(why) => {
                assert!(
                    !require_pg(),
                    "SOCKGATE_REQUIRE_PG=1 but no throwaway PostgreSQL cluster could be started: {why}"
                );
                loud(&format!(
                    "cannot start a throwaway PostgreSQL cluster: {why}"
                ));
                None
            }
        }
    }
}

impl std::ops::Deref for OwnCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
