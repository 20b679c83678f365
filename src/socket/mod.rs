//! The Socket.IO side, thin: the authenticating namespace and the socket's
//! handlers, and what engine.io keeps of a request. Calls into `session` for
//! the decision and into `live` to register what it accepted; decides nothing
//! and writes no audit row itself.

pub(crate) mod handshake_request;
pub(crate) mod layer;

pub use handshake_request::compact;
pub use layer::tuned;
