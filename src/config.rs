//! All configuration in one struct, read from flags and the environment.
//! Defaults run a development server on an embedded SQLite file.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::signature::{Secrets, SecretsError};

/// The secret a development server signs with when none is configured. Only
/// accepted on SQLite: a PostgreSQL deployment must be given the Node app's.
pub const DEV_SECRET: &str = "sockgate-dev-secret";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://sockgate-dev.db?mode=rwc";

#[derive(Args, Clone)]
pub struct Config {
    /// Database holding the session table: `postgres://...` in production,
    /// `sqlite://file?mode=rwc` in development.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,

    /// Address to listen on.
    #[arg(
        long,
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:3000",
        global = true
    )]
    pub listen: SocketAddr,

    /// express-session secrets, comma-separated: the first signs, all verify.
    #[arg(
        long = "secret",
        env = "SESSION_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub secrets: Vec<String>,

    /// express-session's cookie name.
    #[arg(
        long,
        env = "SESSION_COOKIE_NAME",
        default_value = "connect.sid",
        global = true
    )]
    pub cookie_name: String,

    /// connect-pg-simple's `tableName`.
    #[arg(long, env = "SESSION_TABLE", default_value = "session", global = true)]
    pub session_table: String,

    /// connect-pg-simple's `schemaName`; unset resolves through search_path.
    #[arg(long, env = "SESSION_SCHEMA", global = true)]
    pub session_schema: Option<String>,

    /// Time zone the Node app's connections write `expire` in. Detected from
    /// the database default when unset (see README).
    #[arg(long, env = "SESSION_TIMEZONE", global = true)]
    pub session_timezone: Option<String>,

    /// Session lifetime in seconds when the session has no cookie.originalMaxAge
    /// (connect-pg-simple's `ttl`).
    #[arg(long, env = "SESSION_TTL", default_value_t = 86_400, global = true)]
    pub session_ttl_secs: u64,

    /// How long a handshake waits for a database connection before failing
    /// closed with `Service unavailable`.
    #[arg(
        long,
        env = "DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 2_000,
        global = true
    )]
    pub db_acquire_timeout_ms: u64,

    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 10, global = true)]
    pub db_max_connections: u32,

    /// Audit events held in memory while the database is slow or away.
    #[arg(long, env = "AUDIT_BUFFER", default_value_t = 10_000, global = true)]
    pub audit_buffer: usize,

    /// How often every live socket's session is re-checked (e.g. `5m`, `30s`).
    #[arg(long, env = "SESSION_CHECK_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub session_check_interval: Duration,

    /// Sessions this close to expiry with a connected socket are extended.
    #[arg(long, env = "SESSION_REFRESH_WINDOW", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub session_refresh_window: Duration,

    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("SESSION_SECRET is required when DATABASE_URL is not SQLite")]
    SecretRequired,
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("{what} {name:?} may not contain double quotes or NUL")]
    BadIdentifier { what: &'static str, name: String },
    #[error("SESSION_COOKIE_NAME may not be empty")]
    EmptyCookieName,
}

impl Config {
    /// A configuration with every default, for tests and tools.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let mut config = Wrapper::parse_from(["sockgate"]).config;
        config.database_url = database_url.into();
        config
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// The secrets, with the development fallback on SQLite only.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        if self.secrets.is_empty() {
            if self.is_sqlite() {
                return Ok(Secrets::new([DEV_SECRET])?);
            }
            return Err(ConfigError::SecretRequired);
        }
        Ok(Secrets::new(self.secrets.iter().cloned())?)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.secrets()?;
        if self.cookie_name.is_empty() {
            return Err(ConfigError::EmptyCookieName);
        }
        check_identifier("SESSION_TABLE", &self.session_table)?;
        if let Some(schema) = &self.session_schema {
            check_identifier("SESSION_SCHEMA", schema)?;
        }
        Ok(())
    }

    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.session_ttl_secs)
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }
}

fn check_identifier(what: &'static str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains('"') || name.contains('\0') {
        return Err(ConfigError::BadIdentifier {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}
