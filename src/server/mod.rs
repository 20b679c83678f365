//! Assembling and running the server: the state, the layers and routes, the
//! background tasks and the bounded accept loop. Handles no request and no
//! socket itself, and nothing below imports it.

pub(crate) mod listener;
pub(crate) mod start;

pub use start::{RunningServer, prepare, serve};
