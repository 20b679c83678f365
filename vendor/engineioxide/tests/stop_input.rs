//! sockgate patch: `SessionCloser::stop_input` drops what the client sends
//! on a session from then on, on both transports, and leaves the session
//! open (the close comes later, from `SessionCloser::close`).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};
use std::time::Duration;

use bytes::Bytes;
use engineioxide::{
    Str,
    config::EngineIoConfig,
    handler::EngineIoHandler,
    service::EngineIoService,
    socket::{DisconnectReason, Sid, Socket},
};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

mod fixture;
use fixture::{create_polling_connection, create_ws_connection, send_req};

#[derive(Debug, Default)]
struct Counting {
    messages: AtomicUsize,
    last: Mutex<Option<Sid>>,
}

impl EngineIoHandler for Counting {
    type Data = ();
    fn on_connect(self: Arc<Self>, socket: Arc<Socket<()>>) {
        *self.last.lock().unwrap() = Some(socket.id);
    }
    fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
    fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {
        self.messages.fetch_add(1, Ordering::SeqCst);
    }
    fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {
        self.messages.fetch_add(1, Ordering::SeqCst);
    }
}

fn post(
    svc: &mut EngineIoService<Counting>,
    sid: &str,
    body: &str,
) -> impl std::future::Future<Output = String> + 'static {
    send_req(
        svc,
        format!("transport=polling&sid={sid}"),
        http::Method::POST,
        Some(body.to_owned()),
    )
}

#[tokio::test]
async fn polling_posts_after_stop_input_are_dropped() {
    let handler = Arc::new(Counting::default());
    // sockgate patch: the first ping, which answers the GET below, comes one
    // interval after the open.
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_millis(100))
        .build();
    let closer = config.session_closer.clone();
    let mut svc = EngineIoService::with_config(handler.clone(), config);
    let sid = create_polling_connection(&mut svc).await;
    post(&mut svc, &sid, "4before").await;
    assert_eq!(handler.messages.load(Ordering::SeqCst), 1);

    assert!(closer.stop_input(sid.parse().unwrap()));
    post(&mut svc, &sid, "4after").await;
    assert_eq!(handler.messages.load(Ordering::SeqCst), 1, "dropped unread");
    // The session is still there: a GET is answered, not refused.
    let body = send_req(
        &mut svc,
        format!("transport=polling&sid={sid}"),
        http::Method::GET,
        None,
    )
    .await;
    assert!(!body.contains("Session ID unknown"), "{body}");
}

#[tokio::test]
async fn websocket_messages_after_stop_input_are_dropped() {
    let handler = Arc::new(Counting::default());
    let config = EngineIoConfig::default();
    let closer = config.session_closer.clone();
    let mut svc = EngineIoService::with_config(handler.clone(), config);
    let mut ws = create_ws_connection(&mut svc).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let sid = loop {
        if let Some(sid) = *handler.last.lock().unwrap() {
            break sid;
        }
        assert!(tokio::time::Instant::now() < deadline, "connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    ws.send(Message::Text("4before".into())).await.unwrap();
    while handler.messages.load(Ordering::SeqCst) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "first message");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert!(closer.stop_input(sid));
    ws.send(Message::Text("4after".into())).await.unwrap();
    ws.send(Message::Binary(Bytes::from_static(b"bin")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(handler.messages.load(Ordering::SeqCst), 1, "dropped unread");
}

#[tokio::test]
async fn stop_input_on_an_unknown_session_says_so() {
    let handler = Arc::new(Counting::default());
    let config = EngineIoConfig::default();
    let closer = config.session_closer.clone();
    let _svc = EngineIoService::with_config(handler, config);
    assert!(!closer.stop_input(Sid::new()));
}
