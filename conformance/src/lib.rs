//! The behaviour suite of DESIGN.md (handshake table, live sessions,
//! origins, guests) run against any running deployment through a real
//! Socket.IO client (rust_socketio) and plain HTTP.
//!
//! `sockgate conformance --url <server> --database-url <db> --secret <s>`
//! prints one line per case and a summary; tests call [`run`] against an
//! in-process server. Fixtures are written into the deployment's database
//! with sockgate's own session-store code and removed at the end
//! ([`fixtures`]).

pub mod cases;
pub mod client;
pub mod fixtures;
pub mod rows;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use client::Transport;
use fixtures::Fixtures;
use sockgate::Config;

/// What to test and how to reach it.
#[derive(Clone)]
pub struct Options {
    /// The deployment's base URL (`http://host:port`); Socket.IO is at
    /// `/socket.io/` under it, the admin route at `/api/admin/...`.
    pub url: String,
    /// The deployment's database, secrets, cookie name and session table,
    /// as the server itself is configured (`DATABASE_URL`,
    /// `SESSION_SECRET`, ...). Only those fields are used.
    pub config: Config,
    /// An origin the deployment allows; the allowed-origin cases run when set.
    pub origin_allowed: Option<String>,
    /// An origin the deployment refuses; the denied-origin cases run when set.
    pub origin_denied: Option<String>,
    /// The deployment's `SESSION_CHECK_INTERVAL`.
    pub check_interval: Duration,
    /// The longest the suite waits for a re-check to end a socket; by
    /// default what `check_interval` needs.
    pub timeout: Option<Duration>,
    /// Run the guest-lock cases (they create an organization, an admin and
    /// guests, and soft-lock the guests through the admin route).
    pub admin: bool,
}

impl Options {
    pub fn new(url: impl Into<String>, config: Config) -> Self {
        Self {
            url: url.into(),
            check_interval: config.session_check_interval,
            config,
            origin_allowed: None,
            origin_denied: None,
            timeout: None,
            admin: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Pass => write!(f, "PASS {}", self.name),
            Outcome::Fail(why) => write!(f, "FAIL {}: {why}", self.name),
            Outcome::Skip(why) => write!(f, "SKIP {} ({why})", self.name),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    fn count(&self, pred: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| pred(&r.outcome)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Pass)
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Fail(_)))
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skip(_)))
    }

    pub fn ok(&self) -> bool {
        self.failed() == 0
    }

    pub fn failures(&self) -> Vec<&CaseResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
            .collect()
    }

    /// `N passed, N failed`, and the skips when there were any.
    pub fn summary(&self) -> String {
        let mut line = format!("{} passed, {} failed", self.passed(), self.failed());
        if self.skipped() > 0 {
            line.push_str(&format!(" ({} skipped)", self.skipped()));
        }
        line
    }
}

/// A prepared run: the fixtures' database connection and an HTTP client.
/// [`Suite::cleanup`] must be called whatever happens to [`Suite::run`].
pub struct Suite {
    pub opts: Options,
    pub fixtures: Fixtures,
    pub http: reqwest::Client,
}

