//! Instant revocation on PostgreSQL: a row deleted by the Node app ends the
//! socket (session_expired first) in under a second, with the interval check
//! effectively off; and the listener survives losing its connection.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::client::{self, Options, Seen, TestClient, Transport};
use common::{Backend, PgServer, TestEnv, now_secs};
use serde_json::json;

async fn node_app_deletes(env: &TestEnv, sid: &str) {
    let (client, conn) = tokio_postgres::connect(&env.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    // connect-pg-simple's destroy.
    client
        .execute("DELETE FROM \"session\" WHERE sid = $1", &[&sid])
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
}

async fn connected(env: &TestEnv, transport: Transport, sid: &str) -> TestClient {
    let opts = Options {
        cookie: Some(format!("connect.sid={}", env.cookie_value(sid))),
        ..Default::default()
    };
    let mut c = client::connect(&env.url(), transport, opts).await;
    c.outcome().await.expect("connects");
    c
}

async fn ended_within(c: &mut TestClient, limit: Duration) -> Duration {
    let started = Instant::now();
    let first = c.next(limit).await;
    assert!(
        matches!(&first, Some(Seen::Event(name, p)) if name == "session_expired" && p["reason"] == "deleted"),
        "session_expired first, got {first:?} after {:?}",
        started.elapsed()
    );
    let elapsed = started.elapsed();
    assert_eq!(c.next(Duration::from_secs(2)).await, Some(Seen::Closed));
    elapsed
}

async fn env_with_trigger(server: PgServer) -> Option<TestEnv> {
    let env = TestEnv::start_with(Backend::Postgres(server, None), |c| {
        c.session_check_interval = Duration::from_secs(3600);
    })
    .await?;
    sockgate::install_trigger(env.conn(), None, "session")
        .await
        .unwrap();
    // Let the listener subscribe.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Some(env)
}

on_both_majors!(
    logout_through_a_row_delete_ends_the_socket_in_under_a_second,
    logout_through_a_row_delete_ends_the_socket_in_under_a_second_on
);

async fn logout_through_a_row_delete_ends_the_socket_in_under_a_second_on(server: PgServer) {
    let Some(env) = env_with_trigger(server).await else {
        return;
    };
    for transport in Transport::ALL {
        let sid = format!("instant-{transport:?}");
        env.write_session(&sid, &json!({"passport": {"user": 21}}), now_secs() + 3600)
            .await;
        let mut c = connected(&env, transport, &sid).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let deleted_at = Instant::now();
        node_app_deletes(&env, &sid).await;
        ended_within(&mut c, Duration::from_secs(1)).await;
        assert!(
            deleted_at.elapsed() < Duration::from_secs(1),
            "ended {:?} after the delete",
            deleted_at.elapsed()
        );
    }
    // Another session's socket is untouched.
    env.write_session(
        "other",
        &json!({"passport": {"user": 22}}),
        now_secs() + 3600,
    )
    .await;
    let mut other = connected(&env, Transport::Websocket, "other").await;
    node_app_deletes(&env, "unrelated-sid").await;
    assert_eq!(other.whoami().await["userId"], "22");
}

on_both_majors!(
    listener_reconnects_after_losing_its_connection,
    listener_reconnects_after_losing_its_connection_on
);

async fn listener_reconnects_after_losing_its_connection_on(server: PgServer) {
    let Some(env) = env_with_trigger(server).await else {
        return;
    };
    env.write_session(
        "after-restart",
        &json!({"passport": {"user": 23}}),
        now_secs() + 3600,
    )
    .await;
    let mut c = connected(&env, Transport::Websocket, "after-restart").await;
    // Kill the listener's backend, as a database restart would.
    let admin = common::pg::admin_url_of(server).unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%sockgate_session_revoked%'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(!killed.is_empty(), "found the listener's backend");
    // Give it a moment to notice and re-LISTEN.
    let mut relistened = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n: (i64,) = sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%sockgate_session_revoked%'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if n.0 > 0 {
            relistened = true;
            break;
        }
    }
    assert!(relistened, "the listener re-LISTENed by itself");
    node_app_deletes(&env, "after-restart").await;
    ended_within(&mut c, Duration::from_secs(1)).await;
}

on_both_majors!(
    trigger_is_opt_in_and_removable,
    trigger_is_opt_in_and_removable_on
);

async fn trigger_is_opt_in_and_removable_on(server: PgServer) {
    let Some(env) = TestEnv::start(Backend::Postgres(server, None)).await else {
        return;
    };
    let count = async || -> i64 {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db.url)
            .await
            .unwrap();
        sqlx::query_as::<_, (i64,)>(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'sockgate_session_revoked'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .0
    };
    assert_eq!(count().await, 0, "not installed by default");
    sockgate::install_trigger(env.conn(), None, "session")
        .await
        .unwrap();
    sockgate::install_trigger(env.conn(), None, "session")
        .await
        .unwrap();
    assert_eq!(count().await, 1, "installing twice leaves one trigger");
    sockgate::remove_trigger(env.conn(), None, "session")
        .await
        .unwrap();
    assert_eq!(count().await, 0);
}

on_both_majors!(
    a_deletion_heard_between_the_open_and_the_connect_refuses_the_connect,
    a_deletion_heard_between_the_open_and_the_connect_refuses_the_connect_on
);

/// The session lookup starts with the engine.io open; a deletion the
/// trigger reports before the CONNECT arrives (well inside the early
/// answer's freshness) makes the CONNECT look again, and be refused.
async fn a_deletion_heard_between_the_open_and_the_connect_refuses_the_connect_on(
    server: PgServer,
) {
    let Some(env) = env_with_trigger(server).await else {
        return;
    };
    let (addr, base) = (env.server.local_addr, env.url());
    let lookups = "sockgate_session_lookups";
    for attempt in 0.. {
        let sid = format!("heard-{attempt}");
        env.write_session(&sid, &json!({"passport": {"user": 23}}), now_secs() + 3600)
            .await;
        // A socket of the session already connected: its `session_expired`
        // says the deletion was heard.
        let mut live = connected(&env, Transport::Websocket, &sid).await;
        let before = common::wire::metric(&base, lookups).await;
        let opened = Instant::now();
        let pending = common::engine_io::open(&addr, &env.cookie_value(&sid))
            .await
            .unwrap();
        // The early lookup read the row before the delete.
        common::wire::metric_reaches(&base, lookups, before + 1.0).await;
        node_app_deletes(&env, &sid).await;
        ended_within(&mut live, Duration::from_secs(1)).await;
        if opened.elapsed() > sockgate::session::EARLY_LOOKUP_FRESH / 2 {
            // Too slow a machine to tell the two rules apart: again.
            assert!(attempt < 5, "the deletion was never heard within the bound");
            continue;
        }
        match common::engine_io::join_namespace(pending).await {
            Err(common::engine_io::HandshakeError::Refused(packet)) => {
                assert!(packet.contains("Session expired"), "{packet}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a CONNECT after its session's deletion was heard was accepted"),
        }
        assert_eq!(
            common::wire::metric(&base, "sockgate_session_lookups_stale_total").await,
            1.0
        );
        break;
    }
}
