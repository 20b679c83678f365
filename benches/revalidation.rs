//! Holds N authenticated sockets on one sockgate node against PostgreSQL and
//! reports what a session re-check tick costs: queries per tick and the
//! database and wall time of a tick, as the server's own /metrics count them.
//!
//!     cargo bench --bench revalidation                     # 10,000 sockets
//!     SOCKETS=2000 cargo bench --bench revalidation
//!     GUESTS=10000 cargo bench --bench revalidation        # every user a guest
//!
//! PostgreSQL from DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test);
//! the bench makes and drops a database of its own. The load client speaks the
//! engine.io/Socket.IO handshake over a websocket directly, so it holds 10,000
//! sockets cheaply; the server runs as its own process.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{BenchDb, Server, connect_many};

#[tokio::main]
async fn main() {
    let sockets: usize = std::env::var("SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // The users 0..GUESTS are guests of an organization (none locked), as
    // in an app where many users are: the guest lock is then looked up for
    // real on every re-check.
    let guests: usize = std::env::var("GUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ticks_to_measure = 5;
    let db = BenchDb::create().await;
    let sids = db.insert_sessions(sockets, 3600).await;
    if guests > 0 {
        insert_guests(&db.url, guests).await;
    }
    let server = Server::start(
        &db.url,
        &[
            ("SESSION_CHECK_INTERVAL", "2s"),
            ("SESSION_REFRESH_WINDOW", "0s"),
        ],
    )
    .await;
    let rss_before = server.rss_kib();

    let started = Instant::now();
    let conns = connect_many(&server.addr, &sids, 256).await;
    let connect_time = started.elapsed();
    let connected = conns.iter().filter(|c| c.is_some()).count();
    println!("connected {connected}/{sockets} sockets in {connect_time:.2?}");
    assert_eq!(connected, sockets, "every socket authenticated");
    // Let the server register the last sockets and settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let m0 = server.metrics().await;
    let mut samples = Vec::new();
    let mut last_ticks = m0.get("sockgate_revalidation_ticks_total");
    let mut last_queries = m0.get("sockgate_revalidation_queries_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    while samples.len() < ticks_to_measure && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = server.metrics().await;
        let ticks = m.get("sockgate_revalidation_ticks_total");
        if ticks > last_ticks
            && m.get("sockgate_revalidation_last_tick_sessions") as usize == sockets
        {
            let queries = m.get("sockgate_revalidation_queries_total");
            samples.push((
                (queries - last_queries) / (ticks - last_ticks),
                m.get("sockgate_revalidation_last_tick_db_seconds"),
                m.get("sockgate_revalidation_last_tick_seconds"),
            ));
            last_queries = queries;
        }
        last_ticks = ticks;
    }
    let rss_after = server.rss_kib();
    let ended = server.metrics().await.get("sockgate_sessions_ended_total");
    drop(conns);
    server.stop();
    db.drop_database().await;

    assert!(!samples.is_empty(), "no tick was observed");
    let n = samples.len() as f64;
    let queries = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let db_ms = samples.iter().map(|s| s.1 * 1000.0).sum::<f64>() / n;
    let db_max = samples.iter().map(|s| s.1 * 1000.0).fold(0.0, f64::max);
    let wall_ms = samples.iter().map(|s| s.2 * 1000.0).sum::<f64>() / n;
    println!();
    println!("guests: {guests} (none locked)");
    println!(
        "| sockets | ticks | queries/tick | queries per 1,000 sockets | db ms/tick (mean, max) | tick wall ms | sessions ended |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {sockets} | {} | {queries:.1} | {:.2} | {db_ms:.1}, {db_max:.1} | {wall_ms:.1} | {ended} |",
        samples.len(),
        queries * 1000.0 / sockets as f64
    );
    println!();
    println!(
        "server RSS: {rss_before} KiB before, {rss_after} KiB with {sockets} sockets ({:.1} KiB per socket)",
        (rss_after.saturating_sub(rss_before)) as f64 / sockets as f64
    );
    let json = serde_json::json!({
        "bench": "revalidation", "sockets": sockets, "guests": guests, "ticks": samples.len(),
        "queries_per_tick": queries, "db_ms_per_tick": db_ms, "db_ms_per_tick_max": db_max,
        "tick_wall_ms": wall_ms, "sessions_ended": ended,
        "rss_kib_before": rss_before, "rss_kib_after": rss_after,
    });
    support::write_report("revalidation", &json);
    assert_eq!(ended, 0.0, "no live session was ended");
}

/// Users `0..n` (the bench sessions' users) as unlocked guests of one
/// organization.
async fn insert_guests(url: &str, n: usize) {
    let client = support::pg_client(url).await;
    client
        .batch_execute(&format!(
            "INSERT INTO sockgate.app_user (id, username, created_at) \
               SELECT i::text, 'user' || i, now() FROM generate_series(0, {last}) AS i; \
             INSERT INTO sockgate.organization (id, name, created_at) VALUES (1, 'bench', now()); \
             INSERT INTO sockgate.guest (user_id, organization_id, soft_locked, created_at) \
               SELECT i::text, 1, FALSE, now() FROM generate_series(0, {last}) AS i; \
             ANALYZE sockgate.app_user; ANALYZE sockgate.guest;",
            last = n as i64 - 1
        ))
        .await
        .unwrap();
}
