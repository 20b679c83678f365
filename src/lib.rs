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

pub mod admin;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod db;
pub mod dev_seed;
pub mod engine_path;
pub mod fleet;
pub mod guests;
pub mod handshake_request;
pub mod http;
pub mod limits;
pub mod listener;
pub mod messages;
pub mod metrics;
pub mod origin;
pub mod origin_guard;
pub mod pg_adapter;
pub mod prepare;
pub mod refusal;
pub mod registry;
pub mod revocation;
pub mod server;
pub mod session;
pub mod session_id;
pub mod session_mint;
pub mod session_store;
pub mod signature;
pub mod socket;
pub mod sql;
pub mod state;
pub mod supervise;
pub mod tables;
pub mod telemetry;
pub mod watcher;
pub mod web;
pub mod zone_probe;
