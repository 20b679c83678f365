//! Live sessions (issue: a socket must not outlive its session), through a
//! real rust_socketio client on SQLite and PostgreSQL, with short intervals.

#[macro_use]
mod common;

use std::time::Duration;

use common::client::{self, Options, TestClient, Transport};
use common::{Backend, TestEnv, now_secs};
use sea_orm::EntityTrait;
use serde_json::json;

fn fast_checks(config: &mut sockgate::Config) {
    config.session_check_interval = Duration::from_millis(300);
    config.session_refresh_window = Duration::from_secs(0);
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

/// The next two things the client sees are `session_expired` (with this
/// reason) and then the close, in that order.
async fn expect_expired_then_closed(c: &mut TestClient, reason: &str) {
    let payload = c.expect_event_then_closed("session_expired").await;
    assert_eq!(payload["reason"], reason);
    assert!(payload["message"].as_str().is_some_and(|m| !m.is_empty()));
}

on_every_backend!(
    deleted_session_ends_the_socket_with_session_expired_first,
    fast_checks,
    |env: TestEnv| async move {
        for transport in Transport::ALL {
            let sid = format!("logout-{transport:?}");
            env.write_session(
                &sid,
                &json!({"cookie": {"originalMaxAge": 3_600_000}, "passport": {"user": 11}}),
                now_secs() + 3600,
            )
            .await;
            let mut a = connected(&env, transport, &sid).await;
            let mut b = connected(&env, transport, &sid).await;
            env.server.state.auth.store.destroy(&sid).await.unwrap(); // logout
            expect_expired_then_closed(&mut a, "deleted").await;
            expect_expired_then_closed(&mut b, "deleted").await;
        }
        let rows = env.audit_rows("socket.session_expired", 4).await;
        assert_eq!(rows.len(), 4);
        assert!(
            rows.iter()
                .all(|r| r.reason.as_deref() == Some("deleted")
                    && r.user_id.as_deref() == Some("11"))
        );
        let rows = env.audit_rows("socket.disconnected", 4).await;
        assert!(
            rows.len() >= 4,
            "disconnects are audited with their reason: {rows:?}"
        );
    }
);

on_every_backend!(
    expired_session_is_not_extended_and_is_disconnected,
    fast_checks,
    |env: TestEnv| async move {
        env.write_session(
            "short",
            &json!({"cookie": {"originalMaxAge": 60_000}, "passport": {"user": 12}}),
            now_secs() + 2,
        )
        .await;
        let mut c = connected(&env, Transport::Websocket, "short").await;
        let started = std::time::Instant::now();
        expect_expired_then_closed(&mut c, "expired").await;
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "not before it expired"
        );
    }
);

on_every_backend!(
    logout_that_keeps_the_row_ends_the_socket,
    fast_checks,
    |env: TestEnv| async move {
        env.write_session(
            "kept",
            &json!({"cookie": {}, "passport": {"user": 13}}),
            now_secs() + 3600,
        )
        .await;
        let mut c = connected(&env, Transport::Polling, "kept").await;
        // passport's logout leaves `passport: {}` in a row that lives on.
        env.write_session(
            "kept",
            &json!({"cookie": {}, "passport": {}}),
            now_secs() + 3600,
        )
        .await;
        expect_expired_then_closed(&mut c, "logged_out").await;
    }
);

