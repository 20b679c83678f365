//! Command line: `sockgate` (serve), `sockgate migrate`, `sockgate check`,
//! `sockgate session mint --user <id>`. The conformance suite is a binary of
//! its own (`sockgate-conformance`). Only parses and dispatches: what each
//! command does is `server`'s, `db`'s or `session`'s.

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::db::prepare::{self, Opened, Purpose};
use crate::db::tables::Mapping;
use crate::server::start as server;
use crate::session::mint::mint_session;
use crate::session::rules::UserId;
use crate::session::signature::Secrets;

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
    // Checked up front for every command, so a bad secret or mapping file
    // is named before anything connects.
    Secrets::of(&config)?;
    Mapping::of(&config)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => crate::db::check::run(&config).await,
        Command::Serve => {
            let running = server::spawn(config).await?;
            running.wait_for_ctrl_c().await
        }
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
                crate::background::revocation::install_trigger(&db.conn, schema, table).await?;
                println!("revocation trigger installed on the session table");
            }
            if remove_revocation_trigger {
                crate::background::revocation::remove_trigger(&db.conn, schema, table).await?;
                println!("revocation trigger removed");
            }
            if let Some(tables) = tables {
                println!(
                    "sockgate tables are up to date in {}",
                    crate::db::check::own_place(&tables.namespace)
                );
            }
            Ok(())
        }
        Command::Session {
            command: SessionCommand::Mint { user, ttl },
        } => {
            let Opened { db, .. } = prepare::open(&config, Purpose::Mint).await?;
            let ttl = ttl.map_or_else(|| config.session_ttl(), std::time::Duration::from_secs);
            let store = crate::session::store::SessionStore::new(
                &db,
                config.session_schema.as_deref(),
                &config.session_table,
                None,
            );
            let minted = mint_session(&store, &Secrets::of(&config)?, &UserId::new(user), ttl)
                .await
                .context("could not write the session row")?;
            println!("Cookie: {}={}", config.cookie_name, minted.cookie_value);
            println!("auth.sessionId: {}", minted.signed);
            println!("expires: {}", minted.expires_at.to_rfc3339());
            Ok(())
        }
    }
}
