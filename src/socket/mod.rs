//! The Socket.IO side, thin: the authenticating namespace and the socket's
//! handlers, and what engine.io keeps of a request. Calls into `session` for
//! the decision, into `live` to register what it accepted and into `proxy`
//! to hand a client event to the app; decides nothing and writes no audit
//! row itself.

pub(crate) mod early_lookup;
pub(crate) mod handshake_request;
pub(crate) mod layer;

pub use handshake_request::compact;
pub use layer::tuned;
