//! Shared by the tests and the benches (`#[path]`): a server process
//! driven from one address needs the per-client limits out of the way.

/// The per-client limits out of the way for a load from one address.
pub const UNLIMITED_ENV: [(&str, &str); 7] = [
    ("MAX_CONNECTIONS_PER_IP", "1000000"),
    ("HANDSHAKES_PER_IP_PER_SEC", "1000000"),
    ("HANDSHAKE_BURST_PER_IP", "1000000"),
    ("MAX_SOCKETS_PER_USER", "1000000"),
    ("MAX_SOCKETS_PER_SESSION", "1000000"),
    ("REFUSAL_LOG_PER_IP_PER_SEC", "1000000"),
    ("REFUSAL_LOG_BURST_PER_IP", "1000000"),
];
