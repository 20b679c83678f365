//! The Node app reaches sockgate's sockets through the official
//! `@socket.io/postgres-emitter` (run from `tests/fixtures/emitters`, as an
//! app would), against two sockgate nodes on one PostgreSQL: each operation
//! reaches the right sockets on both nodes, over both transports, and no
//! others.

#[macro_use]
mod common;

use std::time::Duration;

use base64::Engine as _;
use futures_util::{FutureExt, SinkExt, StreamExt};
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload, TransportType};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use common::process::Node;
use common::{Backend, TestEnv};

/// Long enough for a NOTIFY to reach both nodes on a loaded CI machine.
const DELIVERY: Duration = Duration::from_secs(10);
/// How long a socket that should get nothing is watched.
const QUIET: Duration = Duration::from_millis(700);

/// rust_socketio's `TransportType` is not `Copy`.
#[derive(Clone, Copy)]
enum Via {
    Polling,
    Websocket,
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Event(String, Value),
    Binary(String, Vec<u8>),
    Error(String),
    Closed,
}

/// A Socket.IO client that records every event (the suite's own client
/// only hears the events sockgate itself sends).
struct Listener {
    client: Client,
    rx: mpsc::UnboundedReceiver<Seen>,
    name: String,
}

impl Listener {
    async fn connect(url: &str, transport: TransportType, cookie: &str, name: &str) -> Listener {
        let (tx, rx) = mpsc::unbounded_channel();
        let (open_tx, mut open_rx) = mpsc::unbounded_channel();
        let any = tx.clone();
        let errors = tx.clone();
        let client = ClientBuilder::new(url)
            .transport_type(transport)
            .reconnect(false)
            .opening_header("Cookie", cookie)
            .on("open", move |_, _| {
                let open = open_tx.clone();
                async move {
                    let _ = open.send(());
                }
                .boxed()
            })
            .on("close", move |_, _| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Seen::Closed);
                }
                .boxed()
            })
            .on("error", move |p, _| {
                let tx = errors.clone();
                async move {
                    let _ = tx.send(Seen::Error(format!("{p:?}")));
                }
                .boxed()
            })
            .on_any(move |event, payload, _| {
                let tx = any.clone();
                async move {
                    let Event::Custom(name) = event else { return };
                    let seen = match payload {
                        Payload::Text(mut v) if v.len() == 1 => Seen::Event(name, v.remove(0)),
                        Payload::Text(v) => Seen::Event(name, Value::Array(v)),
                        Payload::Binary(b) => Seen::Binary(name, b.to_vec()),
                        #[allow(deprecated)]
                        Payload::String(s) => Seen::Event(name, Value::String(s)),
                    };
                    let _ = tx.send(seen);
                }
                .boxed()
            })
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{name} connects: {e}"));
        tokio::time::timeout(DELIVERY, open_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{name}: no namespace CONNECT"));
        Listener {
            client,
            rx,
            name: name.to_owned(),
        }
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(DELIVERY, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing arrived", self.name))
            .unwrap_or_else(|| panic!("{}: client gone", self.name))
    }

    async fn expect(&mut self, event: &str) -> Value {
        let seen = tokio::time::timeout(DELIVERY, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no {event} arrived", self.name));
        match seen.unwrap_or_else(|| panic!("{}: client gone", self.name)) {
            Seen::Event(name, value) if name == event => value,
            other => panic!("{}: expected {event}, saw {other:?}", self.name),
        }
    }

    async fn expect_nothing(&mut self) {
        if let Ok(Some(seen)) = tokio::time::timeout(QUIET, self.rx.recv()).await {
            panic!("{}: expected nothing, saw {seen:?}", self.name);
        }
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
    }
}

/// Two sockgate nodes on one fresh PostgreSQL, linked by its adapter (or
/// by Redis), and where the app's emitter publishes.
struct Cluster {
    env: TestEnv,
    nodes: [Node; 2],
    emitter_url: String,
}

const USERS: [&str; 3] = ["1", "2", "3"];

const ATTACHMENTS_DDL: &str = "CREATE TABLE IF NOT EXISTS socket_io_attachments (
    id bigserial UNIQUE,
    created_at timestamptz DEFAULT NOW(),
    payload bytea
)";

async fn cluster() -> Option<Cluster> {
    cluster_on(None).await
}

