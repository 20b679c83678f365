//! sockgate: a Socket.IO gateway that trusts a connection only as long as
//! the Node app's express-session says so.
//!
//! # Where things are
//!
//! Roughly from the top down. No import circles: no module imports one
//! that (directly or not) imports it back.
//!
//! - **Start and run:** `cli` (commands) → `server` (assembles and runs) →
//!   `prepare` (opens and checks the database for every command),
//!   `dev_seed` (the SQLite development rows), `check` (`sockgate check`).
//! - **HTTP and Socket.IO, thin:** `http` (routes), `admin` (the guest-lock
//!   route), `web` (browser client, development sign-in), `origin_guard`
//!   (the Origin allowlist as a layer), `socket` (the authenticating
//!   namespace and the socket's handlers), `handshake_request` (what engine.io
//!   keeps of a request), `listener` (the accept loop and its bounds),
//!   `refusal` (refusals to the log and audit, rate-limited), all sharing
//!   `state::AppState`.
//! - **Keeping sessions honest over time:** `watcher` (the periodic
//!   re-check), `revocation` (instant revocation on PostgreSQL), `registry`
//!   (this node's live sockets), `fleet` (a user's sockets on every node),
//!   `pg_adapter` (the PostgreSQL adapter's driver), `supervise`.
//! - **The domain, plain functions and types:** `auth` (the handshake's
//!   decision), `session` (what a stored session means), `session_id`
//!   (cookie and `auth` parsing, as the npm packages do), `signature`
//!   (cookie-signature), `origin` (the allowlist's rules), `guests` (who
//!   may lock whom, and the lock use case), `limits` (what one client may
//!   hold), `session_mint`, `messages` (client-facing texts).
//! - **The database:** `session_store` (connect-pg-simple's table), `audit`
//!   (the audit writer), `tables` (the declared mapping of the app's
//!   tables, checked against the `catalog`), `sql` (statements over
//!   configured names), `db` (connecting, migrating), `zone_probe`.
//! - **Everywhere:** `config` (one struct from flags and env), `metrics`,
//!   `telemetry`, `engine_path`.
//!
//! Beside the crate: `entity` and `migration` (sockgate's own tables),
//! `conformance` (the behaviour suite against any deployment, a binary of
//! its own), `vendor/engineioxide` (the patched engine).

// Private by default: what the binary, the tests, the benches and the
// conformance crate need is re-exported below or in a folder's `mod.rs`,
// so the compiler sees every other item and reports the dead ones.
pub mod audit;
mod background;
pub mod cli;
mod config;
pub mod db;
mod engine_path;
mod guests;
mod http;
mod limits;
mod live;
mod messages;
mod metrics;
mod origin;
pub mod server;
pub mod session;
pub mod socket;
mod state;
mod supervise;
pub mod telemetry;

pub use background::{install_trigger, remove_trigger};
pub use config::{AdapterKind, Config};
pub use guests::DEFAULT_REASON;
