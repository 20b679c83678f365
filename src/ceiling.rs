//! The library's ceiling for the handshake bench: the same axum +
//! socketioxide stack and engine settings as `serve`, with no
//! authentication, no database and no audit. Hidden from `--help`; it
//! accepts every connection and is never a deployment.

use std::net::SocketAddr;

use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let (layer, io) = crate::socket::tuned(SocketIo::builder()).build_layer();
    io.ns("/", async |s: SocketRef| {
        s.on("whoami", async |s: SocketRef| {
            let _ = s.emit("whoami", &serde_json::json!({ "authenticated": false }));
        });
    });
    let app = axum::Router::new()
        .layer(layer)
        .layer(axum::middleware::from_fn(crate::handshake_request::compact));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::warn!(%listen, "UNAUTHENTICATED ceiling server for benchmarks: every connection is accepted");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
