//! The Origin allowlist on both transports, through a real client and raw
//! HTTP, on SQLite and PostgreSQL.

#[macro_use]
mod common;

use std::time::Duration;

use common::client::{self, Options, Transport};
use common::wire;
use common::{Backend, TestEnv};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ALLOWED: &str = "http://allowed.test:8080";

fn allowlist(config: &mut sockgate::Config) {
    config.allowed_origins = Some(format!("{ALLOWED}, https://*.tenant.test"));
}

fn with_origin(env: &TestEnv, cookie: &str, origin: Option<&str>) -> Options {
    Options {
        cookie: Some(format!("{}={cookie}", env.config.cookie_name)),
        origin: origin.map(str::to_owned),
        ..Default::default()
    }
}

async fn polling_status(env: &TestEnv, origin: Option<&str>) -> reqwest::Response {
    let mut req = common::http().get(format!("{}/socket.io/?EIO=4&transport=polling", env.url()));
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

/// A GET over HTTP/2 with prior knowledge (h2c): status, headers, body.
async fn h2_get(env: &TestEnv, path: &str, origin: Option<&str>) -> (u16, http::HeaderMap, String) {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<bytes::Bytes>>();
    let mut req = http::Request::get(format!("{}{path}", env.url()));
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

on_both_backends!(
    http2_clients_meet_the_same_origin_guard,
    allowlist,
    |env: TestEnv| async move {
        let (status, _, body) = h2_get(&env, "/healthz", None).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let polling = "/socket.io/?EIO=4&transport=polling";
        let (status, _, body) = h2_get(&env, polling, Some("http://evil.test")).await;
        assert_eq!((status, body.as_str()), (403, "Origin not allowed"));
        let (status, headers, body) = h2_get(&env, polling, Some(ALLOWED)).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("0{\"sid\":"), "{body}");
        assert_eq!(headers.get("access-control-allow-origin").unwrap(), ALLOWED);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rows = env.audit_rows("socket.origin_rejected", 1).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].details.as_ref().unwrap()["origin"],
            "http://evil.test"
        );
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
    |c: &mut sockgate::Config| {
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
        let resp = common::http()
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
    no_cors_headers_for_socket_io_requests_without_an_origin,
    allowlist,
    |env: TestEnv| async move {
        // A non-browser client's long-poll: answered, with nothing a
        // browser's CORS check would read.
        let resp = polling_status(&env, None).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.text().await.unwrap().starts_with("0{"),
            "an open packet"
        );
        let resp = polling_status(&env, None).await;
        for name in [
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "vary",
        ] {
            assert!(resp.headers().get(name).is_none(), "{name} sent");
        }
        // Other routes keep `Vary: Origin` for caches, Origin or not.
        let health = common::http()
            .get(format!("{}/healthz", env.url()))
            .send()
            .await
            .unwrap();
        assert!(
            health
                .headers()
                .get_all("vary")
                .iter()
                .any(|v| v.to_str().unwrap().contains("origin")),
            "{:?}",
            health.headers()
        );
    }
);

