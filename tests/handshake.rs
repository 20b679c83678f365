//! The handshake contract (DESIGN.md, "Handshake"), through a real
//! rust_socketio client over both transports, on SQLite and PostgreSQL.

#[macro_use]
mod common;

use std::time::Duration;

use common::client::{self, Options, Transport};
use common::{Backend, PgServer, TestEnv, now_secs};
use serde_json::json;

fn cookie(env: &TestEnv, value: &str) -> Options {
    Options {
        cookie: Some(format!("{}={value}", env.config.cookie_name)),
        ..Default::default()
    }
}

on_every_backend!(
    valid_cookie_connects_and_knows_the_user,
    |env: TestEnv| async move {
        for transport in Transport::ALL {
            let minted = env.mint("42").await;
            let mut c =
                client::connect(&env.url(), transport, cookie(&env, &minted.cookie_value)).await;
            c.outcome()
                .await
                .unwrap_or_else(|e| panic!("{transport:?}: refused: {e}"));
            let me = c.whoami().await;
            assert_eq!(
                me,
                json!({"userId": "42", "sessionId": minted.sid, "authenticated": true}),
                "{transport:?}"
            );
            c.disconnect().await;
        }
        let rows = env.audit_rows("socket.authenticated", 2).await;
        assert_eq!(rows.len(), 2);
        for row in &rows {
            assert_eq!(row.severity, "INFO");
            assert_eq!(row.user_id.as_deref(), Some("42"));
            assert!(row.socket_id.is_some());
            assert_eq!(row.client_ip.as_deref(), Some("127.0.0.1"));
            let headers = row.headers.as_ref().unwrap();
            let names: Vec<&String> = headers.as_object().unwrap().keys().collect();
            assert!(
                names
                    .iter()
                    .all(|n| sockgate::audit::AUDITED_HEADERS.contains(&n.as_str())),
                "only the audited headers are kept: {names:?}"
            );
            assert!(names.iter().any(|n| *n == "host"), "{names:?}");
            let text = headers.to_string();
            assert!(
                !text.contains("s%3A") && !text.contains("cookie"),
                "no cookie in the audit row: {text}"
            );
        }
    }
);

// Handshakes that arrive together share one lookup statement
// (`session::lookup`): each must still get exactly its own session, or
// none, whatever else is in the batch.
on_every_backend!(
    concurrent_handshakes_each_get_their_own_session,
    |env: TestEnv| async move {
        const USERS: usize = 24;
        let mut minted = Vec::new();
        for i in 0..USERS {
            minted.push(env.mint(&format!("user-{i}")).await);
        }
        let expired = "expired-in-a-batch";
        env.write_session(
            expired,
            &json!({"cookie": {}, "passport": {"user": "expired-user"}}),
            now_secs() - 5,
        )
        .await;
        // Every user once, user 0's session on three sockets at once, and
        // ids with nothing stored or an expired row, all in flight together.
        let mut attempts: Vec<(Option<usize>, String)> = (0..USERS)
            .map(|i| (Some(i), minted[i].cookie_value.clone()))
            .collect();
        attempts.push((Some(0), minted[0].cookie_value.clone()));
        attempts.push((Some(0), minted[0].cookie_value.clone()));
        for i in 0..4 {
            attempts.push((None, env.cookie_value(&format!("no-such-session-{i}"))));
        }
        attempts.push((None, env.cookie_value(expired)));
        let url = env.url();
        let clients =
            futures_util::future::join_all(attempts.iter().enumerate().map(|(n, (_, value))| {
                let transport = Transport::ALL[n % Transport::ALL.len()];
                client::connect(&url, transport, cookie(&env, value))
            }))
            .await;
        for ((user, _), mut c) in attempts.into_iter().zip(clients) {
            match user {
                Some(i) => {
                    c.outcome()
                        .await
                        .unwrap_or_else(|e| panic!("user-{i} refused: {e}"));
                    assert_eq!(
                        c.whoami().await,
                        json!({"userId": format!("user-{i}"), "sessionId": minted[i].sid, "authenticated": true})
                    );
                    c.disconnect().await;
                }
                None => c.expect_refused("Session expired").await,
            }
        }
        // Every one of the 31 was looked up (its signature held), in at
        // most as many statements; /metrics says how many were shared.
        let lookups = common::wire::metric(&url, "sockgate_session_lookups").await;
        let statements = common::wire::metric(&url, "sockgate_session_lookup_statements").await;
        assert_eq!(lookups, 31.0);
        assert!(
            (1.0..=lookups).contains(&statements),
            "{statements} statements for {lookups} lookups"
        );
    }
);

