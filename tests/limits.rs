//! What an unauthenticated (or over-eager) client can make the server hold
//! or write: each limit crossed through a real client or raw HTTP, on
//! SQLite and PostgreSQL.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::client::{self, Options, Transport};
use common::{Backend, TestEnv};
use common::{engine_io, wire};
use futures_util::{SinkExt, StreamExt};
use sockgate::Config;
use tokio_tungstenite::tungstenite::Message;

fn polling(env: &TestEnv, sid: Option<&str>) -> String {
    match sid {
        Some(sid) => format!("{}/socket.io/?EIO=4&transport=polling&sid={sid}", env.url()),
        None => format!("{}/socket.io/?EIO=4&transport=polling", env.url()),
    }
}

/// A long-polling engine.io session's id, from its open packet.
async fn open_polling(env: &TestEnv, http: &reqwest::Client) -> String {
    let open = http.get(polling(env, None)).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let body = open.text().await.unwrap();
    let json: serde_json::Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    json["sid"].as_str().unwrap().to_owned()
}

async fn poll(env: &TestEnv, http: &reqwest::Client, sid: &str) -> (u16, String) {
    let resp = http
        .get(polling(env, Some(sid)))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn post(env: &TestEnv, http: &reqwest::Client, sid: &str, body: String) -> u16 {
    http.post(polling(env, Some(sid)))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

on_both_backends!(
    a_refused_connect_ends_the_engine_io_session,
    |_: &mut Config| {},
    |env: TestEnv| async move {
        // Long-polling: the refusal, then the close packet, then the session
        // is gone; a second CONNECT sent meanwhile is dropped unread.
        let http = common::http();
        let sid = open_polling(&env, &http).await;
        assert_eq!(post(&env, &http, &sid, "40".into()).await, 200);
        // The engine pings as soon as a session opens, so a poll may carry
        // a ping before (or without) the refusal.
        let mut first = Vec::new();
        while !first
            .iter()
            .any(|p: &String| p == r#"44{"message":"Authentication required"}"#)
        {
            let (_, body) = poll(&env, &http, &sid).await;
            first.extend(body.split('\u{1e}').map(str::to_owned));
            assert!(
                first.iter().all(|p| p == "2" || p.starts_with("44")),
                "{first:?}"
            );
        }
        assert_eq!(post(&env, &http, &sid, "40".into()).await, 200);
        // The close packet comes next: nothing but heartbeat pings before it
        // (one may be queued after the refusal, and then a poll carries it
        // alone), and no answer to the second CONNECT.
        let mut second: Vec<String> = Vec::new();
        while !second.iter().any(|p| p == "1") {
            assert!(second.len() < 5, "no close packet: {second:?}");
            let (_, body) = poll(&env, &http, &sid).await;
            second.extend(body.split('\u{1e}').map(str::to_owned));
            assert!(second.iter().all(|p| p == "1" || p == "2"), "{second:?}");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, _) = poll(&env, &http, &sid).await;
            if status == 400 {
                break;
            }
            assert!(Instant::now() < deadline, "the session is removed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Websocket: the refusal, then the close.
        let mut ws = engine_io::open(&env.server.local_addr, "").await.unwrap();
        engine_io::send_connect(&mut ws).await.unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
        {
            if let Message::Text(t) = msg {
                seen.push(t.to_string());
            }
        }
        let refusal = seen
            .iter()
            .position(|m| m.starts_with("44"))
            .expect("CONNECT_ERROR");
        assert!(
            seen[refusal..].iter().any(|m| m == "1"),
            "close after the refusal: {seen:?}"
        );
        // One attempt each, one audit row each.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rows = env.audit_rows("socket.auth_failed", 2).await;
        assert_eq!(rows.len(), 2, "the dropped second CONNECT wrote nothing");
    }
);

on_both_backends!(
    audit_rows_keep_only_a_few_bounded_headers,
    |_: &mut Config| {},
    |env: TestEnv| async move {
        // Many headers, all within the request-head limit (16 KiB).
        let mut headers: Vec<(String, String)> = (0..60)
            .map(|i| (format!("x-junk-{i}"), "j".repeat(100)))
            .collect();
        headers.push((
            "Referer".into(),
            "https://app.test/page?token=secret#frag".into(),
        ));
        headers.push(("User-Agent".into(), "u".repeat(2000)));
        headers.push(("Authorization".into(), "Bearer secret".into()));
        let mut c = client::connect(
            &env.url(),
            Transport::Polling,
            Options {
                cookie: Some("connect.sid=s%3Anot.signed".into()),
                headers,
                ..Default::default()
            },
        )
        .await;
        c.expect_refused("Invalid session").await;
        let rows = env.audit_rows("socket.auth_failed", 1).await;
        let headers = rows[0].headers.as_ref().unwrap();
        let text = headers.to_string();
        assert!(!text.contains("secret") && !text.contains("junk"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("cookie"));
        assert_eq!(headers["referer"], "https://app.test/page");
        assert_eq!(headers["user-agent"].as_str().unwrap().len(), 256);
        assert!(text.len() < 1024, "{} bytes", text.len());
    }
);

on_both_backends!(
    refusals_are_rate_limited_per_client_in_log_and_audit,
    |c: &mut Config| {
        c.limits.refusal_log_burst_per_ip = 5;
        c.limits.refusal_log_per_ip_per_sec = 1;
    },
    |env: TestEnv| async move {
        let started = Instant::now();
        for _ in 0..40 {
            match engine_io::handshake(&env.server.local_addr, "s%3Aforged.sig").await {
                Err(engine_io::HandshakeError::Refused(m)) => {
                    assert!(m.contains("Invalid session"))
                }
                other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rows = env.audit_rows("socket.auth_failed", 1).await;
        let budget = 5 + elapsed.ceil() as usize + 1;
        assert!(
            rows.len() <= budget,
            "{} rows for 40 refusals in {elapsed:.1}s",
            rows.len()
        );
        let base = env.url();
        let suppressed = wire::metric(&base, "sockgate_audit_suppressed_total").await;
        assert_eq!(suppressed as usize, 40 - rows.len());
        assert_eq!(
            wire::metric(&base, "sockgate_handshakes_total").await as usize,
            40,
            "every refusal is counted"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let _ = engine_io::handshake(&env.server.local_addr, "s%3Aforged.sig").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rows = env.audit_rows("socket.auth_failed", rows.len() + 1).await;
        let carried: u64 = rows
            .iter()
            .filter_map(|r| r.details.as_ref()?["suppressed_since_last"].as_u64())
            .sum();
        assert_eq!(
            carried, suppressed as u64,
            "the next row carries what was left out"
        );
    }
);

on_both_backends!(
    oversized_messages_are_refused_before_they_are_parsed,
    |c: &mut Config| {
        c.limits.ws_max_message_bytes = 8 * 1024;
        c.limits.ws_max_frame_bytes = 4 * 1024;
        c.limits.max_polling_payload_bytes = 8 * 1024;
    },
    |env: TestEnv| async move {
        let minted = env.mint("71").await;
        let huge_auth = format!(r#"40{{"sessionId":"{}"}}"#, "A".repeat(64 * 1024));
        // Websocket: a CONNECT over the message limit closes the connection
        // without an answer to it.
        let mut ws = engine_io::open(&env.server.local_addr, "").await.unwrap();
        let _ = ws.send(Message::text(huge_auth.clone())).await;
        let mut answered = false;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
        {
            if matches!(&msg, Message::Text(t) if t.starts_with("4")) {
                answered = true;
            }
        }
        assert!(!answered, "the oversized CONNECT was not processed");
        // Long-polling: a POST over the payload limit is refused.
        let http = common::http();
        let sid = open_polling(&env, &http).await;
        let status = post(&env, &http, &sid, huge_auth).await;
        assert_ne!(status, 200);
        // A frame over the frame limit (inside the message limit) too.
        let mut ws = engine_io::handshake(&env.server.local_addr, &minted.cookie_value)
            .await
            .unwrap();
        let _ = ws
            .send(Message::text(format!(
                "42[\"x\",\"{}\"]",
                "b".repeat(6 * 1024)
            )))
            .await;
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a frame over the limit ends the connection");
        // Within the limits everything still works.
        let mut c = client::connect(
            &env.url(),
            Transport::Polling,
            Options {
                cookie: Some(format!("connect.sid={}", minted.cookie_value)),
                ..Default::default()
            },
        )
        .await;
        c.outcome().await.unwrap();
        assert_eq!(c.whoami().await["userId"], "71");
        c.disconnect().await;
    }
);

on_both_backends!(
    request_heads_are_bounded_in_size_and_time,
    |c: &mut Config| {
        c.limits.max_header_bytes = 8192;
        c.limits.header_read_timeout = Duration::from_secs(1);
    },
    |env: TestEnv| async move {
        // The whole environment, not just its address, lives as long as the
        // test (a closure would capture only the field).
        let env = env;
        let addr = env.server.local_addr;
        let big = format!("X-Big: {}", "b".repeat(12 * 1024));
        let (status, _) = wire::raw(
            &addr,
            &wire::get("/healthz", &[&big]),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status, 431);
        let (status, _) =
            wire::raw(&addr, &wire::get("/healthz", &[]), Duration::from_secs(5)).await;
        assert_eq!(status, 200);
        // One header line every 300 ms: cut at the 1 s read timeout, not
        // held for as long as the client keeps dripping.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut cut = false;
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if stream
                .write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                cut = true;
                break;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    cut = true;
                    break;
                }
                Ok(Ok(_)) => {
                    // hyper answers 408 before it closes.
                    cut = true;
                    break;
                }
                Err(_) => {}
            }
        }
        assert!(cut, "a dripping client is cut off");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        // A client that connects and sends nothing is cut at the same
        // timeout.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(4), silent.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection is closed: {read:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
);

on_both_backends!(
    an_engine_session_that_never_connects_is_closed,
    |c: &mut Config| c.limits.connect_timeout = Duration::from_secs(1),
    |env: TestEnv| async move {
        let http = common::http();
        let sid = open_polling(&env, &http).await;
        let started = Instant::now();
        loop {
            let (status, body) = poll(&env, &http, &sid).await;
            if status == 400 || body == "1" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "still open: {status} {body:?}"
            );
        }
        assert!(started.elapsed() >= Duration::from_millis(900));
    }
);

on_both_backends!(
    connections_per_client_ip_are_bounded,
    |c: &mut Config| c.limits.max_connections_per_ip = 3,
    |env: TestEnv| async move {
        let addr = env.server.local_addr;
        let held: Vec<_> =
            futures_util::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, answer) =
            wire::raw(&addr, &wire::get("/healthz", &[]), Duration::from_secs(5)).await;
        assert_eq!(status, 503, "{answer}");
        assert_eq!(wire::body(&answer), "Too many connections");
        drop(held);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _) =
            wire::raw(&addr, &wire::get("/healthz", &[]), Duration::from_secs(5)).await;
        assert_eq!(status, 200, "a closed connection frees its place");
        // A websocket counts for as long as it is open.
        let minted = env.mint("72").await;
        let sockets: Vec<_> = futures_util::future::join_all(
            (0..3).map(|_| engine_io::handshake(&addr, &minted.cookie_value)),
        )
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _) =
            wire::raw(&addr, &wire::get("/healthz", &[]), Duration::from_secs(5)).await;
        assert_eq!(status, 503);
        drop(sockets);
        let rows = env.audit_rows("limit.refused", 2).await;
        assert!(
            rows.iter()
                .all(|r| r.reason.as_deref() == Some("connections_per_ip"))
        );
        assert!(
            rows.iter()
                .all(|r| r.client_ip.as_deref() == Some("127.0.0.1"))
        );
        let refused = wire::metric(&env.url(), "sockgate_limit_refusals_total").await;
        assert_eq!(refused, 2.0, "each refused connection counted once");
    }
);

on_both_backends!(
    sockets_per_session_and_per_user_refuse_the_newest,
    |c: &mut Config| {
        c.limits.max_sockets_per_session = 2;
        c.limits.max_sockets_per_user = 3;
    },
    |env: TestEnv| async move {
        let a = env.mint("73").await;
        let b = env.mint("73").await;
        let opts = |cookie: &str| Options {
            cookie: Some(format!("connect.sid={cookie}")),
            ..Default::default()
        };
        let mut open = Vec::new();
        for transport in [Transport::Websocket, Transport::Polling] {
            let mut c = client::connect(&env.url(), transport, opts(&a.cookie_value)).await;
            c.outcome().await.unwrap();
            open.push(c);
        }
        let mut third =
            client::connect(&env.url(), Transport::Websocket, opts(&a.cookie_value)).await;
        third.expect_refused("Too many connections").await;
        let mut other =
            client::connect(&env.url(), Transport::Polling, opts(&b.cookie_value)).await;
        other.outcome().await.unwrap();
        let mut fourth =
            client::connect(&env.url(), Transport::Websocket, opts(&b.cookie_value)).await;
        fourth.expect_refused("Too many connections").await;
        // The ones already open were never cut.
        for c in &mut open {
            assert_eq!(c.whoami().await["userId"], "73");
        }
        // A closed socket frees its place.
        let first = open.remove(0);
        first.disconnect().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut again =
            client::connect(&env.url(), Transport::Websocket, opts(&a.cookie_value)).await;
        again.outcome().await.unwrap();
        let rows = env.audit_rows("limit.refused", 2).await;
        let mut reasons: Vec<_> = rows.iter().filter_map(|r| r.reason.clone()).collect();
        reasons.sort();
        assert_eq!(reasons, ["sockets_per_session", "sockets_per_user"]);
        assert!(rows.iter().all(|r| r.user_id.as_deref() == Some("73")));
    }
);

on_both_backends!(
    handshakes_per_client_ip_are_rate_limited,
    |c: &mut Config| {
        c.limits.handshake_burst_per_ip = 3;
        c.limits.handshakes_per_ip_per_sec = 1;
    },
    |env: TestEnv| async move {
        let http = common::http();
        let mut statuses = Vec::new();
        let mut sid = None;
        let started = Instant::now();
        for _ in 0..8 {
            let resp = http.get(polling(&env, None)).send().await.unwrap();
            statuses.push(resp.status().as_u16());
            let body = resp.text().await.unwrap();
            if body.starts_with('0') && sid.is_none() {
                let json: serde_json::Value = serde_json::from_str(&body[1..]).unwrap();
                sid = json["sid"].as_str().map(str::to_owned);
            } else if !body.starts_with('0') {
                assert_eq!(body, "Too many handshakes");
            }
        }
        // A burst of 3, then one a second: however slow this machine is.
        let refill = started.elapsed().as_secs_f64().ceil() as usize;
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let refused = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(ok + refused, 8, "{statuses:?}");
        assert!((3..=3 + refill).contains(&ok), "{statuses:?} in {refill} s");
        assert_eq!(&statuses[..3], &[200, 200, 200]);
        // Requests of an open session are not handshakes.
        let (status, _) = poll(&env, &http, sid.as_deref().unwrap()).await;
        assert_eq!(status, 200);
        let rows = env.audit_rows("limit.refused", 1).await;
        assert!(
            rows.iter()
                .all(|r| r.reason.as_deref() == Some("handshakes_per_ip"))
        );
        assert_eq!(
            wire::metric(&env.url(), "sockgate_limit_refusals_total").await as usize,
            refused
        );
    }
);
