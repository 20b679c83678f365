//! Command line: `sockgate` (serve), `sockgate migrate`,
//! `sockgate session mint --user <id>`, `sockgate conformance --url <server>`.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::prepare::{self, Opened, Purpose};
use crate::server;
use crate::session::UserId;
use crate::session_mint::mint_session;

#[derive(Parser)]
#[command(
    name = "sockgate",
    version,
    about = "Socket.IO gateway authenticated by express-session"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Benchmarks only: the bare Socket.IO stack with authentication off.
    #[command(hide = true)]
    UnauthenticatedCeiling,
    /// Create or update sockgate's own tables (never the session table).
    Migrate {
        /// Also install the trigger that NOTIFYs when a session row is
        /// deleted (instant revocation; PostgreSQL only). This is the one
        /// change sockgate makes to the Node app's session table.
        #[arg(long)]
        revocation_trigger: bool,
        /// Remove that trigger again.
        #[arg(long, conflicts_with = "revocation_trigger")]
        remove_revocation_trigger: bool,
    },
    /// Connect and print what sockgate will rely on (session table and
    /// zone, its own schema, the mapped tables, audit target, origins,
    /// adapter) without starting the server or writing anything; exits
    /// non-zero with the reason on any problem.
    Check,
    /// Session helpers for development and tests.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Run the behaviour suite of DESIGN.md against a running deployment.
    ///
    /// Writes its fixtures (sessions; with --admin also an organization, an
    /// admin and guests) into the deployment's database given by
    /// --database-url, signs cookies with the first --secret, and removes
    /// every row it wrote at the end. Prints `PASS name`, `FAIL name: why`
    /// or `SKIP name (why)` per case and `N passed, N failed`; exits
    /// non-zero if any case failed.
    Conformance(ConformanceArgs),
}

#[derive(Args, Clone, Debug)]
pub struct ConformanceArgs {
    /// The deployment's base URL, e.g. `http://127.0.0.1:3000`.
    #[arg(long)]
    pub url: String,
    /// An origin the deployment allows (enables the allowed-origin cases).
    #[arg(long)]
    pub origin_allowed: Option<String>,
    /// An origin the deployment refuses (enables the denied-origin cases).
    #[arg(long)]
    pub origin_denied: Option<String>,
    /// The deployment's SESSION_CHECK_INTERVAL [default: --session-check-interval, 5m]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub check_interval: Option<Duration>,
    /// The longest to wait for a re-check to end a socket; shorter than
    /// 1.1 x --check-interval + 3 s makes that case FAIL instead of waiting.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Also run the guest-lock cases: create an organization, an admin and
    /// two guests, soft-lock the guests through the admin route.
    #[arg(long)]
    pub admin: bool,
}

#[derive(Subcommand)]
pub enum SessionCommand {
    /// Write a logged-in session row exactly as connect-pg-simple would and
    /// print the Cookie header that carries it.
    Mint {
        /// The passport user id to log in.
        #[arg(long)]
        user: String,
        /// Lifetime in seconds (default: SESSION_TTL).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    config.validate()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Conformance(args) => conformance(config, args).await,
        Command::Check => crate::check::run(&config).await,
        Command::Serve => {
            let running = server::spawn(config).await?;
            running.wait_for_ctrl_c().await
        }
        Command::UnauthenticatedCeiling => crate::ceiling::serve(config.listen).await,
        Command::Migrate {
            revocation_trigger,
            remove_revocation_trigger,
        } => {
            // What `serve` will check is checked here too, so a bad mapping
            // shows now.
            let Opened { db, tables } = prepare::open(&config, Purpose::Migrate).await?;
            let (schema, table) = (
                config.session_schema.as_deref(),
                config.session_table.as_str(),
            );
            if revocation_trigger {
                crate::revocation::install_trigger(&db.conn, schema, table).await?;
                println!("revocation trigger installed on the session table");
            }
            if remove_revocation_trigger {
                crate::revocation::remove_trigger(&db.conn, schema, table).await?;
                println!("revocation trigger removed");
            }
            if let Some(tables) = tables {
                println!(
                    "sockgate tables are up to date in {}",
                    crate::check::own_place(&tables.namespace)
                );
            }
            Ok(())
        }
        Command::Session {
            command: SessionCommand::Mint { user, ttl },
        } => {
            let Opened { db, .. } = prepare::open(&config, Purpose::Mint).await?;
            let ttl = ttl.map_or_else(|| config.session_ttl(), std::time::Duration::from_secs);
            let store = crate::session_store::SessionStore::new(
                &db,
                config.session_schema.as_deref(),
                &config.session_table,
                None,
            );
            let minted = mint_session(&store, &config.secrets()?, &UserId::new(user), ttl)
                .await
                .context("could not write the session row")?;
            println!("Cookie: {}={}", config.cookie_name, minted.cookie_value);
            println!("auth.sessionId: {}", minted.signed);
            println!("expires: {}", minted.expires_at.to_rfc3339());
            Ok(())
        }
    }
}

async fn conformance(config: Config, args: ConformanceArgs) -> anyhow::Result<()> {
    use crate::conformance::{Options, Suite};
    let mut opts = Options::new(args.url, config);
    opts.origin_allowed = args.origin_allowed;
    opts.origin_denied = args.origin_denied;
    if let Some(interval) = args.check_interval {
        opts.check_interval = interval;
    }
    opts.timeout = args.timeout;
    opts.admin = args.admin;
    let suite = Suite::prepare(opts).await?;
    let print = |result: &crate::conformance::CaseResult| println!("{result}");
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
        let result = crate::conformance::CaseResult {
            name: "cleanup".into(),
            outcome: crate::conformance::Outcome::Fail(why),
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
