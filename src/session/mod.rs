//! What a signed session cookie and the stored session mean: the
//! cookie-signature and cookie parsing of the npm packages, the rules of
//! express-session's expiry, the store over connect-pg-simple's table, the
//! handshake's decision and minting sessions for development and tests.
//! Knows the database only through `db`; knows nothing of HTTP or sockets.

pub(crate) mod auth;
pub(crate) mod cookie;
pub(crate) mod dialect;
pub(crate) mod lookup;
pub(crate) mod mint;
pub(crate) mod prefetch;
pub(crate) mod rules;
pub(crate) mod sess;
pub(crate) mod signature;
pub(crate) mod store;

pub use cookie::{extract_session_id, parse_cookie};
pub use mint::{Minted, cookie_value, mint_session, new_sid};
pub use prefetch::FRESH as EARLY_LOOKUP_FRESH;
pub use rules::{UserId, ceil_unix_seconds, fingerprint, new_session_json};
pub use signature::{Secrets, sign, unsign};
pub use store::SessionStore;
