//! The Node app's side in the tests: the official emitters, run by
//! `tests/fixtures/emitters/emit.js` with the packages its lock file pins.
//! The packages are installed (`npm ci`) the first time a test needs them,
//! so `cargo test` alone is enough on a fresh checkout.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

pub fn fixture() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/emitters"
    ))
}

/// The fixture's directory, its packages installed.
fn installed() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = fixture().to_path_buf();
        if !dir
            .join("node_modules/@socket.io/postgres-emitter")
            .exists()
        {
            let out = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .output()
                .expect("npm runs (Node.js and npm are needed for the emitter tests)");
            assert!(
                out.status.success(),
                "npm ci in {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
}

/// Runs one emitter operation (`spec`, as emit.js reads it) through the
/// real npm package against the database at `db_url`.
pub async fn emit(db_url: &str, spec: &Value) {
    let dir = tokio::task::spawn_blocking(installed).await.unwrap();
    let out = tokio::process::Command::new("node")
        .arg(dir.join("emit.js"))
        .arg(db_url)
        .arg(spec.to_string())
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "emit.js {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