/// With `redis`, the nodes run `ADAPTER=redis` and the app's emitter is
/// `@socket.io/redis-emitter` on it.
async fn cluster_on(redis: Option<&str>) -> Option<Cluster> {
    // The in-process server only prepares the database; it serves no client.
    let env =
        TestEnv::start_with(Backend::PG, |c| c.adapter = sockgate::AdapterKind::Local).await?;
    env.add_users(&USERS).await;
    // The app creates the emitter's table, as @socket.io/postgres-adapter's
    // README says (README › Talking to your users from the Node app).
    let pool = sqlx::PgPool::connect(&env.db.url).await.unwrap();
    sqlx::query(ATTACHMENTS_DDL).execute(&pool).await.unwrap();
    pool.close().await;
    let secret = common::SECRET.to_owned();
    let mut vars = vec![
        ("DATABASE_URL", env.db.url.as_str()),
        ("SESSION_SECRET", secret.as_str()),
    ];
    match redis {
        Some(url) => vars.extend([("ADAPTER", "redis"), ("REDIS_URL", url)]),
        None => vars.push(("ADAPTER", "postgres")),
    }
    let a = Node::start(&vars).await;
    let b = Node::start(&vars).await;
    let emitter_url = redis.unwrap_or(&env.db.url).to_owned();
    Some(Cluster {
        env,
        nodes: [a, b],
        emitter_url,
    })
}

impl Cluster {
    /// One socket per (user, node, transport): every user has a socket on
    /// both nodes, over both transports.
    async fn sockets(&self, users: &[&str]) -> Vec<(String, Listener)> {
        self.sockets_over(users, &[Via::Polling, Via::Websocket])
            .await
    }

    async fn sockets_over(&self, users: &[&str], transports: &[Via]) -> Vec<(String, Listener)> {
        let mut all = Vec::new();
        for user in users {
            let cookie = format!("connect.sid={}", self.env.mint(user).await.cookie_value);
            for (n, node) in self.nodes.iter().enumerate() {
                for transport in transports {
                    let (transport, label) = match transport {
                        Via::Polling => (TransportType::Polling, "polling"),
                        Via::Websocket => (TransportType::Websocket, "websocket"),
                    };
                    let name = format!("user {user} on node {n} ({label})");
                    let l = Listener::connect(&node.url(), transport, &cookie, &name).await;
                    all.push(((*user).to_owned(), l));
                }
            }
        }
        all
    }

    async fn emitter(&self, spec: Value) {
        run_emitter(&self.emitter_url, spec).await;
    }

    async fn metric(&self, node: usize, name: &str) -> f64 {
        common::wire::metric(&self.nodes[node].url(), name).await
    }
}

/// Runs one operation through the real npm package.
async fn run_emitter(db_url: &str, spec: Value) {
    common::node_app::emit(db_url, &spec).await;
}

/// A raw engine.io long-polling client: what the browser's polling
/// transport reads, packet by packet.
struct Polling {
    url: String,
    cookie: String,
    queue: std::collections::VecDeque<String>,
}

impl Polling {
    /// Opens the session and joins the namespace.
    async fn connect(base: &str, cookie: &str) -> Polling {
        let open = common::wire::polling_open(base, cookie).await;
        let mut polling = Polling {
            url: format!(
                "{base}/socket.io/?EIO=4&transport=polling&sid={}",
                open["sid"].as_str().unwrap()
            ),
            cookie: cookie.to_owned(),
            queue: Default::default(),
        };
        polling.post("40").await;
        let connected = polling.next().await;
        assert!(connected.starts_with("40"), "{connected}");
        polling
    }

    async fn post(&self, body: &str) {
        let status = common::http()
            .post(&self.url)
            .header("cookie", &self.cookie)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{status}");
    }

    /// The next packet that is not a ping (answered).
    async fn next(&mut self) -> String {
        loop {
            if let Some(packet) = self.queue.pop_front() {
                if packet == "2" {
                    self.post("3").await;
                    continue;
                }
                return packet;
            }
            let answer = tokio::time::timeout(
                DELIVERY,
                common::http()
                    .get(&self.url)
                    .header("cookie", &self.cookie)
                    .send(),
            )
            .await
            .expect("a polling answer in time")
            .unwrap();
            let body = answer.text().await.unwrap();
            self.queue.extend(body.split('\x1e').map(str::to_owned));
        }
    }
}

