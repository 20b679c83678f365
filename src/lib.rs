//! sockgate: a Socket.IO gateway that trusts a connection only as long as
//! the Node app's express-session says so.
//!
//! # Where things are
//!
//! From the top down; a module imports only what stands below it, so there
//! are no import circles.
//!
//! - **Start and run:** `cli` (the commands) → `server/` (`start`:
//!   assembles the state, layers and background tasks; `listener`: the
//!   bounded accept loop).
//! - **HTTP and Socket.IO, thin:** `http/` (`router`, `admin` for the
//!   guest-lock route, `web` for the browser client and development
//!   sign-in, `origin_guard` for the Origin allowlist in front of both
//!   transports) and `socket/` (`layer`: the authenticating namespace and
//!   the socket's handlers; `handshake_request`: what engine.io keeps of a
//!   request). Both read `state::AppState` and say what happened through
//!   `audit::event`.
//! - **Keeping sessions honest over time:** `background/` (`watcher`: the
//!   periodic re-check; `revocation`: instant revocation on PostgreSQL),
//!   over `live/` (`registry`: this node's sockets; `fleet`: a user's
//!   sockets on every node) and `guests` (who may lock whom, and the lock
//!   use case).
//! - **The Node app's emitters:** `emitter/` (`message`: the official
//!   emitters' wire format decoded into one `Operation`; `apply`: an
//!   operation on this node's sockets; `postgres`: the LISTEN for
//!   `@socket.io/postgres-emitter`; `redis`: the subscription for
//!   `@socket.io/redis-emitter`), beside `live/`, over `state`.
//! - **What happened, on the record:** `audit/` (`event`: the typed events,
//!   each turned into its audit row, metric and log line in one place;
//!   `writer`: the batched audit writer).
//! - **Client events to the Node app:** `proxy/` (`rules`: the allowlist's
//!   patterns, the signed body, the answer's ack and rooms, the error acks
//!   and the in-flight budget, all pure; `client`: the POST through hyper).
//!   Called by `socket/`; `audit::event` names its errors.
//! - **Sessions, plain functions and types:** `session/` (`signature`:
//!   cookie-signature; `cookie`: the session id from the cookie or `auth`,
//!   as the npm packages parse it; `rules`: what a stored session means;
//!   `auth`: the handshake's decision; `store`: connect-pg-simple's table;
//!   `mint`: writing a session as the app would).
//! - **The database:** `db/` (`connect`, `prepare`: opening and checking it
//!   for every command; `tables`: the declared mapping of the app's tables,
//!   checked against the `catalog`; `sql`: statements over configured
//!   names; `adapter`: the PostgreSQL adapter's driver; `zone_probe`;
//!   `dev_seed`; `check`: `sockgate check`).
//! - **Everywhere, depending on nothing above:** `config` (one struct from
//!   flags and env; the secrets, the table mapping and the event proxy it
//!   names are built and checked by `Secrets::of`, `Mapping::of` and
//!   `Proxy::of`, where they live),
//!   `origin` (the allowlist's rules), `limits` (what one client may hold),
//!   `messages` (client-facing texts), `metrics`, `telemetry`, `supervise`,
//!   `engine_path`.
//!
//! Beside the crate: `entity` and `migration` (sockgate's own tables),
//! `conformance` (the behaviour suite against any deployment, a binary of
//! its own), `vendor/engineioxide` (the patched engine, as pristine 0.17.9
//! plus the patch series in `vendor/engineioxide-patches`).

// Private by default: what the binary, the tests, the benches and the
// conformance crate need is re-exported below or in a folder's `mod.rs`,
// so the compiler sees every other item and reports the dead ones.
pub mod audit;
mod background;
pub mod cli;
mod config;
pub mod db;
mod emitter;
mod engine_path;
mod guests;
mod http;
mod limits;
mod live;
mod messages;
mod metrics;
mod origin;
mod proxy;
pub mod server;
pub mod session;
pub mod socket;
mod state;
mod supervise;
pub mod telemetry;

pub use background::{install_trigger, remove_trigger};
pub use config::{AdapterKind, Config};
pub use guests::DEFAULT_REASON;
