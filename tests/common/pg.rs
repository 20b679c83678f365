//! Finding a PostgreSQL for the tests: `SOCKGATE_TEST_PG_URL` or
//! `DATABASE_URL` if set; else a container (testcontainers) where a Docker
//! daemon answers, one per test binary, image `SOCKGATE_TEST_PG_IMAGE`
//! (default `postgres:17`); else a throwaway cluster started from the local
//! `initdb`/`postgres` binaries. With none, tests skip loudly, unless
//! `SOCKGATE_REQUIRE_PG=1` (CI), where they fail.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::Connection;

/// The admin URL of a PostgreSQL the tests may create databases in.
pub fn admin_url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        let from_env = std::env::var("SOCKGATE_TEST_PG_URL")
            .ok()
            .or_else(|| std::env::var("DATABASE_URL").ok())
            .filter(|u| u.starts_with("postgres"));
        let found = from_env
            .or_else(|| match container::postgres() {
                Ok(url) => Some(url),
                Err(why) => {
                    eprintln!("no PostgreSQL container ({why}); trying a local initdb cluster");
                    None
                }
            })
            .or_else(|| match Cluster::start() {
                Ok(cluster) => Some(cluster.url()),
                Err(why) => {
                    loud(&format!("no PostgreSQL for the tests: {why}"));
                    None
                }
            });
        if found.is_none() && require_pg() {
            panic!(
                "SOCKGATE_REQUIRE_PG=1 but no PostgreSQL was found (set DATABASE_URL, start a Docker daemon, or install initdb/postgres)"
            );
        }
        found
    })
    .clone()
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
        // Its own thread and runtime: callers may be inside a test runtime.
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            loop {
                if rt.block_on(async { sqlx::PgConnection::connect(&url).await.is_ok() }) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err("the throwaway cluster did not become ready".to_owned());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .join()
        .map_err(|_| "readiness check panicked".to_owned())?
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

/// Containers that live as long as the test binary: started once, on a
/// runtime of their own (each test has its own runtime, and the container
/// must outlive all of them), and removed when the process exits.
pub mod container {
    use std::sync::Mutex;

    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::{ContainerAsync, Image, ImageExt};

    static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// `name:tag` from `var`, else `default`.
    fn image(var: &str, default: &str) -> (String, String) {
        let spec = std::env::var(var).unwrap_or_else(|_| default.to_owned());
        match spec.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
            _ => (spec, "latest".to_owned()),
        }
    }

    fn docker_answers() -> bool {
        std::process::Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    extern "C" fn remove_started() {
        let ids = std::mem::take(&mut *STARTED.lock().unwrap_or_else(|e| e.into_inner()));
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    /// Keeps the container past its handle (removed at exit instead).
    fn keep<I: Image>(container: ContainerAsync<I>) {
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        if started.is_empty() {
            unsafe { libc::atexit(remove_started) };
        }
        started.push(container.id().to_owned());
        std::mem::forget(container);
    }

    fn on_own_runtime<T: Send + 'static>(
        work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, String> {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(work)
        })
        .join()
        .map_err(|_| "the container thread panicked".to_owned())?
    }

    /// A PostgreSQL server in a container, as an admin URL.
    pub fn postgres() -> Result<String, String> {
        if !docker_answers() {
            return Err("no Docker daemon answers".into());
        }
        let (name, tag) = image("SOCKGATE_TEST_PG_IMAGE", "postgres:17");
        on_own_runtime(async move {
            let started = std::time::Instant::now();
            let node = Postgres::default()
                .with_host_auth()
                .with_name(name.clone())
                .with_tag(tag.clone())
                .start()
                .await
                .map_err(|e| format!("starting {name}:{tag}: {e}"))?;
            let host = node.get_host().await.map_err(|e| e.to_string())?;
            let port = node
                .get_host_port_ipv4(5432)
                .await
                .map_err(|e| e.to_string())?;
            let url = format!("postgres://postgres@{host}:{port}/postgres");
            let version = server_version(&url).await?;
            eprintln!(
                "PostgreSQL for the tests: container {name}:{tag} ({version}) at {host}:{port}, ready in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            keep(node);
            Ok(url)
        })
    }

    async fn server_version(url: &str) -> Result<String, String> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        let (version,): (String,) = sqlx::query_as("SHOW server_version")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("PostgreSQL {version}"))
    }
}
