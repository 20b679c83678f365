//! Command line: `sockgate` (serve), `sockgate migrate`,
//! `sockgate session mint --user <id>`.

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::server;
use crate::session::UserId;

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
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let running = server::spawn(config).await?;
            running.wait_for_ctrl_c().await
        }
        Command::UnauthenticatedCeiling => crate::ceiling::serve(config.listen).await,
        Command::Migrate {
            revocation_trigger,
            remove_revocation_trigger,
        } => {
            let db = crate::db::connect(&config).await?;
            crate::db::migrate(&db).await?;
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
            if config.is_sqlite() {
                server::prepare_dev_database(&config, &db).await?;
            } else {
                crate::db::verify_session_table(
                    &db.conn,
                    config.session_schema.as_deref(),
                    &config.session_table,
                )
                .await?;
            }
            println!("sockgate tables are up to date");
            Ok(())
        }
        Command::Session {
            command: SessionCommand::Mint { user, ttl },
        } => {
            let db = crate::db::connect(&config).await?;
            if config.is_sqlite() {
                crate::db::migrate(&db).await?;
                server::prepare_dev_database(&config, &db).await?;
            }
            let ttl = ttl.map_or_else(|| config.session_ttl(), std::time::Duration::from_secs);
            let minted = server::mint_session(&config, &db, &UserId::new(user), ttl)
                .await
                .context("could not write the session row")?;
            println!("Cookie: {}={}", config.cookie_name, minted.cookie_value);
            println!("auth.sessionId: {}", minted.signed);
            println!("expires: {}", minted.expires_at.to_rfc3339());
            Ok(())
        }
    }
}