/// The next frame that is not an engine.io ping (answered).
async fn next_frame(ws: &mut common::engine_io::Ws) -> Message {
    loop {
        let frame = tokio::time::timeout(DELIVERY, ws.next())
            .await
            .expect("a frame in time")
            .expect("the websocket is open")
            .expect("a frame");
        if frame == Message::text("2") {
            ws.send(Message::text("3")).await.unwrap();
            continue;
        }
        return frame;
    }
}

// Every emitted event carries an argument: rust_socketio drops an event
// packet with none (`42["name"]`), which sockgate sends as Node would.

/// Splits the sockets into those of `users` and the others.
fn split(all: &mut [(String, Listener)], users: &[&str]) -> (Vec<usize>, Vec<usize>) {
    (0..all.len()).partition(|&i| users.contains(&all[i].0.as_str()))
}

async fn all_get(all: &mut [(String, Listener)], which: &[usize], event: &str) -> Vec<Value> {
    let mut got = Vec::new();
    for &i in which {
        got.push(all[i].1.expect(event).await);
    }
    got
}

async fn none_get(all: &mut [(String, Listener)], which: &[usize]) {
    for &i in which {
        all[i].1.expect_nothing().await;
    }
}

async fn close_all(all: Vec<(String, Listener)>) {
    for (_, l) in all {
        l.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emits_reach_the_targeted_rooms_on_both_nodes_and_no_others() {
    let Some(c) = cluster().await else { return };
    let mut all = c.sockets(&USERS).await;
    // One room: user 1's four sockets, on both nodes and transports.
    c.emitter(json!({"op": "emit", "to": ["user:1"], "event": "note", "args": [{"n": 1}, "two"]}))
        .await;
    let (one, others) = split(&mut all, &["1"]);
    for got in all_get(&mut all, &one, "note").await {
        assert_eq!(got, json!([{"n": 1}, "two"]));
    }
    none_get(&mut all, &others).await;

    // Several rooms, `in()` being `to()`.
    c.emitter(json!({"op": "emit", "to": ["user:1", "user:2"], "event": "several", "args": [3]}))
        .await;
    let (targeted, others) = split(&mut all, &["1", "2"]);
    all_get(&mut all, &targeted, "several").await;
    none_get(&mut all, &others).await;

    // Everyone but one room.
    c.emitter(json!({"op": "emit", "except": ["user:2"], "event": "most", "args": ["m"]}))
        .await;
    let (excepted, others) = split(&mut all, &["2"]);
    all_get(&mut all, &others, "most").await;
    none_get(&mut all, &excepted).await;

    // Everyone, volatile.
    c.emitter(json!({"op": "emit", "volatile": true, "event": "all", "args": ["x"]}))
        .await;
    let everyone: Vec<usize> = (0..all.len()).collect();
    all_get(&mut all, &everyone, "all").await;

    // Another namespace: no socket of sockgate's is there.
    c.emitter(json!({"op": "emit", "nsp": "/admin", "event": "elsewhere", "args": []}))
        .await;
    none_get(&mut all, &everyone).await;

    for node in 0..2 {
        assert_eq!(
            c.metric(node, "sockgate_emitter_applied_total").await,
            4.0,
            "node {node} applied each emit to its own sockets"
        );
    }
    close_all(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sockets_join_leave_and_disconnect() {
    let Some(c) = cluster().await else { return };
    let mut all = c.sockets(&USERS).await;
    let (team, others) = split(&mut all, &["1", "3"]);

    c.emitter(json!({"op": "socketsJoin", "to": ["user:1", "user:3"], "rooms": ["team"]}))
        .await;
    c.emitter(json!({"op": "emit", "to": ["team"], "event": "team", "args": [1]}))
        .await;
    all_get(&mut all, &team, "team").await;
    none_get(&mut all, &others).await;

    c.emitter(json!({"op": "socketsLeave", "to": ["user:3"], "rooms": ["team"]}))
        .await;
    c.emitter(json!({"op": "emit", "to": ["team"], "event": "team", "args": [2]}))
        .await;
    let (still, gone) = split(&mut all, &["1"]);
    all_get(&mut all, &still, "team").await;
    none_get(&mut all, &gone).await;

    // Without and with `close`: the client sees its disconnect either way.
    c.emitter(json!({"op": "disconnectSockets", "to": ["user:1"]}))
        .await;
    for &i in &still {
        assert_eq!(all[i].1.next().await, Seen::Closed, "{}", all[i].1.name);
    }
    c.emitter(json!({"op": "disconnectSockets", "to": ["user:2"], "close": true}))
        .await;
    let (two, _) = split(&mut all, &["2"]);
    for &i in &two {
        assert_eq!(all[i].1.next().await, Seen::Closed, "{}", all[i].1.name);
    }
    // User 3 is untouched and still hears emits.
    let (three, _) = split(&mut all, &["3"]);
    c.emitter(json!({"op": "emit", "to": ["user:3"], "event": "still", "args": [true]}))
        .await;
    all_get(&mut all, &three, "still").await;
    close_all(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_and_binary_payloads_arrive_intact_through_the_attachments_table() {
    let Some(c) = cluster().await else { return };
    // rust_socketio's polling transport cuts a packet near 8 KB ("EOF while
    // parsing") and reports a binary event as an "EngineIO Error": the
    // payloads are read by rust_socketio over websockets, and by raw
    // engine.io clients over polling and websockets.
    let mut all = c.sockets_over(&["1"], &[Via::Websocket]).await;
    let every: Vec<usize> = (0..all.len()).collect();
    let cookie = format!("connect.sid={}", c.env.mint("1").await.cookie_value);
    let mut polling = Vec::new();
    for node in &c.nodes {
        polling.push(Polling::connect(&node.url(), &cookie).await);
    }

    // Over the emitter's 8,000-byte NOTIFY threshold: sent as an attachment.
    let big: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    c.emitter(json!({"op": "emit", "to": ["user:1"], "event": "big", "args": [{"text": big}]}))
        .await;
    for got in all_get(&mut all, &every, "big").await {
        assert_eq!(got["text"].as_str(), Some(big.as_str()));
    }
    for p in &mut polling {
        assert_eq!(p.next().await, format!(r#"42["big",{{"text":"{big}"}}]"#));
    }

    // Binary data: always an attachment, msgpack-encoded. rust_socketio
    // reports an "EngineIO Error" on a binary event, so a raw websocket
    // client reads it: the placeholder packet, then the bytes.
    let minted = c.env.mint("1").await;
    let mut raw = Vec::new();
    for node in &c.nodes {
        raw.push(
            common::engine_io::handshake(&node.addr, &minted.cookie_value)
                .await
                .unwrap(),
        );
    }
    let bytes: Vec<u8> = (0..=255u8).chain([0, 255, 10]).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    c.emitter(json!({"op": "emit", "to": ["user:1"], "event": "bin", "args": ["label"], "binary": encoded}))
        .await;
    for ws in &mut raw {
        assert_eq!(
            next_frame(ws).await,
            Message::text(r#"451-["bin","label",{"_placeholder":true,"num":0}]"#)
        );
        assert_eq!(next_frame(ws).await, Message::binary(bytes.clone()));
    }
    // Over polling, engine.io v4 sends the bytes base64-encoded after `b`.
    for p in &mut polling {
        assert_eq!(
            p.next().await,
            r#"451-["bin","label",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(p.next().await, format!("b{encoded}"));
    }
    close_all(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_notice_is_counted_and_the_node_keeps_working() {
    let Some(c) = cluster().await else { return };
    let mut all = c.sockets(&["1"]).await;
    let pool = sqlx::PgPool::connect(&c.env.db.url).await.unwrap();
    for payload in [
        "not json",
        r#"{"type":3}"#,
        r#"{"type":42,"data":{}}"#,
        r#"{"type":3,"attachmentId":"999999"}"#,
    ] {
        sqlx::query("SELECT pg_notify('socket.io#/', $1)")
            .bind(payload)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    // serverSideEmit is received, and not applied: no app code runs here.
    c.emitter(json!({"op": "serverSideEmit", "event": "hello", "args": [1]}))
        .await;
    c.emitter(json!({"op": "emit", "to": ["user:1"], "event": "after", "args": [0]}))
        .await;
    let every: Vec<usize> = (0..all.len()).collect();
    all_get(&mut all, &every, "after").await;
    for node in 0..2 {
        assert_eq!(
            c.metric(node, "sockgate_emitter_malformed_total").await,
            4.0
        );
        assert_eq!(c.metric(node, "sockgate_emitter_received_total").await, 2.0);
        assert_eq!(c.metric(node, "sockgate_emitter_applied_total").await, 1.0);
    }
    close_all(all).await;
}

/// The same operations through `@socket.io/redis-emitter`, with the nodes
/// on `ADAPTER=redis` (socketioxide's adapter shares the request channel:
/// its messages are not counted as malformed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redis_emitter_reaches_both_nodes() {
    let Some(redis) = common::redis::url() else {
        return;
    };
    let Some(c) = cluster_on(Some(&redis)).await else {
        return;
    };
    let mut all = c.sockets(&USERS).await;

    c.emitter(json!({"op": "emit", "to": ["user:1"], "event": "one", "args": [{"n": 1}]}))
        .await;
    let (one, others) = split(&mut all, &["1"]);
    for got in all_get(&mut all, &one, "one").await {
        assert_eq!(got, json!({"n": 1}));
    }
    none_get(&mut all, &others).await;

    c.emitter(json!({"op": "emit", "to": ["user:1", "user:2"], "except": ["user:2"], "event": "several", "args": [2]}))
        .await;
    all_get(&mut all, &one, "several").await;
    none_get(&mut all, &others).await;

    c.emitter(json!({"op": "socketsJoin", "to": ["user:3"], "rooms": ["team"]}))
        .await;
    c.emitter(json!({"op": "emit", "to": ["team"], "event": "team", "args": [3]}))
        .await;
    let (three, not_three) = split(&mut all, &["3"]);
    all_get(&mut all, &three, "team").await;
    none_get(&mut all, &not_three).await;
    c.emitter(json!({"op": "socketsLeave", "to": ["user:3"], "rooms": ["team"]}))
        .await;
    c.emitter(json!({"op": "emit", "to": ["team"], "event": "team", "args": [4]}))
        .await;
    none_get(&mut all, &three).await;

    // A binary argument, read by a raw websocket client on each node.
    let minted = c.env.mint("2").await;
    let mut raw = Vec::new();
    for node in &c.nodes {
        raw.push(
            common::engine_io::handshake(&node.addr, &minted.cookie_value)
                .await
                .unwrap(),
        );
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode([0u8, 1, 255]);
    c.emitter(
        json!({"op": "emit", "to": ["user:2"], "event": "bin", "args": ["b"], "binary": encoded}),
    )
    .await;
    for ws in &mut raw {
        assert_eq!(
            next_frame(ws).await,
            Message::text(r#"451-["bin","b",{"_placeholder":true,"num":0}]"#)
        );
        assert_eq!(next_frame(ws).await, Message::binary(vec![0u8, 1, 255]));
    }
    let (two, _) = split(&mut all, &["2"]);
    // rust_socketio sees the same event, as an "EngineIO Error".
    for &i in &two {
        assert!(matches!(
            all[i].1.next().await,
            Seen::Error(_) | Seen::Binary(..)
        ));
    }

    c.emitter(json!({"op": "disconnectSockets", "to": ["user:1"], "close": true}))
        .await;
    for &i in &one {
        assert_eq!(all[i].1.next().await, Seen::Closed, "{}", all[i].1.name);
    }

    // Garbage on the broadcast channel and a broken JSON request: counted.
    {
        use socketioxide_redis::drivers::redis::redis_client::{self, AsyncCommands};
        let client = redis_client::Client::open(redis.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: i64 = conn
            .publish("socket.io#/#", &[0x93u8, 0xc1][..])
            .await
            .unwrap();
        let _: i64 = conn
            .publish("socket.io-request#/#", "{\"type\":")
            .await
            .unwrap();
    }
    c.emitter(json!({"op": "emit", "to": ["user:3"], "event": "after", "args": [0]}))
        .await;
    all_get(&mut all, &three, "after").await;
    for node in 0..2 {
        assert_eq!(
            c.metric(node, "sockgate_emitter_applied_total").await,
            9.0,
            "node {node}"
        );
        assert_eq!(
            c.metric(node, "sockgate_emitter_malformed_total").await,
            2.0
        );
    }
    close_all(all).await;
}
