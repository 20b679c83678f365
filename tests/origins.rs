//! The Origin allowlist on both transports, through a real client and raw
//! HTTP, on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::client::{self, Options, Transport};
use common::{Backend, TestEnv};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ALLOWED: &str = "http://allowed.test:8080";

fn allowlist(config: &mut sockgate::config::Config) {
    config.allowed_origins = Some(format!("{ALLOWED}, https://*.tenant.test"));
}

macro_rules! on_both_backends {
    ($name:ident, $tweak:expr, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let env = TestEnv::start_with(Backend::Sqlite, $tweak).await.unwrap();
                ($body)(env).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(env) = TestEnv::start_with(Backend::Postgres(None), $tweak).await else {
                    return;
                };
                ($body)(env).await;
            }
        }
    };
}

fn with_origin(env: &TestEnv, cookie: &str, origin: Option<&str>) -> Options {
    Options {
        cookie: Some(format!("{}={cookie}", env.config.cookie_name)),
        origin: origin.map(str::to_owned),
        ..Default::default()
    }
}

async fn polling_status(env: &TestEnv, origin: Option<&str>) -> reqwest::Response {
    let mut req =
        reqwest::Client::new().get(format!("{}/socket.io/?EIO=4&transport=polling", env.url()));
    if let Some(o) = origin {
        req = req.header("Origin", o);
    }
    req.send().await.unwrap()
}

async fn websocket_status(env: &TestEnv, origin: &str) -> u16 {
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        env.server.local_addr
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected websocket error: {e}"),
    }
}

on_both_backends!(
    allowed_origins_connect_on_both_transports,
    allowlist,
    |env: TestEnv| async move {
        let minted = env.mint("31").await;
        for transport in Transport::ALL {
            for origin in [
                ALLOWED,
                "HTTP://ALLOWED.test:8080",
                "https://a.tenant.test",
                "https://x.y.tenant.test:443",
            ] {
                let mut c = client::connect(
                    &env.url(),
                    transport,
                    with_origin(&env, &minted.cookie_value, Some(origin)),
                )
                .await;
                c.outcome()
                    .await
                    .unwrap_or_else(|e| panic!("{transport:?} from {origin}: {e}"));
                assert_eq!(c.whoami().await["userId"], "31");
                c.disconnect().await;
            }
        }
    }
);

