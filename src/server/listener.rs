//! Accepting connections: the per-IP connection limit, and hyper's bounds on
//! the request head (size and read time). `axum::serve` sets neither, so a
//! client could hold a connection forever by sending one header byte at a
//! time. Knows nothing of routes, sessions or Socket.IO: it serves whatever
//! application it is handed.
//!
//! Each connection is one task, and a held long-poll keeps its task for as
//! long as it waits: the task holds only the protocol the client speaks.
//! hyper-util's `auto` connection, which serves both HTTP/1 and HTTP/2, is
//! an enum as large as its HTTP/2 side; here the first bytes are peeked and
//! an HTTP/1 connection (all of Socket.IO's traffic in practice) is served by
//! hyper's HTTP/1 connection alone, HTTP/2 by its own, boxed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::config::LimitsConfig;
use crate::http::router::App;
use crate::limits::{ConnectionCounter, Counted};

/// Serves `app` on `listener` until `shutdown` resolves, then waits up to
/// 5 s for open requests.
pub async fn serve(
    listener: TcpListener,
    app: App,
    limits: &LimitsConfig,
    on_refused: impl Fn(SocketAddr) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let counter = ConnectionCounter::new(limits.max_connections_per_ip);
    let bounds = Bounds {
        header_read_timeout: limits.header_read_timeout,
        max_header_bytes: limits.max_header_bytes,
    };
    // Shared by the connections and cloned per request: a clone of the
    // stack (its layers' state, CORS's lists) kept per connection would cost
    // every held long-poll 0.4 KiB.
    let app = Arc::new(app);
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than
                    // spin (axum::serve does the same).
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(permit) = counter.acquire(remote.ip()) else {
            // Counted, logged and audited by the caller's event.
            on_refused(remote);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            Counted::new(stream, permit),
            remote,
            Arc::clone(&app),
            bounds,
            stop.clone(),
            connections.clone(),
        ));
    }
    drop(listener);
    // Each connection finishes the request it is serving, then closes.
    stop.cancel();
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
    Ok(())
}

#[derive(Clone, Copy)]
struct Bounds {
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

/// A connection's first bytes: once they say which protocol it speaks, the
/// connection is served by a task of its own holding only that protocol's
/// connection (`Served`), not this function's state. A client that sends
/// nothing is dropped after the header read timeout, as one that sends its
/// head too slowly is.
async fn connection(
    stream: Counted<TcpStream>,
    remote: SocketAddr,
    app: Arc<App>,
    bounds: Bounds,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let Ok(Ok(protocol)) =
        tokio::time::timeout(bounds.header_read_timeout, sniff(stream.get_ref())).await
    else {
        return;
    };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        App::clone(&app).call(req)
    });
    let stop = stop.cancelled_owned();
    match protocol {
        Protocol::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_read_timeout)
                .max_buf_size(bounds.max_header_bytes)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            connections.spawn(Served::new(conn, stop, |c| c.graceful_shutdown()));
        }
        Protocol::Http2 => {
            let conn = Box::pin(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_header_list_size(
                        u32::try_from(bounds.max_header_bytes).unwrap_or(u32::MAX),
                    )
                    .serve_connection(TokioIo::new(stream), service),
            );
            connections.spawn(Served::new(conn, stop, |c| {
                c.get_mut().as_mut().graceful_shutdown();
            }));
        }
    }
}

pin_project! {
    /// A connection served until it ends; once the server stops, it is
    /// asked to finish the request it is serving and close. A plain future
    /// rather than an async block: a held long-poll keeps it, and an async
    /// block would also keep what built the connection.
    struct Served<C, F> {
        #[pin]
        conn: C,
        #[pin]
        stop: WaitForCancellationFutureOwned,
        graceful_shutdown: Option<F>,
    }
}

impl<C, F: FnOnce(Pin<&mut C>)> Served<C, F> {
    fn new(conn: C, stop: WaitForCancellationFutureOwned, graceful_shutdown: F) -> Self {
        Self {
            conn,
            stop,
            graceful_shutdown: Some(graceful_shutdown),
        }
    }
}