impl Suite {
    /// Connects to the deployment's database and checks the options.
    pub async fn prepare(opts: Options) -> anyhow::Result<Self> {
        let base =
            url::Url::parse(&opts.url).map_err(|e| anyhow::anyhow!("--url {:?}: {e}", opts.url))?;
        if !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("--url must be http:// or https://, not {}", base.scheme());
        }
        let http = reqwest::Client::builder()
            .timeout(client::STEP)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let fixtures = Fixtures::connect(&opts.config).await?;
        let suite = Self {
            opts,
            fixtures,
            http,
        };
        // Any HTTP answer will do (a 403 is a deployment that requires an
        // Origin); no answer at all would fail every case for one reason.
        let probe = suite.engine_url(Transport::Polling);
        if let Err(e) = suite.http.get(&probe).send().await {
            let e = anyhow::Error::from(e);
            anyhow::bail!("cannot reach the deployment at {probe}: {e:#}");
        }
        Ok(suite)
    }

    /// Runs every case in order, handing each result to `on_result` as soon
    /// as it is known. Cases never abort the run: a panic is a FAIL.
    pub async fn run(&self, mut on_result: impl FnMut(&CaseResult)) -> Report {
        let mut report = Report::default();
        let mut record = |result: CaseResult| {
            on_result(&result);
            report.results.push(result);
        };

        for t in Transport::ALL {
            record(
                case(
                    format!("handshake.no_session_id[{t}]"),
                    cases::no_session_id(self, t),
                )
                .await,
            );
            record(
                case(
                    format!("handshake.bad_signature[{t}]"),
                    cases::bad_signature(self, t),
                )
                .await,
            );
            record(
                case(
                    format!("handshake.unknown_sid[{t}]"),
                    cases::unknown_sid(self, t),
                )
                .await,
            );
            record(
                case(
                    format!("handshake.expired_session[{t}]"),
                    cases::expired_session(self, t),
                )
                .await,
            );
            record(
                case(
                    format!("handshake.no_passport_user[{t}]"),
                    cases::no_passport_user(self, t),
                )
                .await,
            );
            record(
                case(
                    format!("handshake.valid_cookie[{t}]"),
                    cases::valid_cookie(self, t),
                )
                .await,
            );
            record(
                case(
                    format!("handshake.auth_session_id[{t}]"),
                    cases::auth_session_id(self, t),
                )
                .await,
            );
        }
        record(case("expiry.boundary".into(), cases::expiry_boundary(self)).await);

        match &self.opts.origin_allowed {
            Some(origin) => {
                for t in Transport::ALL {
                    record(
                        case(
                            format!("origins.allowed[{t}]"),
                            cases::origin_allowed(self, t, origin),
                        )
                        .await,
                    );
                }
            }
            None => record(skip("origins.allowed", "no --origin-allowed given")),
        }
        match &self.opts.origin_denied {
            Some(origin) => {
                for t in Transport::ALL {
                    record(
                        case(
                            format!("origins.denied[{t}]"),
                            cases::origin_denied(self, t, origin),
                        )
                        .await,
                    );
                }
                record(
                    case(
                        "origins.denied[admin route]".into(),
                        cases::origin_denied_admin_route(self, origin),
                    )
                    .await,
                );
            }
            None => record(skip("origins.denied", "no --origin-denied given")),
        }

        record(case("live.session_expired".into(), cases::session_deleted(self)).await);

        if self.opts.admin {
            match self.fixtures.guest_org(Transport::ALL.len()).await {
                Ok(org) => {
                    record(
                        case(
                            "guests.admin_route_refusals".into(),
                            cases::admin_route_refusals(self, &org),
                        )
                        .await,
                    );
                    for (t, guest) in Transport::ALL.into_iter().zip(&org.guests) {
                        record(
                            case(
                                format!("guests.lock[{t}]"),
                                cases::guest_lock(self, t, &org, guest),
                            )
                            .await,
                        );
                    }
                }
                Err(why) => record(CaseResult {
                    name: "guests".into(),
                    outcome: Outcome::Fail(format!("could not create the guest fixtures: {why}")),
                    elapsed: Duration::ZERO,
                }),
            }
        } else {
            record(skip("guests", "no --admin given"));
        }
        report
    }

    /// Removes every row the run wrote.
    pub async fn cleanup(&self) -> Result<(), String> {
        self.fixtures.cleanup().await
    }

    /// The engine.io endpoint under the base URL, for raw HTTP requests.
    pub fn engine_url(&self, transport: Transport) -> String {
        let mut url = url::Url::parse(&self.opts.url).expect("checked in prepare");
        if url.path() == "/" || url.path().is_empty() {
            url.set_path("/socket.io/");
        }
        url.set_query(Some(&format!("EIO=4&transport={transport}")));
        url.to_string()
    }

    /// The admin route for `guest` under the base URL.
    pub fn admin_url(&self, guest: impl fmt::Display) -> String {
        let mut url = url::Url::parse(&self.opts.url).expect("checked in prepare");
        url.set_path(&format!("/api/admin/guest/{guest}/disconnect"));
        url.set_query(None);
        url.to_string()
    }

    /// How long a re-check may take to end a socket, and whether
    /// `--timeout` cut that short.
    pub fn recheck_budget(&self) -> (Duration, bool) {
        // The first tick falls anywhere in the first interval and every
        // later one is jittered by up to 10%; then the query and the send.
        let needed = self.opts.check_interval.mul_f64(1.1) + Duration::from_secs(3);
        match self.opts.timeout {
            Some(t) if t < needed => (t, true),
            _ => (needed, false),
        }
    }
}

fn skip(name: &str, why: &str) -> CaseResult {
    CaseResult {
        name: name.into(),
        outcome: Outcome::Skip(why.into()),
        elapsed: Duration::ZERO,
    }
}

async fn case(
    name: String,
    fut: impl std::future::Future<Output = Result<(), String>>,
) -> CaseResult {
    let started = Instant::now();
    let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(Ok(())) => Outcome::Pass,
        Ok(Err(why)) => Outcome::Fail(why),
        Err(panic) => Outcome::Fail(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        )),
    };
    CaseResult {
        name,
        outcome,
        elapsed: started.elapsed(),
    }
}

/// Prepares, runs every case and cleans up. A clean-up failure is reported
/// as a failed case `cleanup`. `Err` only when the run could not start
/// (database unreachable, bad options).
pub async fn run_with(opts: Options, on_result: impl FnMut(&CaseResult)) -> anyhow::Result<Report> {
    let suite = Suite::prepare(opts).await?;
    let mut on_result = on_result;
    let mut report = suite.run(&mut on_result).await;
    let started = Instant::now();
    if let Err(why) = suite.cleanup().await {
        let result = CaseResult {
            name: "cleanup".into(),
            outcome: Outcome::Fail(why),
            elapsed: started.elapsed(),
        };
        on_result(&result);
        report.results.push(result);
    }
    Ok(report)
}

/// [`run_with`] without progress output.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    run_with(opts.clone(), |_| {}).await
}