on_both_backends!(
    violations_are_rate_limited_in_log_and_audit_but_all_counted,
    allowlist,
    |env: TestEnv| async move {
        // One client, requests in parallel: the flood must outrun the limiter
        // (burst 50, then 10 a second) for the bound below to mean anything.
        let client = common::http();
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
    let mut c = sockgate::Config::for_database("sqlite::memory:");
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

// Every path the engine serves is guarded, however it is spelled, and the
// guard judges exactly those: a spelling the engine does not serve is a 404
// with or without an allowed Origin.
on_both_backends!(
    every_spelling_of_the_engine_path_is_guarded,
    allowlist,
    |env: TestEnv| async move {
        let addr = env.server.local_addr;
        let evil = "Origin: https://evil.example";
        let good = format!("Origin: {ALLOWED}");
        for path in [
            "/socket.io",
            "/socket.io/",
            "/socket.io/x",
            "/socket.io/x/y",
            "/socket.io//",
        ] {
            let polling = format!("{path}?EIO=4&transport=polling");
            let (status, answer) =
                wire::raw(&addr, &wire::get(&polling, &[evil]), Duration::from_secs(5)).await;
            assert_eq!(status, 403, "polling {path} from evil: {answer}");
            let (status, answer) = wire::raw(
                &addr,
                &wire::get(&polling, &[&good]),
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(status, 200, "polling {path} allowed: {answer}");
            assert!(
                wire::body(&answer).starts_with("0{"),
                "an engine.io open packet: {answer}"
            );
            let upgrade = [
                "Connection: Upgrade",
                "Upgrade: websocket",
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ];
            let ws = format!("{path}?EIO=4&transport=websocket");
            let mut headers = upgrade.to_vec();
            headers.push(evil);
            let (status, _) =
                wire::raw(&addr, &wire::get(&ws, &headers), Duration::from_secs(2)).await;
            assert_eq!(status, 403, "websocket {path} from evil");
            let mut headers = upgrade.to_vec();
            headers.push(&good);
            let (status, _) =
                wire::raw(&addr, &wire::get(&ws, &headers), Duration::from_secs(1)).await;
            assert_eq!(status, 101, "websocket {path} allowed");
        }
        for path in [
            "/socket.iox",
            "/Socket.io/",
            "//socket.io/",
            "/x/socket.io/",
            "/socket%2Eio/",
        ] {
            let polling = format!("{path}?EIO=4&transport=polling");
            for origin in [evil, good.as_str()] {
                let (status, answer) = wire::raw(
                    &addr,
                    &wire::get(&polling, &[origin]),
                    Duration::from_secs(5),
                )
                .await;
                assert_eq!(
                    status, 404,
                    "{path} from {origin} is not the engine's: {answer}"
                );
            }
        }
        // The slash-less hijack: a victim's cookie from a disallowed origin
        // gets no socket on either transport.
        let minted = env.mint("33").await;
        let cookie = format!("Cookie: connect.sid={}", minted.cookie_value);
        let (status, _) = wire::raw(
            &addr,
            &wire::get("/socket.io?EIO=4&transport=polling", &[evil, &cookie]),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status, 403);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(env.audit_rows("socket.authenticated", 0).await.is_empty());
        let rows = env.audit_rows("socket.origin_rejected", 1).await;
        assert!(
            rows.iter()
                .any(|r| r.details.as_ref().unwrap()["path"] == "/socket.io")
        );
    }
);

on_both_backends!(
    several_origin_headers_are_refused,
    allowlist,
    |env: TestEnv| async move {
        let addr = env.server.local_addr;
        let good = format!("Origin: {ALLOWED}");
        for second in ["Origin: https://evil.example", good.as_str()] {
            let (status, _) = wire::raw(
                &addr,
                &wire::get("/socket.io/?EIO=4&transport=polling", &[&good, second]),
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(status, 403, "polling with {second} as well");
            let (status, _) = wire::raw(
                &addr,
                &wire::get(
                    "/socket.io/?EIO=4&transport=websocket",
                    &[
                        "Connection: Upgrade",
                        "Upgrade: websocket",
                        "Sec-WebSocket-Version: 13",
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                        &good,
                        second,
                    ],
                ),
                Duration::from_secs(2),
            )
            .await;
            assert_eq!(status, 403, "websocket with {second} as well");
        }
        let rows = env.audit_rows("socket.origin_rejected", 4).await;
        assert!(
            rows.iter()
                .all(|r| r.reason.as_deref() == Some("several origin headers"))
        );
    }
);

on_both_backends!(
    garbage_origins_are_answered_never_dropped,
    allowlist,
    |env: TestEnv| async move {
        let addr = env.server.local_addr;
        let origins: [&[u8]; 7] = [
            b"http:a",
            "https:/\u{e9}.com".as_bytes(),
            b"https:",
            b"http:/",
            b"\xff\xfe",
            "http:\u{e9}".as_bytes(),
            b"https://\xc3",
        ];
        for origin in origins {
            for (method, path, expected) in [
                ("GET", "/healthz", 200),
                ("GET", "/socket.io/?EIO=4&transport=polling", 403),
                ("POST", "/api/admin/guest/1/disconnect", 403),
            ] {
                let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\nOrigin: ").into_bytes();
                req.extend_from_slice(origin);
                req.extend_from_slice(b"\r\n\r\n");
                let (status, answer) = wire::raw(&addr, &req, Duration::from_secs(5)).await;
                assert_eq!(
                    status,
                    expected,
                    "{method} {path} with Origin {:?}: {answer:?}",
                    String::from_utf8_lossy(origin)
                );
                if expected == 200 {
                    assert!(
                        !answer
                            .to_ascii_lowercase()
                            .contains("access-control-allow-origin"),
                        "no CORS grant for garbage"
                    );
                }
            }
        }
        assert_eq!(wire::metric(&env.url(), "sockgate_panics_total").await, 0.0);
    }
);
