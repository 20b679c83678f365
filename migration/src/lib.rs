//! sockgate's own tables, identical on SQLite and PostgreSQL.
//!
//! The session table is not here on purpose: in production it belongs to the
//! Node app (connect-pg-simple's table.sql) and sockgate only verifies it.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_sockgate_tables;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261123_000001_sockgate_tables::Migration)]
    }
}