on_every_backend!(metrics_show_the_session_pool, |env: TestEnv| async move {
    let minted = env.mint("42").await;
    let mut c = client::connect(
        &env.url(),
        Transport::Websocket,
        cookie(&env, &minted.cookie_value),
    )
    .await;
    c.outcome().await.expect("authenticated");
    let base = env.url();
    let open = common::wire::metric(&base, "sockgate_db_pool_open_connections").await;
    let idle = common::wire::metric(&base, "sockgate_db_pool_idle_connections").await;
    let max = common::wire::metric(&base, "sockgate_db_pool_max_connections").await;
    // The handshake's query went through the pool, so it has a
    // connection; none is held once the query is done.
    assert_eq!(max, f64::from(env.config.db_max_connections));
    assert!(open >= 1.0 && open <= max, "open {open} of {max}");
    assert!(idle <= open, "idle {idle} of {open}");
    c.disconnect().await;
});

on_every_backend!(auth_payload_is_the_fallback, |env: TestEnv| async move {
    for transport in Transport::ALL {
        let minted = env.mint("7").await;
        for value in [minted.signed.clone(), minted.cookie_value.clone()] {
            let opts = Options {
                auth: Some(json!({"sessionId": value, "userId": "999"})),
                ..Default::default()
            };
            let mut c = client::connect(&env.url(), transport, opts).await;
            c.outcome().await.unwrap();
            assert_eq!(
                c.whoami().await["userId"],
                "7",
                "the client's userId is never trusted"
            );
            c.disconnect().await;
        }
    }
});

on_every_backend!(rotated_secret_still_verifies, |env: TestEnv| async move {
    let minted = env.mint("5").await;
    let old = format!(
        "s:{}",
        sockgate::session::sign(&minted.sid, common::OLD_SECRET)
    );
    let mut c = client::connect(
        &env.url(),
        Transport::Websocket,
        Options {
            auth: Some(json!({"sessionId": old})),
            ..Default::default()
        },
    )
    .await;
    c.outcome().await.unwrap();
    c.disconnect().await;
});

on_every_backend!(
    missing_session_id_is_authentication_required,
    |env: TestEnv| async move {
        for transport in Transport::ALL {
            for opts in [
                Options::default(),
                Options {
                    auth: Some(json!("not an object")),
                    ..Default::default()
                },
                Options {
                    auth: Some(json!({"userId": 1})),
                    ..Default::default()
                },
                Options {
                    cookie: Some("other=1".into()),
                    ..Default::default()
                },
            ] {
                let mut c = client::connect(&env.url(), transport, opts).await;
                c.expect_refused("Authentication required").await;
            }
        }
        let rows = env.audit_rows("socket.auth_failed", 8).await;
        assert_eq!(rows.len(), 8);
        assert!(rows.iter().all(|r| r.severity == "WARN"
            && r.reason.as_deref() == Some("no session id in cookie or auth")));
    }
);

on_every_backend!(
    bad_signatures_are_invalid_session,
    |env: TestEnv| async move {
        let minted = env.mint("42").await;
        let forged = format!(
            "s:{}",
            sockgate::session::sign(&minted.sid, "attacker-secret")
        );
        let tampered = minted.cookie_value.replace("s%3A", "s%3Ax");
        let values = [
            forged.clone(),
            tampered,
            minted.sid.clone(),                // unsigned
            "s%3A%zz%E0%A4%A".to_owned(),      // percent-encoding garbage
            format!("s:{}", "A".repeat(5000)), // huge
            "\"s%3A\"".to_owned(),
        ];
        for transport in Transport::ALL {
            for value in &values {
                let mut c = client::connect(&env.url(), transport, cookie(&env, value)).await;
                c.expect_refused("Invalid session").await;
            }
            let mut c = client::connect(
                &env.url(),
                transport,
                Options {
                    auth: Some(json!({"sessionId": forged})),
                    ..Default::default()
                },
            )
            .await;
            c.expect_refused("Invalid session").await;
            let mut c = client::connect(
                &env.url(),
                transport,
                Options {
                    auth: Some(json!({"sessionId": 12345})),
                    ..Default::default()
                },
            )
            .await;
            c.expect_refused("Invalid session").await;
        }
        let rows = env.audit_rows("socket.auth_failed", 16).await;
        assert_eq!(rows.len(), 16);
        for row in rows {
            assert!(
                row.reason
                    .as_deref()
                    .unwrap()
                    .starts_with("invalid session"),
                "{:?}",
                row.reason
            );
            let all = format!("{row:?}");
            assert!(
                !all.contains(common::SECRET) && !all.contains(&minted.sid),
                "no secret or sid in audit: {all}"
            );
        }
    }
);