on_every_backend!(
    expiring_session_is_extended_and_stays_connected,
    |config: &mut sockgate::Config| {
        config.session_check_interval = Duration::from_millis(300);
        config.session_refresh_window = Duration::from_secs(30);
    },
    |env: TestEnv| async move {
        let old_expires = "2000-01-01T00:00:00.000Z";
        env.write_session(
            "extend-me",
            &json!({"cookie": {"originalMaxAge": 120_000, "expires": old_expires, "httpOnly": true}, "passport": {"user": 14}, "cart": [1, 2]}),
            now_secs() + 3,
        )
        .await;
        let mut c = connected(&env, Transport::Websocket, "extend-me").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        // Still connected well past the original expiry.
        assert_eq!(c.whoami().await["userId"], "14");
        let row = entity::session::Entity::find_by_id("extend-me")
            .one(env.conn())
            .await
            .unwrap()
            .unwrap();
        let stored = env
            .server
            .state
            .auth
            .store
            .load("extend-me")
            .await
            .unwrap()
            .unwrap();
        let left = (stored.expire_at - chrono::Utc::now()).num_seconds();
        assert!(
            (100..=121).contains(&left),
            "extended by originalMaxAge (120 s): {left} s left"
        );
        let expires = row.sess["cookie"]["expires"].as_str().unwrap();
        assert_ne!(expires, old_expires, "cookie.expires moved with expire");
        let cookie_expires = chrono::DateTime::parse_from_rfc3339(expires).unwrap();
        assert_eq!(
            sockgate::session::ceil_unix_seconds(cookie_expires.into()),
            stored.expire_at.timestamp()
        );
        assert_eq!(
            row.sess["cart"],
            json!([1, 2]),
            "other session fields untouched"
        );
        assert_eq!(row.sess["cookie"]["httpOnly"], true);
        let rows = env.audit_rows("session.refreshed", 1).await;
        assert!(!rows.is_empty());
        assert_eq!(rows[0].user_id.as_deref(), Some("14"));
        c.disconnect().await;
    }
);

on_every_backend!(
    a_session_without_a_cookie_expiry_keeps_none,
    |config: &mut sockgate::Config| {
        config.session_check_interval = Duration::from_millis(300);
        config.session_refresh_window = Duration::from_secs(30);
    },
    |env: TestEnv| async move {
        // A browser-session cookie (no maxAge): express-session stores expires null.
        env.write_session(
            "no-expiry",
            &json!({"cookie": {"originalMaxAge": null, "expires": null}, "passport": {"user": 15}}),
            now_secs() + 3,
        )
        .await;
        let mut c = connected(&env, Transport::Polling, "no-expiry").await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(c.whoami().await["userId"], "15");
        let row = entity::session::Entity::find_by_id("no-expiry")
            .one(env.conn())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.sess["cookie"]["expires"], serde_json::Value::Null);
        let stored = env
            .server
            .state
            .auth
            .store
            .load("no-expiry")
            .await
            .unwrap()
            .unwrap();
        assert!(
            (stored.expire_at - chrono::Utc::now()).num_seconds() > 3000,
            "extended by the configured ttl"
        );
        c.disconnect().await;
    }
);

on_every_backend!(
    client_disconnect_is_logged_and_audited,
    fast_checks,
    |env: TestEnv| async move {
        let minted = env.mint("16").await;
        let c = connected(&env, Transport::Websocket, &minted.sid).await;
        c.disconnect().await;
        let rows = env.audit_rows("socket.disconnected", 1).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].user_id.as_deref(), Some("16"));
        assert_eq!(
            rows[0].session_ref.as_deref(),
            Some(sockgate::session::fingerprint(&minted.sid).as_str())
        );
        assert!(
            rows[0].reason.as_deref().unwrap().contains("disconnected"),
            "{:?}",
            rows[0].reason
        );
        assert!(
            env.server.state.registry.sessions().is_empty(),
            "the registry forgets closed sockets"
        );
    }
);

