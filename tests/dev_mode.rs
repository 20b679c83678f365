//! Development mode (SQLite) cannot leak into a deployment: the binary
//! refuses to start with settings that would expose it, naming the setting.

use std::process::Command;
use std::time::Duration;

/// Runs the binary with `env` (nothing else from the test's environment
/// that configures it) and returns its exit success and stderr, killing it
/// after 20 s.
fn run(env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/dev.db?mode=rwc", dir.path().display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    cmd.current_dir(dir.path())
        .env_remove("SESSION_SECRET")
        .env_remove("ADAPTER")
        .env_remove("REDIS_URL")
        .env("DATABASE_URL", &db)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("sockgate {env:?} kept running: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn development_mode_listens_on_loopback_only() {
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let (ok, stderr) = run(&[("LISTEN_ADDR", addr)]);
        assert!(!ok);
        assert!(
            stderr.contains("development mode") && stderr.contains("LISTEN_ADDR"),
            "{stderr}"
        );
    }
}

#[test]
fn development_mode_joins_no_cluster() {
    let (ok, stderr) = run(&[("ADAPTER", "redis"), ("REDIS_URL", "redis://127.0.0.1:1")]);
    assert!(!ok);
    assert!(
        stderr.contains("development mode") && stderr.contains("ADAPTER"),
        "{stderr}"
    );
    let (ok, stderr) = run(&[("ADAPTER", "postgres")]);
    assert!(!ok);
    assert!(stderr.contains("ADAPTER"), "{stderr}");
}

#[test]
fn production_needs_the_apps_secret_and_bad_secrets_are_named() {
    let (ok, stderr) = run(&[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")]);
    assert!(!ok);
    assert!(stderr.contains("SESSION_SECRET is required"), "{stderr}");
    let (ok, stderr) = run(&[("SESSION_SECRET", "first, second")]);
    assert!(!ok);
    assert!(
        stderr.contains("secret #2") && stderr.contains("white space"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("second"),
        "the secret itself is not echoed: {stderr}"
    );
    let (ok, stderr) = run(&[("SESSION_SECRET", "first,,third")]);
    assert!(!ok);
    assert!(stderr.contains("secret #2 is empty"), "{stderr}");
}
