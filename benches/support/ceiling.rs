//! The library's ceiling for the handshake bench: the same axum +
//! socketioxide stack and engine settings as `serve`, with no
//! authentication, no database and no audit. It lives with the benches,
//! never in the product: the bench binary runs it in a process of its own
//! (itself, re-run with `SOCKGATE_BENCH_CEILING=<addr>`), so its CPU and
//! memory are measured apart from the client's, as the server's are.

use std::net::SocketAddr;

use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

/// Set in the ceiling's process: where it listens.
pub const ENV: &str = "SOCKGATE_BENCH_CEILING";

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let (layer, io) = sockgate::socket::tuned(SocketIo::builder()).build_layer();
    io.ns("/", async |s: SocketRef| {
        s.on("whoami", async |s: SocketRef| {
            let _ = s.emit("whoami", &serde_json::json!({ "authenticated": false }));
        });
    });
    let app = axum::Router::new()
        .layer(layer)
        .layer(tower::util::MapRequestLayer::new(sockgate::socket::compact));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