// The re-check is batched: one query for many sessions, and one for the
// guest locks of all their users.
on_every_backend!(
    two_queries_per_tick_for_many_sessions,
    |config: &mut sockgate::Config| {
        config.session_check_interval = Duration::from_secs(3600);
    },
    |env: TestEnv| async move {
        let mut clients = Vec::new();
        for i in 0..20 {
            let sid = format!("batch-{i}");
            env.write_session(&sid, &json!({"passport": {"user": i}}), now_secs() + 3600)
                .await;
            clients.push(
                connected(
                    &env,
                    if i % 2 == 0 {
                        Transport::Polling
                    } else {
                        Transport::Websocket
                    },
                    &sid,
                )
                .await,
            );
        }
        // The server registers a socket just after the client sees it connect.
        for _ in 0..100 {
            if env.server.state.registry.sessions().len() == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = env
            .server
            .state
            .watcher
            .tick(chrono::Utc::now())
            .await
            .unwrap();
        assert_eq!(report.sessions, 20);
        assert_eq!(report.queries, 2);
        assert_eq!(report.ended_sessions, 0);
        for c in clients {
            c.disconnect().await;
        }
    }
);

/// A locked guest, organization 900 (SQLite's development data holds 1).
async fn locked_guest(env: &TestEnv, guest_id: i64, user: &str) {
    env.add_org(900, "Bad rows").await;
    env.add_guests(900, &[(guest_id, user.to_owned())]).await;
    env.exec(&format!(
        "UPDATE {{guest}} SET soft_locked = TRUE, locked_at = CURRENT_TIMESTAMP, \
         lock_reason = 'bad rows test' WHERE id = {guest_id}"
    ))
    .await;
}

async fn expire_of(env: &TestEnv, sid: &str) -> i64 {
    let stored = env
        .server
        .state
        .auth
        .store
        .load(sid)
        .await
        .unwrap()
        .unwrap();
    stored.expire_at.timestamp()
}

// A session whose JSON holds `\u0000` (legal in `json`, refused by every
// PostgreSQL JSON operator) and one whose `expire` is `infinity` sit beside
// ordinary ones: each is judged on its own, and the batch re-check and
// refresh of everyone else go on.
on_every_backend!(
    one_bad_row_cannot_stall_the_node,
    |c: &mut sockgate::Config| {
        c.session_check_interval = Duration::from_millis(300);
        c.session_refresh_window = Duration::from_secs(3600);
    },
    |env: TestEnv| async move {
        let now = now_secs();
        let cookie = json!({"originalMaxAge": 7_200_000, "expires": "2000-01-01T00:00:00.000Z"});
        env.write_session(
            "good",
            &json!({"cookie": cookie, "passport": {"user": 81}}),
            now + 60,
        )
        .await;
        env.write_session(
            "nul",
            &json!({"cookie": cookie, "note": "a\u{0}b", "passport": {"user": 82}}),
            now + 60,
        )
        .await;
        env.write_session("forever", &json!({"passport": {"user": 83}}), now + 60)
            .await;
        if env.db.is_postgres() {
            use sea_orm::ConnectionTrait;
            env.conn()
                .execute_unprepared("UPDATE session SET expire = 'infinity' WHERE sid = 'forever'")
                .await
                .unwrap();
        }
        let mut good = connected(&env, Transport::Websocket, "good").await;
        let mut nul = connected(&env, Transport::Polling, "nul").await;
        let mut forever = connected(&env, Transport::Websocket, "forever").await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let base = env.url();
        assert!(common::wire::metric(&base, "sockgate_revalidation_ticks_total").await >= 2.0);
        assert_eq!(
            common::wire::metric(&base, "sockgate_revalidation_failed_ticks_total").await,
            0.0,
            "no tick failed"
        );
        assert!(
            expire_of(&env, "good").await >= now + 7000,
            "the ordinary session near expiry was extended"
        );
        assert_eq!(good.whoami().await["userId"], "81");
        assert_eq!(nul.whoami().await["userId"], "82");
        assert_eq!(forever.whoami().await["userId"], "83");
        // The odd rows are still checked: deleting them ends their sockets.
        for sid in ["nul", "forever"] {
            env.server.state.auth.store.destroy(sid).await.unwrap();
        }
        expect_expired_then_closed(&mut nul, "deleted").await;
        expect_expired_then_closed(&mut forever, "deleted").await;
        // A locked guest cannot hide behind `\u0000`: refused at the
        // handshake, and found by the re-check if locked while connected.
        locked_guest(&env, 9001, "84").await;
        env.write_session(
            "nul-guest",
            &json!({"note": "\u{0}", "passport": {"user": 84}}),
            now + 600,
        )
        .await;
        let mut c = client::connect(
            &env.url(),
            Transport::Websocket,
            Options {
                cookie: Some(format!("connect.sid={}", env.cookie_value("nul-guest"))),
                ..Default::default()
            },
        )
        .await;
        c.expect_refused("Guest access revoked").await;
        env.write_session(
            "nul-85",
            &json!({"note": "\u{0}", "passport": {"user": 85}}),
            now + 600,
        )
        .await;
        let mut later = connected(&env, Transport::Websocket, "nul-85").await;
        locked_guest(&env, 9002, "85").await;
        let notice = later.expect_event_then_closed("guest:locked").await;
        assert_eq!(notice["reason"], "soft_locked");
        good.disconnect().await;
    }
);
