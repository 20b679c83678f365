//! sockgate in the Node app's own database, beside the app's tables: two
//! app schemas as fixtures, on SQLite and PostgreSQL, through a real server
//! and a real Socket.IO client.
//!
//! (a) drizzle / better-auth style: text ids, quoted camelCase columns,
//!     `member.role` among owner / admin / member, its own `auditLog`;
//! (b) snake_case with integer ids and an `audit_log` of its own, in tables
//!     named exactly as sockgate's own once were (`organization`, `member`,
//!     `guest`, `audit_log`), sessions holding `passport.user` as a number.

#[macro_use]
mod common;

use std::time::Duration;

use common::app_schemas::{
    AppSchema, DRIZZLE, SNAKE, app_catalog, app_database, exec, raw_connection, with_mapping,
};
use common::client::{self, Options, Transport};
use common::{Backend, TestEnv};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

/// A session of `user` as the app writes it after a login.
async fn session_of(env: &TestEnv, schema: &AppSchema, user: &str) -> String {
    let sid = sockgate::session::new_sid();
    let passport_user = if schema.numeric_users {
        json!(user.parse::<i64>().unwrap())
    } else {
        json!(user)
    };
    let sess = json!({"cookie": {"originalMaxAge": 3_600_000, "httpOnly": true, "path": "/"},
                      "passport": {"user": passport_user}});
    env.write_session(&sid, &sess, common::now_secs() + 3600)
        .await;
    format!("connect.sid={}", env.cookie_value(&sid))
}

async fn connect(env: &TestEnv, transport: Transport, cookie: &str) -> client::TestClient {
    let opts = Options {
        cookie: Some(cookie.to_owned()),
        ..Default::default()
    };
    client::connect(&env.url(), transport, opts).await
}

async fn post_disconnect(env: &TestEnv, guest: &str, cookie: Option<&str>) -> (u16, Value) {
    let url = format!("{}/api/admin/guest/{guest}/disconnect", env.url());
    sockgate_conformance::cases::post_json(&common::http(), &url, cookie, None, None)
        .await
        .unwrap()
}

async fn lock_state(
    env: &TestEnv,
    schema: &AppSchema,
    guest: &str,
) -> (bool, Option<String>, bool) {
    let row = env
        .conn()
        .query_one_raw(Statement::from_string(
            env.conn().get_database_backend(),
            schema.lock_query.replace("{id}", guest),
        ))
        .await
        .unwrap()
        .expect("the app's guest row");
    (
        row.try_get::<i32>("", "locked").unwrap() != 0,
        row.try_get("", "reason").unwrap(),
        row.try_get::<i32>("", "has_time").unwrap() != 0,
    )
}

