//! All configuration in one struct, read from flags and the environment.
//! Defaults run a development server on an embedded SQLite file. It reads and
//! validates but never opens the database or a socket, and knows nothing of
//! the modules above it: the secrets, the table mapping and the event proxy
//! it names are built and checked where they live (`Secrets::of`,
//! `Mapping::of`, `Proxy::of`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::origin::{Allowlist, Entry};

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

    /// Origins allowed to open sockets and call state-changing routes,
    /// comma-separated (`https://app.example.com`, `https://*.example.com`).
    /// Unset: APP_URL's origin, else the server's own URL.
    #[arg(long, env = "ALLOWED_ORIGINS", global = true)]
    pub allowed_origins: Option<String>,

    /// The Node app's URL; its origin is allowed when ALLOWED_ORIGINS is unset.
    #[arg(long, env = "APP_URL", global = true)]
    pub app_url: Option<String>,

    /// This server's public URL (default `http://LISTEN_ADDR`).
    #[arg(long, env = "PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// Refuse requests without an Origin header (by default non-browser
    /// clients, which send none, are allowed).
    #[arg(long, env = "REQUIRE_ORIGIN", global = true)]
    pub require_origin: bool,

    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// How Socket.IO operations (broadcasts, guest disconnects) reach the
    /// other nodes: `local` (a single node), `postgres` (LISTEN/NOTIFY on
    /// DATABASE_URL), `redis` (REDIS_URL). `auto`: postgres on PostgreSQL,
    /// local on SQLite.
    #[arg(long, env = "ADAPTER", value_enum, default_value_t = AdapterKind::Auto, global = true)]
    pub adapter: AdapterKind,

    /// Redis for `ADAPTER=redis`, e.g. `redis://127.0.0.1:6379`.
    #[arg(long, env = "REDIS_URL", global = true)]
    pub redis_url: Option<String>,

    /// Folder of the browser client served at `/` (default: the crate's
    /// `web/` on SQLite; on PostgreSQL nothing is served unless this is set).
    #[arg(long, env = "WEB_DIR", global = true)]
    pub web_dir: Option<std::path::PathBuf>,

    /// The Node app's endpoint for client events (README › Handling client
    /// events in the Node app): allowed events are POSTed there, signed.
    /// Unset: client events other than `whoami` are ignored.
    #[arg(long, env = "EVENT_PROXY_URL", global = true)]
    pub event_proxy_url: Option<String>,

    /// Client events forwarded, comma-separated; `*` matches any run of
    /// characters (`chat:*`, `*`). Required with EVENT_PROXY_URL.
    #[arg(long, env = "EVENT_PROXY_EVENTS", global = true)]
    pub event_proxy_events: Option<String>,

    /// Shared secret of the HMAC-SHA256 signature of every forwarded
    /// event. Required with EVENT_PROXY_URL.
    #[arg(
        long,
        env = "EVENT_PROXY_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub event_proxy_secret: Option<String>,

    /// Forward the session cookie (`connect.sid=s%3A...`) in the body, so the
    /// app can load the session itself. Off: the app gets the session's
    /// fingerprint only.
    #[arg(long, env = "EVENT_PROXY_FORWARD_COOKIE", global = true)]
    pub event_proxy_forward_cookie: bool,

    /// How long the app has to answer a forwarded event before the client
    /// is acked `proxy_timeout`.
    #[arg(
        long,
        env = "EVENT_PROXY_TIMEOUT_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub event_proxy_timeout_ms: u64,

    /// Forwarded events of one socket waiting for the app at once; the next
    /// is acked `too_many_in_flight`.
    #[arg(
        long,
        env = "EVENT_PROXY_MAX_IN_FLIGHT",
        default_value_t = 8,
        global = true
    )]
    pub event_proxy_max_in_flight: usize,

    /// TOML file mapping the Node app's guest, member and audit tables
    /// (README › Beside your app). `SOCKGATE_GUESTS__*`, `SOCKGATE_MEMBERS__*`
    /// and `SOCKGATE_AUDIT__*` override its entries.
    #[arg(long = "config", env = "SOCKGATE_CONFIG", global = true)]
    pub config_file: Option<std::path::PathBuf>,

    /// PostgreSQL schema of sockgate's own tables (created by `migrate`).
    #[arg(
        long,
        env = "SOCKGATE_SCHEMA",
        default_value = "sockgate",
        global = true
    )]
    pub sockgate_schema: String,

    /// `@socket.io/postgres-emitter`'s `channelPrefix`: every node LISTENs
    /// on `<prefix>#/` (PostgreSQL only; README › Talking to your users).
    #[arg(
        long,
        env = "EMITTER_POSTGRES_CHANNEL",
        default_value = "socket.io",
        global = true
    )]
    pub emitter_postgres_channel: String,

    /// `@socket.io/postgres-emitter`'s `tableName`, where it stores binary
    /// and large packets (`schema.table` allowed). sockgate only reads it.
    #[arg(
        long,
        env = "EMITTER_POSTGRES_TABLE",
        default_value = "socket_io_attachments",
        global = true
    )]
    pub emitter_postgres_table: String,

    /// `@socket.io/redis-emitter`'s `key` (with `ADAPTER=redis`): every node
    /// subscribes to `<key>#/#*` and `<key>-request#/#`.
    #[arg(
        long,
        env = "EMITTER_REDIS_KEY",
        default_value = "socket.io",
        global = true
    )]
    pub emitter_redis_key: String,

    #[command(flatten)]
    pub limits: LimitsConfig,
}

