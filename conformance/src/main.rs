//! `sockgate-conformance`: the behaviour suite of DESIGN.md against a
//! running deployment.
//!
//! Writes its fixtures (sessions; with --admin also an organization, an
//! admin and guests) into the deployment's database given by
//! --database-url, signs cookies with the first --secret, and removes every
//! row it wrote at the end. Prints `PASS name`, `FAIL name: why` or
//! `SKIP name (why)` per case and `N passed, N failed`; exits non-zero if
//! any case failed.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser};
use sockgate::Config;
use sockgate_conformance::{Options, Suite};

#[derive(Parser)]
#[command(
    name = "sockgate-conformance",
    version,
    about = "Run sockgate's behaviour suite against a running deployment"
)]
struct Cli {
    /// The deployment's own settings (database, secrets, cookie name,
    /// session table), as the server is configured.
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    args: ConformanceArgs,
}

#[derive(Args, Clone, Debug)]
struct ConformanceArgs {
    /// The deployment's base URL, e.g. `http://127.0.0.1:3000`.
    #[arg(long)]
    url: String,
    /// An origin the deployment allows (enables the allowed-origin cases).
    #[arg(long)]
    origin_allowed: Option<String>,
    /// An origin the deployment refuses (enables the denied-origin cases).
    #[arg(long)]
    origin_denied: Option<String>,
    /// The deployment's SESSION_CHECK_INTERVAL [default: --session-check-interval, 5m]
    #[arg(long, value_parser = humantime::parse_duration)]
    check_interval: Option<Duration>,
    /// The longest to wait for a re-check to end a socket; shorter than
    /// 1.1 x --check-interval + 3 s makes that case FAIL instead of waiting.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Also run the guest-lock cases: create an organization, an admin and
    /// two guests, soft-lock the guests through the admin route.
    #[arg(long)]
    admin: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The report goes to stdout; the log stays out of its way.
    sockgate::telemetry::init_to_stderr(cli.config.log_format);
    let result = match cli.config.validate() {
        Ok(()) => run(cli.config, cli.args).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sockgate-conformance: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, args: ConformanceArgs) -> anyhow::Result<()> {
    let mut opts = Options::new(args.url, config);
    opts.origin_allowed = args.origin_allowed;
    opts.origin_denied = args.origin_denied;
    if let Some(interval) = args.check_interval {
        opts.check_interval = interval;
    }
    opts.timeout = args.timeout;
    opts.admin = args.admin;
    let suite = Suite::prepare(opts).await?;
    let print = |result: &sockgate_conformance::CaseResult| println!("{result}");
    // Ctrl-C stops the cases but not the clean-up.
    let report = tokio::select! {
        report = suite.run(print) => Some(report),
        _ = tokio::signal::ctrl_c() => None,
    };
    let cleanup = suite.cleanup().await;
    let Some(mut report) = report else {
        if let Err(why) = cleanup {
            anyhow::bail!("interrupted; {why}");
        }
        anyhow::bail!("interrupted; the rows this run wrote were removed");
    };
    if let Err(why) = cleanup {
        let result = sockgate_conformance::CaseResult {
            name: "cleanup".into(),
            outcome: sockgate_conformance::Outcome::Fail(why),
            elapsed: Duration::ZERO,
        };
        println!("{result}");
        report.results.push(result);
    }
    println!("{}", report.summary());
    if !report.ok() {
        anyhow::bail!("{} conformance case(s) failed", report.failed());
    }
    Ok(())
}