on_both_backends!(
    disallowed_origins_get_403_before_any_session_lookup,
    allowlist,
    |env: TestEnv| async move {
        let minted = env.mint("32").await;
        let bad = [
            "http://evil.test",
            "http://allowed.test:8081",
            "https://allowed.test:8080",
            "http://allowed.test:8080.evil.test",
            "https://tenant.test",
            "https://eviltenant.test",
            "https://a.tenant.test.evil.test",
            "null",
        ];
        for origin in bad {
            let resp = polling_status(&env, Some(origin)).await;
            assert_eq!(resp.status().as_u16(), 403, "polling from {origin}");
            assert_eq!(
                websocket_status(&env, origin).await,
                403,
                "websocket upgrade from {origin}"
            );
            for transport in Transport::ALL {
                let mut c = client::connect(
                    &env.url(),
                    transport,
                    with_origin(&env, &minted.cookie_value, Some(origin)),
                )
                .await;
                assert!(
                    c.outcome().await.is_err(),
                    "{transport:?} from {origin} must not connect"
                );
            }
        }
        // No handshake got as far as a session lookup.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(env.audit_rows("socket.authenticated", 0).await.is_empty());
        assert!(env.audit_rows("socket.auth_failed", 0).await.is_empty());
        let rows = env.audit_rows("socket.origin_rejected", 16).await;
        assert!(rows.len() >= 16, "violations are audited: {}", rows.len());
        let transports: Vec<String> = rows
            .iter()
            .map(|r| {
                r.details.as_ref().unwrap()["transport"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert!(
            transports.iter().any(|t| t == "polling")
                && transports.iter().any(|t| t == "websocket")
        );
        for row in &rows {
            assert_eq!(row.severity, "WARN");
            let d = row.details.as_ref().unwrap();
            assert!(
                d["allowlist"]
                    .as_str()
                    .unwrap()
                    .contains("http://allowed.test:8080")
            );
            assert_eq!(row.client_ip.as_deref(), Some("127.0.0.1"));
        }
        let null_row = rows
            .iter()
            .find(|r| r.details.as_ref().unwrap()["origin"] == "null")
            .expect("Origin: null is a real origin");
        assert_eq!(null_row.reason.as_deref(), Some("null origin"));
    }
);

on_both_backends!(
    missing_origin_is_allowed_by_default,
    allowlist,
    |env: TestEnv| async move {
        assert_eq!(polling_status(&env, None).await.status().as_u16(), 200);
        let minted = env.mint("33").await;
        let mut c = client::connect(
            &env.url(),
            Transport::Websocket,
            with_origin(&env, &minted.cookie_value, None),
        )
        .await;
        c.outcome().await.unwrap();
    }
);

on_both_backends!(
    missing_origin_can_be_required,
    |c: &mut sockgate::config::Config| {
        allowlist(c);
        c.require_origin = true;
    },
    |env: TestEnv| async move {
        assert_eq!(polling_status(&env, None).await.status().as_u16(), 403);
        assert_eq!(
            polling_status(&env, Some(ALLOWED)).await.status().as_u16(),
            200
        );
    }
);

on_both_backends!(
    cors_headers_for_allowed_origins_only,
    allowlist,
    |env: TestEnv| async move {
        let resp = polling_status(&env, Some(ALLOWED)).await;
        assert_eq!(resp.status().as_u16(), 200);
        let h = resp.headers();
        assert_eq!(h.get("access-control-allow-origin").unwrap(), ALLOWED);
        assert_eq!(h.get("access-control-allow-credentials").unwrap(), "true");
        let resp = reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/socket.io/?EIO=4&transport=polling", env.url()),
            )
            .header("Origin", ALLOWED)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        assert_eq!(
            resp.headers().get("access-control-allow-origin").unwrap(),
            ALLOWED
        );
    }
);

on_both_backends!(
    violations_are_rate_limited_in_log_and_audit_but_all_counted,
    allowlist,
    |env: TestEnv| async move {
        // One client, requests in parallel: the flood must outrun the limiter
        // (burst 50, then 10 a second) for the bound below to mean anything.
        let client = reqwest::Client::new();
        let url = format!("{}/socket.io/?EIO=4&transport=polling", env.url());
        let started = std::time::Instant::now();
        let statuses = futures_util::future::join_all((0..300).map(|_| {
            let req = client.get(&url).header("Origin", "http://flood.test");
            async move { req.send().await.unwrap().status().as_u16() }
        }))
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        assert!(statuses.iter().all(|s| *s == 403));
        let allowed_by_limiter = 50 + (elapsed * 10.0).ceil() as usize + 1;
        // The writer batches off the request path; give it time to flush all it was given.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rows = env.audit_rows("socket.origin_rejected", 1).await;
        assert!(!rows.is_empty());
        assert!(
            rows.len() <= allowed_by_limiter.min(299),
            "audit rows bounded: {} rows for 300 violations in {elapsed:.2}s",
            rows.len()
        );
        let metrics = reqwest::get(format!("{}/metrics", env.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("sockgate_origin_violations_total{transport=\"polling\"}"))
            .unwrap();
        assert!(line.ends_with(" 300"), "{line}");
    }
);

#[tokio::test]
async fn default_allowlist_is_the_app_url_then_the_servers_own() {
    let mut c = sockgate::config::Config::for_database("sqlite::memory:");
    c.allowed_origins = None;
    c.app_url = Some("https://app.example.com/some/path".into());
    let l = c.allowlist().unwrap();
    assert_eq!(l.describe(), "https://app.example.com");
    c.app_url = None;
    c.listen = "127.0.0.1:4000".parse().unwrap();
    assert_eq!(
        c.allowlist().unwrap().describe(),
        "http://127.0.0.1:4000, http://localhost:4000"
    );
    c.allowed_origins = Some("https://a.com, not an origin".into());
    assert!(c.allowlist().is_err(), "a bad entry is a start-up error");
}
