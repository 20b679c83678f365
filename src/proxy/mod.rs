//! Client events out to the Node app: an allowed event is POSTed, signed,
//! to EVENT_PROXY_URL and the app's answer becomes the client's ack (and
//! the socket's rooms). `rules` holds what can be decided without a network
//! (the allowlist, the body and its signature, the answer, the error acks,
//! the in-flight budget); `client` makes the call. Knows nothing of
//! Socket.IO, sessions or the audit log: `socket::layer` hands it a call
//! and reports the outcome through `audit::event`.

pub(crate) mod client;
pub(crate) mod rules;
