//! What keeps sessions honest after the handshake: the periodic
//! re-check of live sockets and instant revocation on PostgreSQL.

pub(crate) mod revocation;
pub(crate) mod watcher;

pub use revocation::{install_trigger, remove_trigger};
