//! Opening the database for a command and checking, before anything runs,
//! everything it relies on there: the session table, sockgate's schema and
//! migrations, the mapped (or own) guest, member and audit tables. The one
//! place that knows what SQLite development does beyond PostgreSQL
//! (migrating, creating the session table, seeding). Knows nothing of what
//! the command does next, nor of HTTP or sockets.

use anyhow::Context;

use crate::config::Config;
use crate::db::connect::{self as db, Database};
use crate::db::tables::{Namespace, Tables};

/// What a command needs of the database before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `serve`: everything checked; development migrates and seeds first.
    Serve,
    /// `check`: everything checked, nothing written.
    Check,
    /// `migrate`: sockgate's migrations applied, then everything checked.
    Migrate,
    /// `session mint`: a session table to write to (development creates it).
    Mint,
}

/// The database, opened and prepared for `purpose`; the tables as checked,
/// where the purpose checks them.
pub struct Opened {
    pub db: Database,
    pub tables: Option<Tables>,
}

pub async fn open(config: &Config, purpose: Purpose) -> anyhow::Result<Opened> {
    let db = db::connect(config)
        .await
        .context("connecting to the database")?;
    let writes = purpose != Purpose::Check;
    if purpose == Purpose::Migrate || (writes && config.is_development()) {
        db::migrate(config, &db)
            .await
            .context("migrating sockgate's tables")?;
    }
    if writes && config.is_development() {
        prepare_dev_database(config, &db).await?;
    }
    let tables = match purpose {
        Purpose::Mint => None,
        _ => Some(check_tables(config, &db).await?),
    };
    Ok(Opened { db, tables })
}

/// On SQLite the session table is sockgate's to create, and a development
/// user is there to log in as.
async fn prepare_dev_database(config: &Config, db: &Database) -> anyhow::Result<()> {
    db::create_session_table(&db.conn, None, &config.session_table).await?;
    crate::db::dev_seed::seed_dev_data(&db.conn, &namespace(config, db)).await
}

/// Where sockgate's own tables live for this configuration.
pub fn namespace(config: &Config, db: &Database) -> Namespace {
    Namespace::new(db.conn.get_database_backend(), &config.sockgate_schema)
}

/// Everything `serve` relies on in the database, checked without writing:
/// the session table's shape, sockgate's schema and migrations, and the
/// mapped (or own) guest, member and audit tables.
pub async fn check_tables(config: &Config, db: &Database) -> anyhow::Result<Tables> {
    db::verify_session_table(
        &db.conn,
        config.session_schema.as_deref(),
        &config.session_table,
    )
    .await?;
    let ns = namespace(config, db);
    if ns.backend == sea_orm::DbBackend::Postgres
        && !crate::db::catalog::schema_exists(&db.conn, &ns.schema).await?
    {
        anyhow::bail!(
            "schema {} (SOCKGATE_SCHEMA) does not exist: run `sockgate migrate` against this database first",
            crate::db::sql::ident(&ns.schema)
        );
    }
    // A foreign table in the namespace first: migrating would not help.
    crate::db::tables::verify_own_tables(&db.conn, &ns).await?;
    let pending = db::pending_migrations(config, db).await?;
    if pending > 0 {
        anyhow::bail!(
            "{pending} sockgate migration(s) pending: run `sockgate migrate` against this database first"
        );
    }
    let mapping = crate::db::tables::Mapping::of(config)?;
    Ok(Tables::resolve(&db.conn, db.session_zone.as_deref(), &ns, &mapping).await?)
}
