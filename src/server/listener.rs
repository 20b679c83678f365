//! Accepting connections: the per-IP connection limit, and hyper's bounds on
//! the request head (size and read time). `axum::serve` sets neither, so a
//! client could hold a connection forever by sending one header byte at a
//! time. Knows nothing of routes, sessions or Socket.IO: it serves whatever
//! router it is handed.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

use crate::config::LimitsConfig;
use crate::limits::{ConnectionCounter, Counted};

/// Serves `app` on `listener` until `shutdown` resolves, then waits up to
/// 5 s for open requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &LimitsConfig,
    on_refused: impl Fn(SocketAddr) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let counter = ConnectionCounter::new(limits.max_connections_per_ip);
    let (header_timeout, header_bytes) = (limits.header_read_timeout, limits.max_header_bytes);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            let mut app = app.clone();
            async move { app.call(req).await }
        });
        let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(header_bytes);
        http.http2()
            .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
        let conn = http
            .serve_connection_with_upgrades(TokioIo::new(Counted::new(stream, permit)), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that goes away mid-request is no error of ours.
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
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
