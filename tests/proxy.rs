//! Client events forwarded to the Node app (EVENT_PROXY_URL), through a real
//! rust_socketio client on SQLite and PostgreSQL, against a small HTTP app
//! in the test that checks every request's signature and answers by event
//! name: the answer is the ack, failures are error acks, the allowlist and
//! the in-flight budget refuse, rooms come from the answer (and the app's
//! emitter reaches the socket there), and a closed socket's answer changes
//! nothing. The README's Node verification snippet
//! is run with `node` against sockgate's real requests.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use hmac::{Hmac, Mac};
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Payload, TransportType};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc, oneshot};

use common::{Backend, TestEnv, now_secs};

const PROXY_SECRET: &str = "proxy-test-secret-of-some-length";
const STEP: Duration = Duration::from_secs(10);

/// One request the app received, with what it made of the signature.
#[derive(Debug, Clone)]
struct Received {
    body: Value,
    raw: Vec<u8>,
    timestamp: String,
    verified: bool,
}

/// The Node app's part: verifies, records and answers.
#[derive(Clone)]
struct App {
    url: String,
    calls: Arc<Mutex<Vec<Received>>>,
    /// `chat:hold` waits for a permit.
    gate: Arc<Semaphore>,
}

impl App {
    async fn start() -> App {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sockgate/events", listener.local_addr().unwrap());
        let app = App { url, calls, gate };
        let router = axum::Router::new()
            .route("/sockgate/events", axum::routing::post(answer))
            .with_state(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        app
    }

    fn calls(&self, event: &str) -> Vec<Received> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.body["event"] == event)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Received> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until `n` calls of `event` arrived.
    async fn wait_for(&self, event: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + STEP;
        while self.calls(event).len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the app got {} {event} calls, not {n}",
                self.calls(event).len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn expected_signature(timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(PROXY_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn answer(State(app): State<App>, headers: HeaderMap, raw: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let timestamp = header("x-sockgate-timestamp");
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (now_secs() - t).abs() < 300);
    let verified = fresh
        && header("x-sockgate-signature") == expected_signature(&timestamp, &raw)
        && header("content-type") == "application/json";
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    app.calls.lock().unwrap().push(Received {
        body: body.clone(),
        raw: raw.to_vec(),
        timestamp,
        verified,
    });
    if !verified {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let args = body["args"].clone();
    let json = |v: Value| axum::Json(v).into_response();
    match body["event"].as_str().unwrap_or("") {
        "chat:echo" => json(json!({
            "ack": {"args": args, "userId": body["userId"], "rooms": body["rooms"]}
        })),
        "chat:nothing" => StatusCode::NO_CONTENT.into_response(),
        "chat:fail" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "chat:plain" => json(json!({"text": "the ack itself, not under `ack`"})),
        "chat:slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json(json!({"ack": "late"}))
        }
        "chat:hold" => {
            app.gate.acquire().await.unwrap().forget();
            json(json!({"ack": "released", "join": ["held"]}))
        }
        "room:join" => json(json!({"ack": "joined", "join": [args[0]]})),
        "room:leave" => json(json!({"leave": [args[0]]})),
        "room:steal" => json(json!({"ack": "never", "join": ["user:someone-else"]})),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn proxied(
    url: &str,
    tweak: impl FnOnce(&mut sockgate::Config),
) -> impl FnOnce(&mut sockgate::Config) {
    let url = url.to_owned();
    move |config: &mut sockgate::Config| {
        config.event_proxy_url = Some(url);
        config.event_proxy_secret = Some(PROXY_SECRET.into());
        config.event_proxy_events = Some("chat:*, room:*".into());
        tweak(config);
    }
}

/// The app, and a server that forwards to it configured by `tweak`.
async fn setup(
    backend: Backend,
    tweak: impl FnOnce(&mut sockgate::Config),
) -> Option<(TestEnv, App)> {
    let app = App::start().await;
    let Some(env) = TestEnv::start_with(backend, proxied(&app.url, tweak)).await else {
        assert!(!matches!(backend, Backend::Sqlite), "SQLite always starts");
        return None;
    };
    Some((env, app))
}

/// A rust_socketio client that can ask for acks and hears `session_expired`,
/// `news` and the close.
struct Sio {
    client: Client,
    seen: mpsc::UnboundedReceiver<String>,
}

impl Sio {
    async fn connect(env: &TestEnv, transport: TransportType, cookie_value: &str) -> Sio {
        let cookie = format!("connect.sid={cookie_value}");
        Self::open(env, transport, |b| b.opening_header("Cookie", cookie)).await
    }

    /// With the session in the `auth` payload (`s:<sid>.<sig>`), no cookie.
    async fn connect_with_auth(env: &TestEnv, transport: TransportType, signed: &str) -> Sio {
        let auth = json!({ "sessionId": signed });
        Self::open(env, transport, |b| b.auth(auth)).await
    }

    async fn open(
        env: &TestEnv,
        transport: TransportType,
        credentials: impl FnOnce(ClientBuilder) -> ClientBuilder,
    ) -> Sio {
        let (tx, seen) = mpsc::unbounded_channel();
        let (open_tx, mut open) = mpsc::unbounded_channel();
        let on = |name: &'static str, tx: mpsc::UnboundedSender<String>| {
            move |_: Payload, _: Client| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(name.to_owned());
                }
                .boxed()
            }
        };
        let builder = ClientBuilder::new(env.url())
            .transport_type(transport)
            .reconnect(false)
            .reconnect_on_disconnect(false);
        let client = credentials(builder)
            .on("open", on("open", open_tx))
            .on("close", on("close", tx.clone()))
            .on("session_expired", on("session_expired", tx.clone()))
            .on("news", on("news", tx))
            .connect()
            .await
            .expect("transport opens");
        tokio::time::timeout(STEP, open.recv())
            .await
            .expect("the namespace connects");
        Sio { client, seen }
    }

    /// Emits `event` with `args` and waits for the ack's value.
    async fn ack(&self, event: &str, args: Vec<Value>) -> Value {
        self.ack_pending(event, args)
            .await
            .await
            .unwrap_or_else(|e| panic!("{event}: {e}"))
    }

    /// Emits and returns the ack still to come.
    async fn ack_pending<P: Into<Payload>>(
        &self,
        event: &str,
        args: P,
    ) -> impl Future<Output = Result<Value, String>> + use<P> {
        let (tx, rx) = oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        self.client
            .emit_with_ack(event, args, 2 * STEP, move |payload: Payload, _| {
                let tx = tx.clone();
                async move {
                    // rust_socketio hands an ack's whole argument array
                    // over as one value; sockgate acks with one argument.
                    let value = match payload {
                        Payload::Text(v) => match v.as_slice() {
                            [Value::Array(args)] if args.len() == 1 => args[0].clone(),
                            _ => Value::Array(v),
                        },
                        other => json!(format!("{other:?}")),
                    };
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(value);
                    }
                }
                .boxed()
            })
            .await
            .unwrap_or_else(|e| panic!("emit {event}: {e}"));
        let event = event.to_owned();
        async move {
            tokio::time::timeout(STEP, rx)
                .await
                .map_err(|_| format!("no ack for {event} within {STEP:?}"))?
                .map_err(|_| format!("ack of {event} dropped"))
        }
    }

    async fn emit(&self, event: &str, args: Vec<Value>) {
        self.client.emit(event, args).await.unwrap();
    }

    async fn expect(&mut self, what: &str) {
        loop {
            match tokio::time::timeout(STEP, self.seen.recv()).await {
                Ok(Some(seen)) if seen == what => return,
                Ok(Some(_)) => continue,
                _ => panic!("no {what} within {STEP:?}"),
            }
        }
    }

    /// Nothing arrives for a moment: no close, no `news`.
    async fn expect_quiet(&mut self) {
        if let Ok(Some(seen)) =
            tokio::time::timeout(Duration::from_millis(700), self.seen.recv()).await
        {
            panic!("unexpected {seen}");
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(STEP, self.client.disconnect()).await;
    }
}

const TRANSPORTS: [TransportType; 2] = [TransportType::Polling, TransportType::Websocket];

/// `sockgate_<name>` samples from `/metrics` whose labels contain `labels`,
/// summed.
async fn metric(env: &TestEnv, name: &str, labels: &str) -> f64 {
    let text = common::http()
        .get(format!("{}/metrics", env.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("sockgate_{name}")) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn error_code(ack: &Value) -> &str {
    ack["error"]["code"].as_str().unwrap_or("")
}

on_both_backends_raw!(
    the_answer_is_the_ack_and_the_request_is_signed,
    |backend| async move {
        let Some((env, app)) = setup(backend, |_| {}).await else {
            return;
        };
        let minted = env.mint("41").await;
        for transport in TRANSPORTS {
            let c = Sio::connect(&env, transport, &minted.cookie_value).await;
            let ack = c
                .ack(
                    "chat:echo",
                    vec![json!({"text": "hi"}), json!(2), json!([true])],
                )
                .await;
            assert_eq!(ack["args"], json!([{"text": "hi"}, 2, [true]]), "{ack}");
            assert_eq!(ack["userId"], "41");
            // An empty 2xx is an ack of null.
            assert_eq!(c.ack("chat:nothing", vec![]).await, Value::Null);
            c.close().await;
        }
        let calls = app.all();
        assert_eq!(calls.len(), 4);
        for call in &calls {
            assert!(call.verified, "signature checked by the app: {call:?}");
            let text = String::from_utf8_lossy(&call.raw);
            assert!(!text.contains(&minted.sid), "no session id in {text}");
            assert!(!text.contains(&minted.cookie_value), "no cookie in {text}");
            assert!(call.body.get("cookie").is_none());
            assert_eq!(call.body["userId"], "41");
            assert_eq!(
                call.body["sessionRef"],
                sockgate::session::fingerprint(&minted.sid)
            );
            assert!(
                call.body["socketId"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            );
            assert!(
                call.body["rooms"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("user:41"))
            );
            assert!((now_secs() - call.timestamp.parse::<i64>().unwrap()).abs() < 60);
        }
        assert_eq!(calls[1].body["args"], json!([]));
        assert_ne!(
            calls[0].body["socketId"], calls[2].body["socketId"],
            "two sockets"
        );
        assert_eq!(
            metric(&env, "proxy_calls_total", "outcome=\"ok\"").await,
            4.0
        );
        assert_eq!(metric(&env, "proxy_seconds_count", "").await, 4.0);
    }
);

on_both_backends_raw!(
    failures_become_error_acks_and_are_audited,
    |backend| async move {
        let Some((env, app)) = setup(backend, |_| {}).await else {
            return;
        };
        let minted = env.mint("42").await;
        let c = Sio::connect(&env, TransportType::Websocket, &minted.cookie_value).await;
        let ack = c.ack("chat:fail", vec![]).await;
        assert_eq!(
            ack,
            json!({"error": {"code": "proxy_status", "status": 503, "message": "The app refused the event"}})
        );
        let ack = c.ack("chat:unknown", vec![]).await;
        assert_eq!(error_code(&ack), "proxy_status");
        assert_eq!(ack["error"]["status"], 404);
        for event in ["chat:plain", "room:steal"] {
            let ack = c.ack(event, vec![]).await;
            assert_eq!(error_code(&ack), "proxy_bad_answer", "{event}: {ack}");
        }
        // The refused join changed nothing.
        let ack = c.ack("chat:echo", vec![]).await;
        assert_eq!(ack["rooms"], json!(["user:42"]));
        c.close().await;
        assert_eq!(app.all().len(), 5);

        let rows = env.audit_rows("proxy.refused", 4).await;
        let mut reasons: Vec<_> = rows.iter().filter_map(|r| r.reason.as_deref()).collect();
        reasons.sort_unstable();
        assert_eq!(
            reasons,
            [
                "proxy_bad_answer",
                "proxy_bad_answer",
                "proxy_status",
                "proxy_status"
            ]
        );
        for row in &rows {
            assert_eq!(row.user_id.as_deref(), Some("42"));
            assert_eq!(
                row.session_ref.as_deref(),
                Some(sockgate::session::fingerprint(&minted.sid).as_str())
            );
            let details = row.details.as_ref().unwrap();
            assert!(details["elapsed_ms"].is_u64(), "{details}");
            assert!(!details.to_string().contains(PROXY_SECRET));
        }
        assert!(
            rows.iter()
                .any(|r| r.details.as_ref().unwrap()["event"] == "chat:fail")
        );
        assert_eq!(
            metric(&env, "proxy_calls_total", "outcome=\"proxy_status\"").await,
            2.0
        );
        assert_eq!(
            metric(&env, "proxy_calls_total", "outcome=\"proxy_bad_answer\"").await,
            2.0
        );
        assert_eq!(metric(&env, "proxy_seconds_count", "").await, 5.0);
    }
);

on_both_backends_raw!(
    a_slow_app_times_out_into_an_error_ack,
    |backend| async move {
        let Some((env, _app)) = setup(backend, |c| c.event_proxy_timeout_ms = 300).await else {
            return;
        };
        let minted = env.mint("43").await;
        let c = Sio::connect(&env, TransportType::Polling, &minted.cookie_value).await;
        let started = std::time::Instant::now();
        let ack = c.ack("chat:slow", vec![]).await;
        assert_eq!(
            ack,
            json!({"error": {"code": "proxy_timeout", "message": "The app did not answer in time"}})
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // The socket still works.
        assert_eq!(c.ack("chat:echo", vec![json!(1)]).await["args"], json!([1]));
        c.close().await;
        let rows = env.audit_rows("proxy.refused", 1).await;
        assert_eq!(rows[0].reason.as_deref(), Some("proxy_timeout"));
        assert_eq!(
            metric(&env, "proxy_calls_total", "outcome=\"proxy_timeout\"").await,
            1.0
        );
    }
);

on_both_backends_raw!(
    events_outside_the_allowlist_are_refused_and_never_forwarded,
    |backend| async move {
        let Some((env, app)) = setup(backend, |_| {}).await else {
            return;
        };
        let minted = env.mint("44").await;
        let mut c = Sio::connect(&env, TransportType::Websocket, &minted.cookie_value).await;
        for event in ["admin:drop", "chat", "xchat:echo", "CHAT:echo"] {
            let ack = c.ack(event, vec![json!("x")]).await;
            assert_eq!(
                ack,
                json!({"error": {"code": "event_not_allowed", "message": "Event not allowed"}}),
                "{event}"
            );
        }
        // Without an ack: refused all the same, and nothing is sent back.
        c.emit("admin:drop", vec![json!("y")]).await;
        // `whoami` stays sockgate's own.
        let ack = c.ack("whoami", vec![]).await;
        assert_eq!(ack["userId"], "44");
        assert_eq!(c.ack("chat:echo", vec![]).await["userId"], "44");
        assert_eq!(app.all().len(), 1, "only chat:echo reached the app");

        let rows = env.audit_rows("proxy.refused", 5).await;
        assert_eq!(rows.len(), 5);
        assert!(
            rows.iter()
                .all(|r| r.reason.as_deref() == Some("event_not_allowed")
                    && r.user_id.as_deref() == Some("44"))
        );
        for row in &rows {
            let details = row.details.as_ref().unwrap();
            assert!(details["elapsed_ms"].is_null(), "not a call: {details}");
        }
        let events: Vec<_> = rows
            .iter()
            .map(|r| {
                r.details.as_ref().unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(events.iter().filter(|e| *e == "admin:drop").count(), 2);
        assert_eq!(
            metric(&env, "proxy_calls_total", "outcome=\"event_not_allowed\"").await,
            5.0
        );
        assert_eq!(
            metric(&env, "proxy_seconds_count", "").await,
            1.0,
            "refusals are not calls"
        );
        c.expect_quiet().await;
        c.close().await;
    }
);

on_both_backends_raw!(
    calls_over_the_in_flight_limit_are_refused,
    |backend| async move {
        let Some((env, app)) = setup(backend, |c| c.event_proxy_max_in_flight = 2).await else {
            return;
        };
        let minted = env.mint("45").await;
        let c = Sio::connect(&env, TransportType::Websocket, &minted.cookie_value).await;
        let first = c.ack_pending("chat:hold", vec![json!(1)]).await;
        let second = c.ack_pending("chat:hold", vec![json!(2)]).await;
        app.wait_for("chat:hold", 2).await;
        let third = c.ack("chat:hold", vec![json!(3)]).await;
        assert_eq!(
            third,
            json!({"error": {"code": "too_many_in_flight", "message": "Too many events waiting for an answer"}})
        );
        // Another socket of the same user has a budget of its own.
        let other = Sio::connect(&env, TransportType::Polling, &minted.cookie_value).await;
        assert_eq!(other.ack("chat:echo", vec![]).await["userId"], "45");
        app.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), "released");
        assert_eq!(second.await.unwrap(), "released");
        // Answered calls give their place back.
        let again = c.ack_pending("chat:hold", vec![json!(4)]).await;
        app.gate.add_permits(1);
        assert_eq!(again.await.unwrap(), "released");
        assert_eq!(
            app.calls("chat:hold").len(),
            3,
            "the refused call never reached the app"
        );
        let rows = env.audit_rows("proxy.refused", 1).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].reason.as_deref(), Some("too_many_in_flight"));
        assert_eq!(
            metric(&env, "proxy_calls_total", "outcome=\"too_many_in_flight\"").await,
            1.0
        );
        c.close().await;
        other.close().await;
    }
);

on_both_backends_raw!(
    the_answer_puts_the_socket_in_rooms_and_takes_it_out,
    |backend| async move {
        let Some((env, _app)) = setup(backend, |_| {}).await else {
            return;
        };
        let minted = env.mint("46").await;
        for transport in TRANSPORTS {
            let c = Sio::connect(&env, transport, &minted.cookie_value).await;
            assert_eq!(
                c.ack("room:join", vec![json!("chat:lobby")]).await,
                "joined"
            );
            assert_eq!(
                c.ack("room:join", vec![json!("chat:other")]).await,
                "joined"
            );
            let rooms = c.ack("chat:echo", vec![]).await["rooms"].clone();
            assert_eq!(rooms, json!(["chat:lobby", "chat:other", "user:46"]));
            assert_eq!(
                c.ack("room:leave", vec![json!("chat:lobby")]).await,
                Value::Null
            );
            let rooms = c.ack("chat:echo", vec![]).await["rooms"].clone();
            assert_eq!(rooms, json!(["chat:other", "user:46"]));
            // Rooms are the app's to give: a client cannot ask for one.
            let ack = c.ack("join", vec![json!("chat:lobby")]).await;
            assert_eq!(error_code(&ack), "event_not_allowed");
            c.close().await;
        }
    }
);

on_both_backends_raw!(
    the_cookie_is_forwarded_only_when_asked,
    |backend| async move {
        let Some((env, app)) = setup(backend, |c| c.event_proxy_forward_cookie = true).await else {
            return;
        };
        let minted = env.mint("47").await;
        let c = Sio::connect(&env, TransportType::Polling, &minted.cookie_value).await;
        c.ack("chat:echo", vec![]).await;
        c.close().await;
        // The session from `auth.sessionId` rather than a cookie: the app
        // gets the cookie its own express-session would read all the same.
        let c = Sio::connect_with_auth(&env, TransportType::Websocket, &minted.signed).await;
        c.ack("chat:echo", vec![]).await;
        c.close().await;
        let calls = app.calls("chat:echo");
        assert_eq!(calls.len(), 2);
        for call in calls {
            assert!(call.verified);
            assert_eq!(
                call.body["cookie"],
                format!("connect.sid={}", minted.cookie_value)
            );
        }
    }
);

on_both_backends_raw!(
    an_answer_for_a_socket_whose_session_ended_changes_nothing,
    |backend| async move {
        let Some((env, app)) = setup(backend, |c| {
            c.session_check_interval = Duration::from_millis(300);
            c.session_refresh_window = Duration::ZERO;
        })
        .await
        else {
            return;
        };
        let minted = env.mint("48").await;
        let mut c = Sio::connect(&env, TransportType::Websocket, &minted.cookie_value).await;
        let pending = c.ack_pending("chat:hold", Vec::<Value>::new()).await;
        app.wait_for("chat:hold", 1).await;
        env.server
            .state
            .auth
            .store
            .destroy(&minted.sid)
            .await
            .unwrap();
        c.expect("session_expired").await;
        c.expect("close").await;
        app.gate.add_permits(1);
        let deadline = tokio::time::Instant::now() + STEP;
        while metric(&env, "proxy_calls_total", "outcome=\"socket_closed\"").await < 1.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dropped answer is counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ack = tokio::time::timeout(Duration::from_millis(500), pending).await;
        assert!(
            ack.is_err() || ack.unwrap().is_err(),
            "no ack reaches a closed socket"
        );
        let rows = env.audit_rows("proxy.refused", 1).await;
        assert_eq!(rows[0].reason.as_deref(), Some("socket_closed"));
        assert_eq!(
            metric(&env, "proxy_calls_total", "outcome=\"ok\"").await,
            0.0
        );
    }
);

on_both_backends_raw!(
    an_unreachable_app_and_binary_arguments_get_error_acks,
    |backend| async move {
        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", closed.local_addr().unwrap());
        drop(closed);
        let Some(env) = TestEnv::start_with(backend, proxied(&url, |_| {})).await else {
            return;
        };
        let minted = env.mint("50").await;
        let c = Sio::connect(&env, TransportType::Websocket, &minted.cookie_value).await;
        let ack = c.ack("chat:echo", vec![json!(1)]).await;
        assert_eq!(
            ack,
            json!({"error": {"code": "proxy_unreachable", "message": "The app is unavailable"}})
        );
        c.close().await;
        // rust_socketio 0.6 sends a binary event with an ack as a BINARY_ACK
        // packet: spoken directly instead.
        let ack = binary_event_ack(&env, &minted.cookie_value).await;
        assert_eq!(error_code(&ack), "event_unreadable", "{ack}");
        let rows = env.audit_rows("proxy.refused", 2).await;
        let mut reasons: Vec<_> = rows.iter().filter_map(|r| r.reason.as_deref()).collect();
        reasons.sort_unstable();
        assert_eq!(reasons, ["event_unreadable", "proxy_unreachable"]);
    }
);

/// `chat:echo` with one binary argument over a raw websocket, asking for
/// an ack: the ack's argument.
async fn binary_event_ack(env: &TestEnv, cookie_value: &str) -> Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = common::engine_io::handshake(&env.server.local_addr, cookie_value)
        .await
        .unwrap_or_else(|e| panic!("handshake: {e:?}"));
    ws.send(Message::text(
        r#"451-7["chat:echo",{"_placeholder":true,"num":0}]"#,
    ))
    .await
    .unwrap();
    ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    loop {
        let frame = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("an ack")
            .expect("the websocket stays open")
            .unwrap();
        if let Message::Text(text) = frame {
            if let Some(args) = text.strip_prefix("437") {
                let args: Vec<Value> = serde_json::from_str(args).unwrap();
                return args[0].clone();
            }
            if text.as_str() == "2" {
                ws.send(Message::text("3")).await.unwrap();
            }
        }
    }
}

/// Runs the official `@socket.io/postgres-emitter` as the app would
/// (`tests/fixtures/emitters/emit.js`) on the test's database.
async fn app_emits(env: &TestEnv, spec: Value) {
    common::node_app::emit(&env.db.url, &spec).await;
}

/// The room an answer put a socket in is a room like any other: the app's
/// emitter reaches it there, and no longer once an answer took it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_from_the_answer_hears_the_apps_emitter() {
    let Some((env, _app)) = setup(Backend::PG, |_| {}).await else {
        return;
    };
    let minted = env.mint("51").await;
    let mut joined = Sio::connect(&env, TransportType::Websocket, &minted.cookie_value).await;
    let mut other = Sio::connect(&env, TransportType::Polling, &minted.cookie_value).await;
    assert_eq!(
        joined.ack("room:join", vec![json!("chat:lobby")]).await,
        "joined"
    );
    let news = json!({"op": "emit", "to": ["chat:lobby"], "event": "news", "args": ["hi"]});
    app_emits(&env, news.clone()).await;
    joined.expect("news").await;
    other.expect_quiet().await;
    assert_eq!(
        joined.ack("room:leave", vec![json!("chat:lobby")]).await,
        Value::Null
    );
    app_emits(&env, news).await;
    joined.expect_quiet().await;
    joined.close().await;
    other.close().await;
}

/// What must come with EVENT_PROXY_URL, and no error shows the secret.
#[tokio::test]
async fn the_proxy_settings_are_checked_at_start() {
    let db = common::TestDb::create(Backend::Sqlite).await.unwrap();
    let base = || {
        let mut config = common::test_config(&db);
        config.event_proxy_url = Some("http://127.0.0.1:9/events".into());
        config.event_proxy_secret = Some(PROXY_SECRET.into());
        config.event_proxy_events = Some("chat:*".into());
        config
    };
    type Tweak = Box<dyn Fn(&mut sockgate::Config)>;
    let cases: Vec<(Tweak, &str)> = vec![
        (
            Box::new(|c| c.event_proxy_secret = None),
            "EVENT_PROXY_SECRET is required",
        ),
        (
            Box::new(|c| c.event_proxy_events = None),
            "EVENT_PROXY_EVENTS is required",
        ),
        (
            Box::new(|c| c.event_proxy_events = Some(" , ".into())),
            "EVENT_PROXY_EVENTS names no event",
        ),
        (
            Box::new(|c| c.event_proxy_url = Some("ftp://example.com/x".into())),
            "EVENT_PROXY_URL is not",
        ),
        (
            Box::new(|c| c.event_proxy_url = Some("not a url".into())),
            "EVENT_PROXY_URL is not",
        ),
        (
            Box::new(|c| c.event_proxy_timeout_ms = 0),
            "EVENT_PROXY_TIMEOUT_MS must be at least 1",
        ),
        (
            Box::new(|c| c.event_proxy_max_in_flight = 0),
            "EVENT_PROXY_MAX_IN_FLIGHT must be at least 1",
        ),
    ];
    for (tweak, expected) in cases {
        let mut config = base();
        tweak(&mut config);
        let error = match sockgate::server::prepare(config).await {
            Ok(_) => panic!("started; expected {expected}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(expected), "{error}");
        assert!(!error.contains(PROXY_SECRET), "{error}");
    }
    // Without a URL nothing else is needed.
    let mut config = common::test_config(&db);
    config.event_proxy_events = None;
    assert!(sockgate::server::prepare(config).await.is_ok());
}

/// The README's Node snippet (`verifySockgate`), run by `node` as the app:
/// it accepts sockgate's real requests and refuses a tampered body or the
/// wrong secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_node_snippet_verifies_real_requests() {
    let Some(snippet) = readme_snippet() else {
        panic!("README has no ```js block with function verifySockgate");
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.js");
    std::fs::write(&script, format!("{snippet}\n{NODE_HARNESS}")).unwrap();
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .env("EVENT_PROXY_SECRET", PROXY_SECRET)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node 20 runs the snippet");
    let mut stdout = tokio::io::BufReader::new(node.stdout.take().unwrap());
    let mut port = String::new();
    tokio::time::timeout(
        STEP,
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut port),
    )
    .await
    .expect("node prints its port")
    .unwrap();
    let url = format!("http://127.0.0.1:{}/sockgate/events", port.trim());
    let env = TestEnv::start_with(Backend::Sqlite, proxied(&url, |_| {}))
        .await
        .unwrap();
    let minted = env.mint("49").await;
    let c = Sio::connect(&env, TransportType::Websocket, &minted.cookie_value).await;
    let ack = c.ack("chat:send", vec![json!({"text": "héllo ✓"})]).await;
    assert_eq!(
        ack,
        json!({"verified": true, "tampered": false, "wrongSecret": false,
               "event": "chat:send", "args": [{"text": "héllo ✓"}], "userId": "49"})
    );
    c.close().await;
    let _ = node.kill().await;
}

/// A plain `node:http` server around the snippet's `verifySockgate`.
const NODE_HARNESS: &str = r#"
const http = require("node:http");
http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const raw = Buffer.concat(chunks);
    const verified = verifySockgate(raw, req.headers);
    const tampered = verifySockgate(Buffer.concat([raw, Buffer.from(" ")]), req.headers);
    const wrongSecret = verifySockgate(raw, req.headers, "not-the-secret");
    const { event, args, userId } = JSON.parse(raw);
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ack: { verified, tampered, wrongSecret, event, args, userId } }));
  });
}).listen(0, "127.0.0.1", function () {
  console.log(this.address().port);
});
"#;

/// The ```js block of the README that defines `verifySockgate`.
fn readme_snippet() -> Option<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).ok()?;
    readme
        .split("```js\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(code, _)| code))
        .find(|code| code.contains("function verifySockgate"))
        .map(str::to_owned)
}
