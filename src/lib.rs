//! sockgate: a Socket.IO gateway that trusts a connection only as long as
//! the Node app's express-session says so.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod ceiling;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod db;
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
pub mod refusal;
pub mod registry;
pub mod revocation;
pub mod server;
pub mod session;
pub mod session_id;
pub mod session_store;
pub mod signature;
pub mod socket;
pub mod supervise;
pub mod telemetry;
pub mod watcher;
pub mod web;
pub mod zone_probe;