/// What one client may make the server hold: each bound has a safe default
/// (README › Threat model).
#[derive(Args, Clone, Debug)]
pub struct LimitsConfig {
    /// Open TCP connections from one client IP (websockets included).
    #[arg(
        long,
        env = "MAX_CONNECTIONS_PER_IP",
        default_value_t = 256,
        global = true
    )]
    pub max_connections_per_ip: usize,

    /// New engine.io sessions (handshakes) per client IP per second...
    #[arg(
        long,
        env = "HANDSHAKES_PER_IP_PER_SEC",
        default_value_t = 20,
        global = true
    )]
    pub handshakes_per_ip_per_sec: u32,

    /// ...after a burst of this many.
    #[arg(
        long,
        env = "HANDSHAKE_BURST_PER_IP",
        default_value_t = 60,
        global = true
    )]
    pub handshake_burst_per_ip: u32,

    /// Sockets one user may hold on this node; the newest beyond it is
    /// refused with `Too many connections`.
    #[arg(
        long,
        env = "MAX_SOCKETS_PER_USER",
        default_value_t = 64,
        global = true
    )]
    pub max_sockets_per_user: usize,

    /// Sockets one session (one browser) may hold on this node.
    #[arg(
        long,
        env = "MAX_SOCKETS_PER_SESSION",
        default_value_t = 32,
        global = true
    )]
    pub max_sockets_per_session: usize,

    /// Largest websocket message, in bytes (a CONNECT and its `auth`
    /// payload included: refused before it is parsed).
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024, global = true)]
    pub ws_max_message_bytes: usize,

    /// Largest websocket frame, in bytes.
    #[arg(long, env = "WS_MAX_FRAME_BYTES", default_value_t = 64 * 1024, global = true)]
    pub ws_max_frame_bytes: usize,

    /// Largest long-polling POST body, in bytes.
    #[arg(long, env = "MAX_POLLING_PAYLOAD_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_polling_payload_bytes: u64,

    /// Largest request head (request line and headers), in bytes; at least
    /// 8192. A larger one is answered 431.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 16 * 1024, global = true)]
    pub max_header_bytes: usize,

    /// Time a client has to send a request's headers.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub header_read_timeout: Duration,

    /// Time an engine.io session has to join the namespace (a successful
    /// Socket.IO CONNECT) before it is closed.
    #[arg(long, env = "CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub connect_timeout: Duration,

    /// Refusals of one client IP written to the log and the audit table per
    /// second (all are counted in /metrics; the next row written carries how
    /// many were left out)...
    #[arg(
        long,
        env = "REFUSAL_LOG_PER_IP_PER_SEC",
        default_value_t = 2,
        global = true
    )]
    pub refusal_log_per_ip_per_sec: u32,

    /// ...after a burst of this many.
    #[arg(
        long,
        env = "REFUSAL_LOG_BURST_PER_IP",
        default_value_t = 20,
        global = true
    )]
    pub refusal_log_burst_per_ip: u32,

    /// Bytes of audit events held in memory (with AUDIT_BUFFER events).
    #[arg(long, env = "AUDIT_BUFFER_BYTES", default_value_t = 16 * 1024 * 1024, global = true)]
    pub audit_buffer_bytes: usize,
}