/// The app's audit rows of `action` (user id, details), waiting for the
/// asynchronous writer.
async fn app_audit(
    env: &TestEnv,
    schema: &AppSchema,
    action: &str,
    at_least: usize,
) -> Vec<(Option<String>, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = env
            .conn()
            .query_all_raw(Statement::from_string(
                env.conn().get_database_backend(),
                schema.audit_query.replace("{action}", action),
            ))
            .await
            .unwrap();
        let rows: Vec<(Option<String>, Value)> = rows
            .iter()
            .map(|r| {
                let details: Option<String> = r.try_get("", "details").unwrap();
                (
                    r.try_get("", "user_id").unwrap(),
                    details
                        .map(|d| serde_json::from_str(&d).unwrap())
                        .unwrap_or(Value::Null),
                )
            })
            .collect();
        if rows.len() >= at_least || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything a deployment beside `schema` relies on.
async fn beside(backend: Backend, schema: &'static AppSchema) {
    let Some(db) = app_database(backend, schema).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tweak = with_mapping(&dir, schema);

    // `sockgate migrate` leaves every object of the app as it was.
    let mut config = common::test_config(&db);
    config.config_file = Some(dir.path().join("sockgate.toml"));
    let conn = raw_connection(&db.url).await;
    let before = app_catalog(&conn).await;
    let database = sockgate::db::connect(&config).await.unwrap();
    sockgate::db::migrate(&config, &database).await.unwrap();
    sockgate::db::migrate(&config, &database).await.unwrap();
    assert_eq!(
        app_catalog(&conn).await,
        before,
        "migrate changed the app's objects"
    );
    conn.close().await.unwrap();

    let env = TestEnv::start_on(db, tweak).await;
    assert!(env.tables().mapped_guests && !env.tables().audit.own);

    // A valid session connects; the user id comes from the stored session.
    let guest_cookie = session_of(&env, schema, schema.guest_user).await;
    let mut guest = connect(&env, Transport::Websocket, &guest_cookie).await;
    guest.outcome().await.expect("the guest connects");
    assert_eq!(guest.whoami().await["userId"], json!(schema.guest_user));
    let guest2_cookie = session_of(&env, schema, schema.guest2_user).await;
    let mut guest2 = connect(&env, Transport::Polling, &guest2_cookie).await;
    guest2.outcome().await.expect("the second guest connects");

    // The admin route on the app's own rows: 401, 403, 404, then 200.
    let admin = session_of(&env, schema, schema.admin).await;
    let member = session_of(&env, schema, schema.member).await;
    let outsider = session_of(&env, schema, schema.outsider).await;
    assert_eq!(post_disconnect(&env, schema.guest, None).await.0, 401);
    assert_eq!(
        post_disconnect(&env, schema.guest, Some(&member)).await.0,
        403
    );
    assert_eq!(
        post_disconnect(&env, schema.guest, Some(&outsider)).await.0,
        403
    );
    for unknown in [
        "999999",
        "no-such-guest",
        "00000000-0000-4000-8000-000000000000",
    ] {
        assert_eq!(
            post_disconnect(&env, unknown, Some(&admin)).await,
            (404, json!({"success": false, "error": "Guest not found"})),
            "guest id {unknown:?}"
        );
    }
    assert!(
        !lock_state(&env, schema, schema.guest).await.0,
        "not locked yet"
    );
    assert_eq!(
        post_disconnect(&env, schema.guest, Some(&admin)).await,
        (200, json!({"success": true, "disconnected": 1}))
    );
    let payload = guest.expect_event_then_closed("guest:locked").await;
    assert_eq!(payload["reason"], "soft_locked");
    let (locked, reason, has_time) = lock_state(&env, schema, schema.guest).await;
    assert!(locked, "the app's soft-lock flag is set");
    if schema.lock_query.contains("lockReason") {
        assert_eq!(reason.as_deref(), Some(sockgate::DEFAULT_REASON));
        assert!(has_time, "the lock time is set");
    }
    // Idempotent: a second call locks nothing new and finds no socket.
    assert_eq!(
        post_disconnect(&env, schema.guest, Some(&admin)).await,
        (200, json!({"success": true, "disconnected": 0}))
    );
    // A locked guest cannot come back.
    let mut again = connect(&env, Transport::Polling, &guest_cookie).await;
    again.expect_refused("Guest access revoked").await;

    // The app locked guest 2 itself (its own admin UI), then calls the
    // route: the guest is still told and disconnected.
    exec(env.conn(), &schema.app_lock.replace("{id}", schema.guest2)).await;
    assert_eq!(
        post_disconnect(&env, schema.guest2, Some(&admin)).await,
        (200, json!({"success": true, "disconnected": 1}))
    );
    guest2.expect_event_then_closed("guest:locked").await;
    if !schema.numeric_users {
        assert_eq!(
            lock_state(&env, schema, schema.guest2).await.1.as_deref(),
            Some("locked by the app"),
            "the app's own lock reason is kept"
        );
    }

    // Serving (the PostgreSQL adapter's attachments table included) added
    // nothing beside the app's tables either.
    let conn = raw_connection(&env.db.url).await;
    assert_eq!(
        app_catalog(&conn).await,
        before,
        "serving changed the app's objects"
    );
    conn.close().await.unwrap();

    // Audit rows land in the app's audit table, beside its own entries.
    let rows = app_audit(&env, schema, "socket.authenticated", 2).await;
    assert!(
        rows.iter()
            .any(|(user, _)| user.as_deref() == Some(schema.guest_user)),
        "{rows:?}"
    );
    let rows = app_audit(&env, schema, "guest.disconnected", 3).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(user, _)| user.as_deref() == Some(schema.admin))
    );
    let refused = app_audit(&env, schema, "socket.auth_failed", 1).await;
    assert!(
        refused
            .iter()
            .any(|(user, _)| user.as_deref() == Some(schema.guest_user)),
        "{refused:?}"
    );
    // Read back through the same mapping: a field without a column of its
    // own (the reason in (a), the session reference in both) is in details,
    // the headers there as the object they are (not as its text).
    let read = env.audit_rows("socket.auth_failed", 1).await;
    assert!(
        read.iter()
            .any(|r| r.reason.as_deref() == Some("guest access soft-locked")
                && r.session_ref.is_some()
                && r.headers.as_ref().is_some_and(|h| h["host"].is_string())),
        "{read:?}"
    );
    assert_eq!(env.audit_rows("guest.disconnected", 3).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_drizzle_schema_on_sqlite() {
    beside(Backend::Sqlite, &DRIZZLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_drizzle_schema_on_postgres() {
    beside(Backend::PG, &DRIZZLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_drizzle_schema_on_postgres_second() {
    beside(Backend::PG_SECOND, &DRIZZLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_snake_case_integer_schema_on_sqlite() {
    beside(Backend::Sqlite, &SNAKE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_snake_case_integer_schema_on_postgres() {
    beside(Backend::PG, &SNAKE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_snake_case_integer_schema_on_postgres_second() {
    beside(Backend::PG_SECOND, &SNAKE).await;
}

/// Runs `sockgate check` against `db` with the mapping file `config`.
fn check(db: &common::TestDb, config: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .arg("check")
        .env("DATABASE_URL", &db.url)
        .env("SOCKGATE_CONFIG", config)
        .env("SESSION_SECRET", common::SECRET)
        .env_remove("SOCKGATE_SCHEMA")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// How many rows the app's audit table holds.
async fn app_audit_count(db: &common::TestDb, schema: &AppSchema) -> i64 {
    let conn = raw_connection(&db.url).await;
    let table = if schema.numeric_users {
        "audit_log"
    } else {
        "\"auditLog\""
    };
    let n = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    conn.close().await.unwrap();
    n
}

/// A mapping naming what is not there: the server's start and `sockgate
/// check` both refuse with a message naming it, and the app's tables are
/// left exactly as they were.
async fn refuses(backend: Backend, edit: (&str, &str), migrate: bool, expected: &[&str]) {
    let schema = &DRIZZLE;
    let Some(db) = app_database(backend, schema).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockgate.toml");
    std::fs::write(&path, schema.mapping.replace(edit.0, edit.1)).unwrap();
    let mut config = common::test_config(&db);
    config.config_file = Some(path.clone());
    if migrate {
        let database = sockgate::db::connect(&config).await.unwrap();
        sockgate::db::migrate(&config, &database).await.unwrap();
    }
    let conn = raw_connection(&db.url).await;
    let before = app_catalog(&conn).await;

    let (ok, text) = check(&db, &path, &[]);
    assert!(!ok, "check must fail: {text}");
    for needle in expected {
        assert!(
            text.contains(needle),
            "check says {text:?}, expected {needle:?}"
        );
    }
    let Err(error) = sockgate::server::prepare(config).await else {
        panic!("the server must refuse to start");
    };
    let error = format!("{error:#}");
    for needle in expected {
        assert!(
            error.contains(needle),
            "serve says {error:?}, expected {needle:?}"
        );
    }
    assert_eq!(
        app_catalog(&conn).await,
        before,
        "the app's objects changed"
    );
    assert_eq!(
        app_audit_count(&db, schema).await,
        0,
        "an audit row was written"
    );
    conn.close().await.unwrap();
}

on_every_backend_raw!(a_missing_mapped_column_is_named, |backend| refuses(
    backend,
    ("soft_locked = \"softLocked\"", "soft_locked = \"softLock\""),
    true,
    &["\"guest\"", "no column \"softLock\"", "soft_locked"],
));

on_every_backend_raw!(a_column_of_the_wrong_type_is_named, |backend| refuses(
    backend,
    ("role = \"role\"", "role = \"createdAt\""),
    true,
    &[
        "\"member\"",
        "\"createdAt\"",
        "expected text, varchar or an enum"
    ],
));

on_every_backend_raw!(a_missing_table_is_named, |backend| refuses(
    backend,
    ("table = \"auditLog\"", "table = \"audit_trail\""),
    true,
    &["audit table \"audit_trail\" does not exist"],
));

/// On PostgreSQL `serve` never creates sockgate's schema: without
/// `sockgate migrate` it refuses, naming the schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_sockgate_schema_is_named() {
    refuses(
        Backend::PG,
        ("", ""),
        false,
        &["schema \"sockgate\"", "sockgate migrate"],
    )
    .await;
}

/// The app's database on the primary PostgreSQL with `schema`'s mapping
/// file written (in the returned directory) and `sockgate migrate` run.
async fn migrated_beside(
    schema: &AppSchema,
) -> Option<(common::TestDb, tempfile::TempDir, std::path::PathBuf)> {
    let db = app_database(Backend::PG, schema).await?;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockgate.toml");
    std::fs::write(&path, schema.mapping).unwrap();
    let mut config = common::test_config(&db);
    config.config_file = Some(path.clone());
    let database = sockgate::db::connect(&config).await.unwrap();
    sockgate::db::migrate(&config, &database).await.unwrap();
    Some((db, dir, path))
}

/// `sockgate check` on a good deployment prints what sockgate relies on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_what_sockgate_relies_on() {
    for schema in [&DRIZZLE, &SNAKE] {
        let Some((db, _dir, path)) = migrated_beside(schema).await else {
            return;
        };
        let (ok, text) = check(&db, &path, &[]);
        assert!(ok, "{text}");
        for needle in [
            "session time zone: ",
            "session table: \"session\" (sid character varying, sess json, expire timestamp(6) without time zone)",
            "sockgate's own tables: schema \"sockgate\", migrations up to date",
            "guests: \"guest\" (the app's, mapped): id=\"id\" ",
            "members: \"member\" (the app's, mapped)",
            "audit: ",
            "origins: ",
            "adapter: Postgres",
            "OK: sockgate can serve with this configuration",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        if schema.numeric_users {
            assert!(text.contains("user_id=\"user_id\" integer"), "{text}");
            assert!(
                text.contains("inside details: session_ref, headers"),
                "{text}"
            );
        } else {
            assert!(text.contains("admin roles: owner, admin"), "{text}");
            assert!(
                text.contains("audit: \"auditLog\" (the app's, mapped): id=\"id\" text"),
                "{text}"
            );
        }
    }
}

/// The mapping file can be overridden entry by entry from the environment:
/// a correct file with `SOCKGATE_GUESTS__SOFT_LOCKED` naming a column that
/// is not there is refused, naming the override's column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_overrides_the_mapping_file() {
    let schema = &DRIZZLE;
    let Some((db, _dir, path)) = migrated_beside(schema).await else {
        return;
    };
    assert!(check(&db, &path, &[]).0, "the file alone is good");
    let (ok, text) = check(&db, &path, &[("SOCKGATE_GUESTS__SOFT_LOCKED", "isLocked")]);
    assert!(
        !ok && text.contains("no column \"isLocked\" (mapped as soft_locked)"),
        "{text}"
    );
    let (ok, text) = check(
        &db,
        &path,
        &[("SOCKGATE_MEMBERS__ADMIN_ROLES", "[\"superuser\"]")],
    );
    assert!(ok && text.contains("admin roles: superuser"), "{text}");
}

/// A table in sockgate's namespace with another shape is never adopted:
/// `migrate` and the server's start name the table and the difference.
async fn foreign_table_in_the_namespace(backend: Backend) {
    let Some(db) = app_database(backend, &SNAKE).await else {
        return;
    };
    let conn = raw_connection(&db.url).await;
    let (create, shown) = if db.is_postgres() {
        (
            "CREATE SCHEMA sockgate; CREATE TABLE sockgate.guest (id serial PRIMARY KEY, name text)",
            "\"sockgate\".\"guest\"",
        )
    } else {
        (
            "CREATE TABLE sockgate_guest (id integer PRIMARY KEY, name text)",
            "\"sockgate_guest\"",
        )
    };
    exec(&conn, create).await;
    let config = common::test_config(&db);
    let database = sockgate::db::connect(&config).await.unwrap();
    let error = sockgate::db::migrate(&config, &database)
        .await
        .expect_err("a foreign table in the namespace")
        .to_string();
    for needle in [
        shown,
        "column \"user_id\" is missing",
        "unexpected column \"name\"",
        "never adopts",
    ] {
        assert!(error.contains(needle), "{error:?} lacks {needle:?}");
    }
    let error = format!(
        "{:#}",
        sockgate::server::prepare(config)
            .await
            .err()
            .expect("no start")
    );
    assert!(
        error.contains(shown) && error.contains("unexpected column"),
        "{error}"
    );
    conn.close().await.unwrap();
}

on_every_backend_raw!(a_foreign_table_in_the_namespace_is_refused, |backend| {
    foreign_table_in_the_namespace(backend)
});