on_every_backend!(
    unknown_and_expired_sessions_are_session_expired,
    |env: TestEnv| async move {
        let expired = "expired-session-id";
        env.write_session(
            expired,
            &json!({"cookie": {}, "passport": {"user": 3}}),
            now_secs() - 5,
        )
        .await;
        for transport in Transport::ALL {
            for sid in ["no-such-session", expired] {
                let mut c =
                    client::connect(&env.url(), transport, cookie(&env, &env.cookie_value(sid)))
                        .await;
                c.expect_refused("Session expired").await;
            }
        }
        let rows = env.audit_rows("socket.auth_failed", 4).await;
        let reasons: Vec<_> = rows.iter().map(|r| r.reason.clone().unwrap()).collect();
        assert_eq!(
            reasons.iter().filter(|r| *r == "no such session").count(),
            2,
            "{reasons:?}"
        );
        assert_eq!(
            reasons.iter().filter(|r| *r == "session expired").count(),
            2,
            "{reasons:?}"
        );
        assert!(
            rows.iter()
                .filter(|r| r.reason.as_deref() == Some("session expired"))
                .all(|r| r.user_id.as_deref() == Some("3"))
        );
    }
);

on_every_backend!(
    sessions_without_a_user_are_authentication_required,
    |env: TestEnv| async move {
        let cases = [
            json!({"cookie": {}}),
            json!({"cookie": {}, "passport": {}}),
            json!({"cookie": {}, "passport": {"user": ""}}),
            json!({"cookie": {}, "passport": {"user": null}}),
        ];
        for (i, sess) in cases.iter().enumerate() {
            let sid = format!("anon-{i}");
            env.write_session(&sid, sess, now_secs() + 600).await;
            let mut c = client::connect(
                &env.url(),
                Transport::Polling,
                cookie(&env, &env.cookie_value(&sid)),
            )
            .await;
            c.expect_refused("Authentication required").await;
        }
        // Passport's own shapes, id 0 included, are logged in.
        for (i, (user, expected)) in [
            (json!(0), "0"),
            (json!("u-1"), "u-1"),
            (json!({"id": 9, "username": "n"}), "9"),
        ]
        .into_iter()
        .enumerate()
        {
            let sid = format!("user-{i}");
            env.write_session(
                &sid,
                &json!({"cookie": {}, "passport": {"user": user}}),
                now_secs() + 600,
            )
            .await;
            let mut c = client::connect(
                &env.url(),
                Transport::Websocket,
                cookie(&env, &env.cookie_value(&sid)),
            )
            .await;
            c.outcome().await.unwrap();
            assert_eq!(c.whoami().await["userId"], expected);
            c.disconnect().await;
        }
    }
);

on_every_backend!(
    expiry_boundary_one_second_either_side,
    |env: TestEnv| async move {
        let now = now_secs();
        env.write_session("just-live", &json!({"passport": {"user": 1}}), now + 3)
            .await;
        env.write_session("just-dead", &json!({"passport": {"user": 1}}), now - 1)
            .await;
        let mut c = client::connect(
            &env.url(),
            Transport::Websocket,
            cookie(&env, &env.cookie_value("just-live")),
        )
        .await;
        c.outcome().await.unwrap();
        c.disconnect().await;
        let mut c = client::connect(
            &env.url(),
            Transport::Websocket,
            cookie(&env, &env.cookie_value("just-dead")),
        )
        .await;
        c.expect_refused("Session expired").await;
    }
);

// The Node app writes `expire` in the database's default zone; sockgate
// must read it in that zone, whatever sqlx sets on its connections.
on_both_majors!(
    expiry_is_judged_in_the_database_default_time_zone,
    expiry_in_the_default_zone
);

