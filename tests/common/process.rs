//! sockgate as a separate process (the built binary), for tests that need
//! several nodes or a server they can kill.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub struct Node {
    pub addr: SocketAddr,
    child: Child,
}

impl Node {
    /// Starts the binary with `env` on a free loopback port and waits until
    /// `/readyz` answers 200.
    pub async fn start(env: &[(&str, &str)]) -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sockgate"));
        cmd.env("LISTEN_ADDR", addr.to_string())
            .env("RUST_LOG", "warn")
            // One client address drives thousands of connections.
            .envs(super::unlimited_env::UNLIMITED_ENV)
            .env_remove("DATABASE_URL")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the sockgate binary");
        let node = Node { addr, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = reqwest::get(format!("{}/readyz", node.url())).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "node on {addr} did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
