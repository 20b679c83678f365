//! Throwaway servers in containers (testcontainers), one per image per test
//! binary: started on a runtime of their own (each test has its own
//! runtime, and the container must outlive all of them) and removed when the
//! process exits.
//!
//! Image names come from the environment, defaulting to the official images
//! a laptop or a hosted CI pulls; where no registry is reachable,
//! `scripts/build-test-images.sh` builds look-alikes from Debian's packages.

use std::io::Write;
use std::sync::Mutex;

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::redis::Redis;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, Image, ImageExt};

static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `(name, tag)` of the image in `var`, else of `default`.
pub fn image(var: &str, default: &str) -> (String, String) {
    let spec = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    match spec.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (spec, "latest".to_owned()),
    }
}

pub fn docker_answers() -> bool {
    static ANSWERS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWERS.get_or_init(|| {
        std::process::Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Written past the test harness's output capture: which server a run used
/// belongs in its output whether or not a test fails.
pub fn announce(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
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

/// Runs `work` to completion on a runtime of its own, on a thread of its
/// own: callers may be inside a test's runtime, and what it starts (a
/// container) must outlive that runtime.
pub fn on_own_runtime<T: Send + 'static>(
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

/// Starts `image` as `name:tag` and finds the host and the host port that
/// `port` inside the container is mapped to.
async fn start<I: Image>(
    image: I,
    name: &str,
    tag: &str,
    port: u16,
) -> Result<(ContainerAsync<I>, String, u16), String> {
    let node = image
        .with_name(name)
        .with_tag(tag)
        .start()
        .await
        .map_err(|e| format!("starting {name}:{tag}: {e}"))?;
    let host = node.get_host().await.map_err(|e| e.to_string())?;
    let mapped = node
        .get_host_port_ipv4(port)
        .await
        .map_err(|e| e.to_string())?;
    Ok((node, host.to_string(), mapped))
}

/// A PostgreSQL server in a container of the image named in `image_var`
/// (default `default`), as an admin URL; `role` says which of the tests'
/// servers it is, for the announcement.
pub fn postgres(role: &str, image_var: &str, default: &str) -> Result<String, String> {
    if !docker_answers() {
        return Err("no Docker daemon answers".into());
    }
    let (name, tag) = image(image_var, default);
    let role = role.to_owned();
    on_own_runtime(async move {
        let started = std::time::Instant::now();
        let (node, host, port) =
            start(Postgres::default().with_host_auth(), &name, &tag, 5432).await?;
        let url = format!("postgres://postgres@{host}:{port}/postgres");
        let version = super::pg::server_version(&url).await?;
        announce(&format!(
            "PostgreSQL for the tests ({role}): container {name}:{tag} ({version}) at {host}:{port}, ready in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        keep(node);
        Ok(url)
    })
}

/// A Redis server in a container of `SOCKGATE_TEST_REDIS_IMAGE` (default
/// `redis:7`), as a URL.
pub fn redis() -> Result<String, String> {
    if !docker_answers() {
        return Err("no Docker daemon answers".into());
    }
    let (name, tag) = image("SOCKGATE_TEST_REDIS_IMAGE", "redis:7");
    on_own_runtime(async move {
        let started = std::time::Instant::now();
        let (node, host, port) = start(Redis::default(), &name, &tag, 6379).await?;
        announce(&format!(
            "Redis for the tests: container {name}:{tag} at {host}:{port}, ready in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        keep(node);
        Ok(format!("redis://{host}:{port}"))
    })
}
