//! The audit log: the batched writer of sockgate's audit rows and the
//! rate-limited path refusals take to it.

pub(crate) mod refusal;
pub(crate) mod writer;

pub use writer::{AUDITED_HEADERS, AuditRow, rows_since};
