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

// The `message` of a client event's error ack (`proxy::rules::ProxyError`);
// its `code` says which, for programs.
pub const PROXY_NOT_ALLOWED: &str = "Event not allowed";
pub const PROXY_UNREADABLE: &str = "Event arguments must be JSON";
pub const PROXY_TOO_MANY_IN_FLIGHT: &str = "Too many events waiting for an answer";
pub const PROXY_TIMEOUT: &str = "The app did not answer in time";
pub const PROXY_STATUS: &str = "The app refused the event";
pub const PROXY_UNREACHABLE: &str = "The app is unavailable";
pub const PROXY_BAD_ANSWER: &str = "The app's answer could not be read";
pub const PROXY_SOCKET_CLOSED: &str = "Socket closed";
