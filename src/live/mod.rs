//! The sockets alive now: this node's registry (by user and by session)
//! and the fleet, a user's sockets on every node through the adapter.
//! Knows nothing of HTTP, the handshake or the database.

pub(crate) mod fence;
pub(crate) mod fleet;
pub(crate) mod registry;
