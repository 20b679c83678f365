//! Where the Socket.IO layer serves engine.io, and the one test of whether a
//! request is for it. Every layer that must see each engine request (the
//! origin guard, the handshake's request trimming) asks here, so no spelling
//! the engine accepts can slip past one of them. Depends on nothing and knows
//! none of the layers that ask.

/// Where the Socket.IO layer serves engine.io (the engine's `req_path`).
pub const ENGINE_PATH: &str = "/socket.io";

/// Whether the engine would serve a request for `path`: the engine's own
/// matcher, so that no spelling it accepts (`/socket.io`, `/socket.io/`,
/// `/socket.io/x`) can pass the guard unchecked.
pub fn is_engine_path(path: &str) -> bool {
    engineioxide::service::is_req_path(path, ENGINE_PATH)
}
