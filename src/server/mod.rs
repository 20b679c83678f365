//! Assembling and running the server: the state, the layers and routes,
//! the background tasks and the bounded accept loop.

pub(crate) mod listener;
pub(crate) mod start;

pub use start::{RunningServer, prepare, serve};