/// hyper refuses a smaller read buffer (it would panic).
pub const MIN_HEADER_BYTES: usize = 8192;

/// The Redis adapter's driver needs RESP3 (push messages); a URL that does
/// not choose a protocol gets it.
pub fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AdapterKind {
    Auto,
    Local,
    Postgres,
    Redis,
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
    #[error("{what} {name:?} may not contain double quotes or NUL")]
    BadIdentifier { what: &'static str, name: String },
    #[error("ADAPTER=postgres needs DATABASE_URL to be PostgreSQL")]
    PostgresAdapterOnSqlite,
    #[error("ADAPTER=redis needs REDIS_URL")]
    RedisUrlRequired,
    #[error("SESSION_COOKIE_NAME may not be empty")]
    EmptyCookieName,
    #[error(
        "development mode (DATABASE_URL is SQLite) listens on loopback only, not {0}: set LISTEN_ADDR to a 127.0.0.1 address, or DATABASE_URL to the production PostgreSQL"
    )]
    DevelopmentListen(SocketAddr),
    #[error(
        "development mode (DATABASE_URL is SQLite) runs on one node with the local adapter: unset ADAPTER (or set ADAPTER=local), or set DATABASE_URL to the production PostgreSQL"
    )]
    DevelopmentAdapter,
    #[error("MAX_HEADER_BYTES must be at least {MIN_HEADER_BYTES}")]
    HeaderBytesTooSmall,
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    #[error("{0} is required when EVENT_PROXY_URL is set")]
    ProxyNeeds(&'static str),
    #[error("{what}: {entry:?} is not an origin ({error})")]
    BadOrigin {
        what: &'static str,
        entry: String,
        error: crate::origin::OriginError,
    },
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

    /// The adapter to run, `auto` resolved.
    pub fn adapter(&self) -> Result<AdapterKind, ConfigError> {
        match self.adapter {
            AdapterKind::Auto if self.is_sqlite() => Ok(AdapterKind::Local),
            AdapterKind::Auto => Ok(AdapterKind::Postgres),
            AdapterKind::Postgres if self.is_sqlite() => Err(ConfigError::PostgresAdapterOnSqlite),
            AdapterKind::Redis if self.redis_url.is_none() => Err(ConfigError::RedisUrlRequired),
            kind => Ok(kind),
        }
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// Development mode: the database is SQLite. It alone has the
    /// development secret (when SESSION_SECRET is unset), the seeded users,
    /// `POST /dev/login` and the browser client by default, and it only
    /// listens on loopback with the local adapter, so a node that lost its
    /// DATABASE_URL cannot come up reachable or join a production cluster.
    pub fn is_development(&self) -> bool {
        self.is_sqlite()
    }

    /// ALLOWED_ORIGINS, else APP_URL's origin, else the server's own URL
    /// (on a loopback address, `localhost` at the same port as well).
    pub fn allowlist(&self) -> Result<Allowlist, ConfigError> {
        let allow_missing = !self.require_origin;
        if let Some(list) = self
            .allowed_origins
            .as_deref()
            .filter(|l| !l.trim().is_empty())
        {
            return Allowlist::parse(list, allow_missing).map_err(|(entry, error)| {
                ConfigError::BadOrigin {
                    what: "ALLOWED_ORIGINS",
                    entry,
                    error,
                }
            });
        }
        let (what, urls) = match (&self.app_url, &self.public_url) {
            (Some(app), _) => ("APP_URL", vec![app.clone()]),
            (None, Some(public)) => ("PUBLIC_URL", vec![public.clone()]),
            (None, None) => {
                let mut own = vec![format!("http://{}", self.listen)];
                if self.listen.ip().is_loopback() {
                    own.push(format!("http://localhost:{}", self.listen.port()));
                }
                ("LISTEN_ADDR", own)
            }
        };
        let entries = urls
            .iter()
            .map(|u| {
                let origin = url::Url::parse(u)
                    .map(|url| url.origin().ascii_serialization())
                    .unwrap_or_else(|_| u.clone());
                Entry::parse(&origin).map_err(|error| ConfigError::BadOrigin {
                    what,
                    entry: u.clone(),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowlist::new(entries, allow_missing))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // The secrets' own rules and the mapping file are checked where they
        // are built (`Secrets::of`, `Mapping::of`), which every command does
        // before it starts.
        if self.secrets.is_empty() && !self.is_development() {
            return Err(ConfigError::SecretRequired);
        }
        self.allowlist()?;
        let adapter = self.adapter()?;
        if self.is_development() {
            if !self.listen.ip().is_loopback() {
                return Err(ConfigError::DevelopmentListen(self.listen));
            }
            if adapter != AdapterKind::Local {
                return Err(ConfigError::DevelopmentAdapter);
            }
        }
        let l = &self.limits;
        if l.max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::HeaderBytesTooSmall);
        }
        for (name, value) in [
            ("MAX_CONNECTIONS_PER_IP", l.max_connections_per_ip),
            ("MAX_SOCKETS_PER_USER", l.max_sockets_per_user),
            ("MAX_SOCKETS_PER_SESSION", l.max_sockets_per_session),
            (
                "HANDSHAKES_PER_IP_PER_SEC",
                l.handshakes_per_ip_per_sec as usize,
            ),
            ("HANDSHAKE_BURST_PER_IP", l.handshake_burst_per_ip as usize),
            ("WS_MAX_MESSAGE_BYTES", l.ws_max_message_bytes),
            ("WS_MAX_FRAME_BYTES", l.ws_max_frame_bytes),
            (
                "MAX_POLLING_PAYLOAD_BYTES",
                l.max_polling_payload_bytes as usize,
            ),
            ("AUDIT_BUFFER_BYTES", l.audit_buffer_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        if self.cookie_name.is_empty() {
            return Err(ConfigError::EmptyCookieName);
        }
        // The URL's and the patterns' form are checked where they are
        // parsed (`Proxy::of`); here, what must come with the URL.
        if self
            .event_proxy_url
            .as_deref()
            .is_some_and(|u| !u.trim().is_empty())
        {
            let blank = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().is_empty());
            if blank(&self.event_proxy_secret) {
                return Err(ConfigError::ProxyNeeds("EVENT_PROXY_SECRET"));
            }
            if blank(&self.event_proxy_events) {
                return Err(ConfigError::ProxyNeeds("EVENT_PROXY_EVENTS"));
            }
            if self.event_proxy_timeout_ms == 0 {
                return Err(ConfigError::ZeroLimit("EVENT_PROXY_TIMEOUT_MS"));
            }
            if self.event_proxy_max_in_flight == 0 {
                return Err(ConfigError::ZeroLimit("EVENT_PROXY_MAX_IN_FLIGHT"));
            }
        }
        check_identifier("SESSION_TABLE", &self.session_table)?;
        check_identifier("SOCKGATE_SCHEMA", &self.sockgate_schema)?;
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