async fn expiry_in_the_default_zone(server: PgServer) {
    use sea_orm::ConnectionTrait;
    for zone in [
        "America/Los_Angeles",
        "Asia/Tokyo",
        "Pacific/Kiritimati",
        "UTC",
    ] {
        // Two pooled connections, one of them held by the revocation
        // listener: the session state set below is what every query runs
        // under (the last assertion checks it): whatever a pooler (PgBouncer in
        // transaction mode, DISCARD ALL) leaves a connection in, expiry
        // must not move. sqlx opens it with TimeZone=UTC; then far east and
        // far west of the database default.
        let Some(env) = TestEnv::start_with(Backend::Postgres(server, Some(zone)), |c| {
            c.db_max_connections = 2
        })
        .await
        else {
            return;
        };
        for session_zone in ["UTC", "Etc/GMT-14", "Etc/GMT+12"] {
            env.conn()
                .execute_unprepared(&format!("SET TimeZone = '{session_zone}'"))
                .await
                .unwrap();
            let now = now_secs();
            let live = format!("live-{session_zone}");
            let dead = format!("dead-{session_zone}");
            env.write_session(&live, &json!({"passport": {"user": 1}}), now + 2)
                .await;
            env.write_session(&dead, &json!({"passport": {"user": 1}}), now - 2)
                .await;
            let mut c = client::connect(
                &env.url(),
                Transport::Polling,
                cookie(&env, &env.cookie_value(&live)),
            )
            .await;
            c.outcome().await.unwrap_or_else(|e| {
                panic!("{zone} (session {session_zone}): a live session was refused: {e}")
            });
            c.disconnect().await;
            let mut c = client::connect(
                &env.url(),
                Transport::Polling,
                cookie(&env, &env.cookie_value(&dead)),
            )
            .await;
            c.expect_refused("Session expired").await;
            // And the row sockgate mints reads back the same way the Node app's does.
            let minted = env.mint_for("2", Duration::from_secs(3)).await;
            let mut c = client::connect(
                &env.url(),
                Transport::Polling,
                cookie(&env, &minted.cookie_value),
            )
            .await;
            c.outcome().await.unwrap_or_else(|e| {
                panic!("{zone} (session {session_zone}): minted session refused: {e}")
            });
            c.disconnect().await;
            let row = env
                .conn()
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SHOW TimeZone",
                ))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                row.try_get::<String>("", "TimeZone").unwrap(),
                session_zone,
                "the test really ran under that session zone"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unreachable_fails_closed_and_recovers() {
    let Some(env) = TestEnv::start(Backend::PG).await else {
        return;
    };
    let minted = env.mint("42").await;
    // Make the database refuse connections, then drop the pool's existing ones.
    let admin = common::pg::admin_url().unwrap();
    let name = url::Url::parse(&env.db.url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    let mut admin_conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin_conn)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )))
    .execute(&mut admin_conn)
    .await
    .unwrap();

    for transport in Transport::ALL {
        let mut c =
            client::connect(&env.url(), transport, cookie(&env, &minted.cookie_value)).await;
        c.expect_refused("Service unavailable").await;
    }
    // The server is still up.
    let health = reqwest::get(format!("{}/healthz", env.url()))
        .await
        .unwrap();
    assert!(health.status().is_success());

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin_conn)
    .await
    .unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        let mut c = client::connect(
            &env.url(),
            Transport::Websocket,
            cookie(&env, &minted.cookie_value),
        )
        .await;
        if c.outcome().await.is_ok() {
            recovered = true;
            c.disconnect().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "handshakes succeed again once the database is back"
    );
    // The refusals during the outage were audited once the store was back.
    let rows = env.audit_rows("socket.auth_failed", 2).await;
    assert!(
        rows.iter()
            .filter(|r| r.reason.as_deref().unwrap_or("").contains("unavailable"))
            .count()
            >= 2,
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_unreachable_fails_closed() {
    let env = TestEnv::start(Backend::Sqlite).await.unwrap();
    let minted = env.mint("42").await;
    env.conn().get_sqlite_connection_pool().close().await;
    let mut c = client::connect(
        &env.url(),
        Transport::Polling,
        cookie(&env, &minted.cookie_value),
    )
    .await;
    c.expect_refused("Service unavailable").await;
}

// socketioxide spawns the connect handler after the CONNECT packet is sent;
// a client that emits the moment it is connected must still be heard.
on_every_backend!(
    an_event_sent_the_moment_the_client_is_connected_is_answered,
    |env: TestEnv| async move {
        let minted = env.mint("43").await;
        for transport in Transport::ALL {
            for trial in 0..25 {
                let mut c =
                    client::connect(&env.url(), transport, cookie(&env, &minted.cookie_value))
                        .await;
                c.outcome().await.unwrap();
                assert_eq!(
                    c.whoami().await["userId"],
                    "43",
                    "{transport:?}, trial {trial}"
                );
                c.disconnect().await;
            }
        }
    }
);

// engine.io's reference server sends a session's first ping one
// `pingInterval` after the open. Pinged at once, a long-polling client read
// the ping alone on its first poll (the answer waits for the session
// lookup), and took a pong and another poll to read the answer.
on_every_backend!(
    a_long_polling_clients_first_poll_reads_the_connect_answer,
    |env: TestEnv| async move {
        let minted = env.mint("44").await;
        let cookie = format!("{}={}", env.config.cookie_name, minted.cookie_value);
        for trial in 0..5 {
            let open = common::wire::polling_open(&env.url(), &cookie).await;
            assert_eq!(open["pingInterval"], 25_000);
            let first = common::wire::polling_connect(&env.url(), &open, &cookie).await;
            let packets: Vec<&str> = first.split('\u{1e}').collect();
            assert!(
                packets[0].starts_with("40{") && !packets.contains(&"2"),
                "trial {trial}: the first poll reads the CONNECT answer, no ping: {first:?}"
            );
        }
    }
);

on_both_majors!(
    audit_batches_of_every_size_share_one_prepared_statement,
    audit_batches_share_one_statement_on
);

/// Every handshake is audited, in batches of whatever size the load makes.
/// A statement whose text grew with its row count would leave one prepared
/// statement per batch size seen in the connection's backend (and in sqlx's
/// cache) for the connection's life: memory that grows with the variety of
/// load, on both sides. The batch travels as one JSON value instead, so
/// every size shares one text, prepared once, as the lookups' is.
async fn audit_batches_share_one_statement_on(server: PgServer) {
    use sea_orm::ConnectionTrait;
    // Two pooled connections, one of them held by the revocation listener:
    // every statement of the handshakes and their audit runs on the other,
    // the one the query below reads (its own statements included).
    let Some(env) = TestEnv::start_with(Backend::Postgres(server, None), |c| {
        c.db_max_connections = 2
    })
    .await
    else {
        return;
    };
    let url = env.url();
    let mut audited = 0;
    for wave in [1usize, 3, 7, 12] {
        let mut cookies = Vec::new();
        for i in 0..wave {
            let minted = env.mint(&format!("wave-{wave}-{i}")).await;
            cookies.push(cookie(&env, &minted.cookie_value));
        }
        let clients = futures_util::future::join_all(
            cookies
                .into_iter()
                .map(|opts| client::connect(&url, Transport::Websocket, opts)),
        )
        .await;
        for mut c in clients {
            c.outcome().await.expect("authenticated");
            c.disconnect().await;
        }
        audited += wave;
        let rows = env.audit_rows("socket.authenticated", audited).await;
        assert_eq!(
            rows.len(),
            audited,
            "every handshake of wave {wave} audited"
        );
    }
    let prepared: Vec<String> = env
        .conn()
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT statement FROM pg_prepared_statements",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "statement").unwrap())
        .collect();
    assert!(
        prepared.iter().any(|s| s.contains("sess::text")),
        "the session lookup is prepared on this connection (the one the handshakes used): {prepared:?}"
    );
    let audit_insert = format!("INSERT INTO {} ", env.tables().audit.table);
    let inserts: Vec<&String> = prepared
        .iter()
        .filter(|s| s.trim_start().starts_with(&audit_insert))
        .collect();
    assert_eq!(
        inserts.len(),
        1,
        "one audit INSERT prepared for batches of every size: {inserts:?}"
    );
}

/// An engine.io session opened with a session cookie, not yet CONNECTed.
enum Opened {
    Websocket(Box<common::engine_io::Ws>),
    /// The open packet.
    Polling(serde_json::Value),
}

impl Opened {
    async fn open(env: &TestEnv, transport: Transport, cookie_value: &str) -> Opened {
        match transport {
            Transport::Websocket => Opened::Websocket(Box::new(
                common::engine_io::open(&env.server.local_addr, cookie_value)
                    .await
                    .unwrap(),
            )),
            Transport::Polling => {
                let cookie = format!("{}={cookie_value}", env.config.cookie_name);
                Opened::Polling(common::wire::polling_open(&env.url(), &cookie).await)
            }
        }
    }

    /// CONNECT: `Ok` when connected, else the CONNECT_ERROR packet.
    async fn connect(self, env: &TestEnv, cookie_value: &str) -> Result<(), String> {
        match self {
            Opened::Websocket(ws) => match common::engine_io::join_namespace(*ws).await {
                Ok(_) => Ok(()),
                Err(common::engine_io::HandshakeError::Refused(packet)) => Err(packet),
                Err(other) => panic!("{other:?}"),
            },
            Opened::Polling(open) => {
                let cookie = format!("{}={cookie_value}", env.config.cookie_name);
                let reply = common::wire::polling_connect(&env.url(), &open, &cookie).await;
                let answer = reply
                    .split('\u{1e}')
                    .find(|p| p.starts_with("40") || p.starts_with("44"))
                    .unwrap_or_else(|| panic!("no answer to CONNECT in {reply:?}"));
                if answer.starts_with("40") {
                    Ok(())
                } else {
                    Err(answer.to_owned())
                }
            }
        }
    }
}

// The session lookup starts when the engine.io session opens, and answers
// the CONNECT that follows (still one lookup per handshake); a CONNECT that
// comes more than EARLY_LOOKUP_FRESH after the open looks the session up
// again, so a session that ended in between is refused.
on_every_backend!(
    the_lookup_starts_at_the_open_and_a_late_connect_looks_again,
    |env: TestEnv| async move {
        let (lookups, early, stale) = (
            "sockgate_session_lookups",
            "sockgate_session_lookups_early_total",
            "sockgate_session_lookups_stale_total",
        );
        let base = env.url();
        let count = |name: &'static str| common::wire::metric(&base, name);
        let fresh = sockgate::session::EARLY_LOOKUP_FRESH;

        // On time: looked up before any CONNECT, and once only. The CONNECT
        // goes well inside the bound; a machine too slow for that gets
        // another try.
        let minted = env.mint("46").await;
        for transport in Transport::ALL {
            for attempt in 0.. {
                let (l0, e0, s0) = (count(lookups).await, count(early).await, count(stale).await);
                let opened = std::time::Instant::now();
                let session = Opened::open(&env, transport, &minted.cookie_value).await;
                common::wire::metric_reaches(&base, lookups, l0 + 1.0).await;
                assert_eq!(count(early).await, e0 + 1.0, "{transport:?}");
                if opened.elapsed() > fresh / 2 {
                    assert!(attempt < 5, "{transport:?}: never inside the bound");
                    continue;
                }
                session.connect(&env, &minted.cookie_value).await.unwrap();
                assert_eq!(count(lookups).await, l0 + 1.0, "{transport:?}: one lookup");
                assert_eq!(count(stale).await, s0, "{transport:?}");
                break;
            }
        }

        // Late: the session expires between the open and a CONNECT sent
        // after the bound; the early answer (live) is not used.
        let ended = |user: &str| json!({"cookie": {"path": "/"}, "passport": {"user": user}});
        for (transport, user) in [(Transport::Polling, "47"), (Transport::Websocket, "48")] {
            let late = env.mint(user).await;
            let (l0, s0) = (count(lookups).await, count(stale).await);
            let session = Opened::open(&env, transport, &late.cookie_value).await;
            common::wire::metric_reaches(&base, lookups, l0 + 1.0).await;
            env.write_session(&late.sid, &ended(user), now_secs() - 60)
                .await;
            tokio::time::sleep(fresh + Duration::from_millis(200)).await;
            let refused = session.connect(&env, &late.cookie_value).await;
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|packet| packet.contains("Session expired")),
                "{transport:?}: {refused:?}"
            );
            assert_eq!(
                count(lookups).await,
                l0 + 2.0,
                "{transport:?}: looked up again"
            );
            assert_eq!(count(stale).await, s0 + 1.0, "{transport:?}");
        }
    }
);
