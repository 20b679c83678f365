//! sockgate's own tables, identical on SQLite and PostgreSQL, in sockgate's
//! own namespace: on PostgreSQL its schema (the migrations run with
//! `search_path` set to it alone, bookkeeping table included), on SQLite
//! names prefixed with [`SQLITE_PREFIX`].
//!
//! The session table is not here on purpose: in production it belongs to the
//! Node app (connect-pg-simple's table.sql) and sockgate only verifies it.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_sockgate_tables;

/// Prefix of sockgate's own tables on SQLite, which has no schemas.
pub const SQLITE_PREFIX: &str = "sockgate_";
/// The migrations' bookkeeping table (in sockgate's schema on PostgreSQL).
pub const MIGRATIONS_TABLE: &str = "sockgate_migrations";

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        Alias::new(MIGRATIONS_TABLE).into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261123_000001_sockgate_tables::Migration)]
    }
}