impl<C: Future, F: FnOnce(Pin<&mut C>)> Future for Served<C, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.graceful_shutdown.is_some()
            && this.stop.poll(cx).is_ready()
            && let Some(shutdown) = this.graceful_shutdown.take()
        {
            shutdown(this.conn.as_mut());
        }
        // A client that goes away mid-request is no error of ours: the
        // connection's result is dropped.
        this.conn.poll(cx).map(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What HTTP/2 with prior knowledge (h2c) opens with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection's first bytes announce: HTTP/2 when they are
/// its preface, HTTP/1 when they stray from it (hyper's HTTP/1 parser
/// answers whatever else a client sends, nothing at all included), and
/// `None` while they are the preface's start and more must be seen.
fn protocol_of(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first.is_empty() || first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Peeks at the connection's first bytes until they announce a protocol.
/// Peeked, not read: hyper reads them again.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if let Some(protocol) = protocol_of(&buf[..n]) {
            return Ok(protocol);
        }
        // The start of the preface, the rest still on its way: peek answers
        // at once while bytes wait unread, so wait for more before asking
        // again (the caller's timeout bounds it).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A short answer to a connection over the per-IP limit, then the close.
async fn refuse(mut stream: TcpStream) {
    let body = crate::messages::TOO_MANY_CONNECTIONS;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection that ends by itself when `done`, or once asked to shut
    /// down (a real one first finishes the request it is serving).
    struct FakeConn {
        done: bool,
        shutdowns: Arc<AtomicUsize>,
    }

    impl Future for FakeConn {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.done || self.shutdowns.load(Ordering::SeqCst) > 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn served(
        done: bool,
        stop: &CancellationToken,
    ) -> (impl Future<Output = ()> + use<>, Arc<AtomicUsize>) {
        let shutdowns = Arc::new(AtomicUsize::new(0));
        let conn = FakeConn {
            done,
            shutdowns: shutdowns.clone(),
        };
        let count = shutdowns.clone();
        let served = Served::new(conn, stop.clone().cancelled_owned(), move |_| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        (served, shutdowns)
    }

    #[tokio::test]
    async fn a_served_connection_runs_until_the_server_stops_then_shuts_down_once() {
        let stop = CancellationToken::new();
        let (served, shutdowns) = served(false, &stop);
        let task = tokio::spawn(served);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shutdowns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_that_ends_is_not_asked_to_shut_down() {
        let stop = CancellationToken::new();
        let (served, shutdowns) = served(true, &stop);
        served.await;
        stop.cancel();
        assert_eq!(shutdowns.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_preface_is_http2_and_a_request_line_http1() {
        assert_eq!(protocol_of(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(
            protocol_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"),
            Some(Protocol::Http2)
        );
        assert_eq!(
            protocol_of(b"GET /socket.io/?EIO=4 HTTP/1.1\r\n"),
            Some(Protocol::Http1)
        );
        // A closed connection: hyper's HTTP/1 side ends it quietly.
        assert_eq!(protocol_of(b""), Some(Protocol::Http1));
        assert_eq!(protocol_of(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(protocol_of(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
    }

    proptest! {
        /// Every strict start of the preface waits for more; whatever
        /// strays from it is HTTP/1 at once.
        #[test]
        fn only_the_full_preface_is_http2(
            cut in 1..H2_PREFACE.len(),
            stray in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            prop_assert_eq!(protocol_of(&H2_PREFACE[..cut]), None);
            let mut first = H2_PREFACE[..cut].to_vec();
            prop_assume!(stray != H2_PREFACE[cut]);
            first.push(stray);
            first.extend_from_slice(&rest);
            prop_assert_eq!(protocol_of(&first), Some(Protocol::Http1));
        }

        #[test]
        fn the_preface_with_anything_after_is_http2(
            rest in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut first = H2_PREFACE.to_vec();
            first.extend_from_slice(&rest);
            prop_assert_eq!(protocol_of(&first), Some(Protocol::Http2));
        }
    }
}
