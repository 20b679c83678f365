//! Client-facing texts of the HTTP layer and the limits, in one place. The
//! handshake's `connect_error` messages are the `Display` of
//! [`crate::session::auth::AuthError`], which the design fixes word for word.
//! Only the words: when one is sent is the caller's, and it depends on
//! nothing.

pub const INTERNAL_ERROR: &str = "Internal server error";
pub const ORIGIN_NOT_ALLOWED: &str = "Origin not allowed";
pub const TOO_MANY_CONNECTIONS: &str = "Too many connections";
pub const TOO_MANY_HANDSHAKES: &str = "Too many handshakes";
pub const NOT_FOUND: &str = "Not found";
