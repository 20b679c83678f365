//! What keeps sessions honest after the handshake: the periodic re-check of
//! live sockets and instant revocation on PostgreSQL. Knows nothing of HTTP
//! or of how a handshake is decided; what a stored session means is
//! `session::rules`'s, and sockets are ended through `live`.

pub(crate) mod revocation;
pub(crate) mod watcher;

pub use revocation::{install_trigger, remove_trigger};
