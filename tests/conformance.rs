//! The conformance suite (`sockgate-conformance`) run in-process against a
//! real sockgate on SQLite and on PostgreSQL: every case must pass, every
//! case must have run (a case silently dropped changes the list), and the
//! fixtures must be gone afterwards.

mod common;

use std::time::Duration;

use common::{Backend, TestEnv};
use sea_orm::{ConnectionTrait, Statement};
use sockgate::Config;
use sockgate_conformance::{self as conformance, Options, Outcome, Report};

const ALLOWED: &str = "http://allowed.conformance.test";
const DENIED: &str = "http://denied.conformance.test";
const INTERVAL: Duration = Duration::from_millis(500);

/// Every case of a run with origins and --admin, in order.
const ALL_CASES: &[&str] = &[
    "handshake.no_session_id[polling]",
    "handshake.bad_signature[polling]",
    "handshake.unknown_sid[polling]",
    "handshake.expired_session[polling]",
    "handshake.no_passport_user[polling]",
    "handshake.valid_cookie[polling]",
    "handshake.auth_session_id[polling]",
    "handshake.no_session_id[websocket]",
    "handshake.bad_signature[websocket]",
    "handshake.unknown_sid[websocket]",
    "handshake.expired_session[websocket]",
    "handshake.no_passport_user[websocket]",
    "handshake.valid_cookie[websocket]",
    "handshake.auth_session_id[websocket]",
    "expiry.boundary",
    "origins.allowed[polling]",
    "origins.allowed[websocket]",
    "origins.denied[polling]",
    "origins.denied[websocket]",
    "origins.denied[admin route]",
    "live.session_expired",
    "guests.admin_route_refusals",
    "guests.lock[polling]",
    "guests.lock[websocket]",
];

/// The deployment under test: a short re-check interval and an allowlist.
fn deployment(config: &mut Config) {
    config.session_check_interval = INTERVAL;
    config.allowed_origins = Some(ALLOWED.into());
}

/// What an operator would pass: the database, the first secret only, the
/// interval, both origins and --admin.
fn options(env: &TestEnv) -> Options {
    let mut config = Config::for_database(env.db.url.clone());
    config.secrets = vec![common::SECRET.into()];
    let mut opts = Options::new(env.url(), config);
    opts.check_interval = INTERVAL;
    opts.origin_allowed = Some(ALLOWED.into());
    opts.origin_denied = Some(DENIED.into());
    opts.admin = true;
    opts
}

fn print(report: &Report) {
    for r in &report.results {
        eprintln!("{r}  [{} ms]", r.elapsed.as_millis());
    }
    eprintln!("{}", report.summary());
}

fn names(report: &Report) -> Vec<&str> {
    report.results.iter().map(|r| r.name.as_str()).collect()
}

/// Nothing the run wrote is left: no session rows (the test database had
/// none), no `conformance-` users, organizations or guests.
async fn assert_cleaned_up(env: &TestEnv) {
    let db = env.conn();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM \"session\"",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "n").unwrap(), 0, "session rows left");
    for (table, column) in [
        ("app_user", "id"),
        ("organization", "name"),
        ("guest", "user_id"),
        ("member", "user_id"),
    ] {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT COUNT(*) AS n FROM {} WHERE {column} LIKE 'conformance-%'",
                    env.own(table)
                ),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), 0, "{table} rows left");
    }
}

async fn every_case_passes(env: TestEnv) {
    let opts = options(&env);
    every_case_passes_with(opts).await;
    assert_cleaned_up(&env).await;
}

async fn every_case_passes_with(opts: Options) {
    let started = std::time::Instant::now();
    let report = conformance::run(&opts).await.expect("the run starts");
    print(&report);
    eprintln!("whole run: {} ms", started.elapsed().as_millis());
    assert_eq!(names(&report), ALL_CASES, "every case ran, in order");
    assert!(
        report.ok(),
        "failures: {:#?}",
        report
            .failures()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        (report.passed(), report.failed(), report.skipped()),
        (ALL_CASES.len(), 0, 0)
    );
    assert_eq!(
        report.summary(),
        format!("{} passed, 0 failed", ALL_CASES.len())
    );
}

/// A deployment beside the drizzle-style app schema: the suite writes its
/// organization, admin and guests into the app's tables through the
/// deployment's mapping (users, organizations and required columns made
/// up as needed), and removes every row again.
async fn beside_the_app(backend: Backend) {
    use common::app_schemas::{DRIZZLE, app_database, with_mapping};
    let Some(db) = app_database(backend, &DRIZZLE).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mapping = with_mapping(&dir, &DRIZZLE);
    let env = TestEnv::start_on(db, |c| {
        deployment(c);
        mapping(c);
    })
    .await;
    let mut opts = options(&env);
    opts.config.config_file = env.config.config_file.clone();
    let before = app_rows(&env).await;
    every_case_passes_with(opts).await;
    assert_eq!(app_rows(&env).await, before, "the app's rows after the run");
}

/// Row counts of the app's tables the suite writes into.
async fn app_rows(env: &TestEnv) -> Vec<i64> {
    let db = env.conn();
    let mut counts = Vec::new();
    for table in ["\"user\"", "organization", "member", "guest"] {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        counts.push(row.try_get::<i64>("", "n").unwrap());
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_passes_beside_the_app_on_sqlite() {
    beside_the_app(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_passes_beside_the_app_on_postgres() {
    beside_the_app(Backend::PG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_passes_on_sqlite() {
    let env = TestEnv::start_with(Backend::Sqlite, deployment)
        .await
        .unwrap();
    every_case_passes(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_passes_on_postgres() {
    let Some(env) = TestEnv::start_with(Backend::PG, deployment).await else {
        return;
    };
    every_case_passes(env).await;
}

/// Without origins or --admin those cases are SKIP lines; a --timeout
/// shorter than the deployment's interval fails the re-check case with a
/// message that says so, instead of waiting five minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_and_a_short_timeout_are_reported() {
    // A deployment with the default 5 min re-check interval.
    let env = TestEnv::start(Backend::Sqlite).await.unwrap();
    let mut config = Config::for_database(env.db.url.clone());
    config.secrets = vec![common::SECRET.into()];
    let mut opts = Options::new(env.url(), config);
    opts.timeout = Some(Duration::from_secs(1));
    assert_eq!(opts.check_interval, Duration::from_secs(300));

    let started = std::time::Instant::now();
    let report = conformance::run(&opts).await.unwrap();
    print(&report);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the timeout bounds the wait"
    );

    let skipped: Vec<_> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skip(_)))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        skipped,
        [
            "SKIP origins.allowed (no --origin-allowed given)",
            "SKIP origins.denied (no --origin-denied given)",
            "SKIP guests (no --admin given)",
        ]
    );
    let failures = report.failures();
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert_eq!(failures[0].name, "live.session_expired");
    let line = failures[0].to_string();
    assert!(
        line.contains("--timeout 1s") && line.contains("raise --timeout"),
        "{line}"
    );
    assert_eq!(report.passed(), 15);
    assert_eq!(report.summary(), "15 passed, 1 failed (3 skipped)");
    assert_cleaned_up(&env).await;
}
