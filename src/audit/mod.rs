//! What happened, on the record: the event vocabulary (one typed event per
//! thing worth recording, turned into its audit row, metric and log line in
//! one place) and the batched writer of the audit rows. Knows nothing of HTTP
//! handlers or sockets: they say what happened and never assemble a row.

pub(crate) mod event;
pub(crate) mod writer;

pub use writer::{AUDITED_HEADERS, AuditRow, rows_since};
