//! The database: connecting and migrating on SQLite or PostgreSQL, the
//! declared mapping of the app's tables checked against the catalog, the
//! statements over configured names, the PostgreSQL adapter's driver and
//! the `sockgate check` report. Knows nothing of sessions, HTTP or sockets.

pub(crate) mod adapter;
pub(crate) mod catalog;
pub(crate) mod check;
pub(crate) mod connect;
pub(crate) mod dev_seed;
pub(crate) mod held;
pub(crate) mod prepare;
pub(crate) mod sql;
pub(crate) mod tables;
pub(crate) mod zone_probe;

pub use catalog::{
    CatalogColumn, ForeignKey, Kind, columns, first_enum_label, foreign_keys, primary_key,
};
pub use connect::{Database, connect, create_session_table, migrate, verify_session_table};
pub use prepare::check_tables;
pub use sql::{IdKind, Sql, as_id, ident, new_uuid, qualified};
pub use tables::Tables;
pub use zone_probe::{ProbeError, default_zone};
