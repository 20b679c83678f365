//! `sockgate check`: what `serve` will rely on, printed without starting the
//! server or writing anything. The checks are the ones `serve` runs at start
//! ([`crate::db::prepare::check_tables`]); this adds the report, never a
//! check of its own, and knows nothing of HTTP or sockets.

use sea_orm::DbBackend;

use crate::config::Config;
use crate::db::tables::{Col, Namespace, Tables};

pub async fn run(config: &Config) -> anyhow::Result<()> {
    println!("database: {}", redacted_url(&config.database_url));
    let opened = crate::db::prepare::open(config, crate::db::prepare::Purpose::Check).await?;
    let db = opened.db;
    let tables = opened.tables.expect("check checks the tables");
    match (&db.session_zone, &config.session_timezone) {
        (Some(zone), Some(_)) => println!("session time zone: {zone} (SESSION_TIMEZONE)"),
        (Some(zone), None) => println!(
            "session time zone: {zone} (detected: the default a client that sends none gets)"
        ),
        (None, _) => println!("session time zone: UTC (SQLite development database)"),
    }

    let session_schema = match db.conn.get_database_backend() {
        DbBackend::Postgres => config.session_schema.as_deref(),
        _ => None,
    };
    let columns =
        crate::db::catalog::columns(&db.conn, session_schema, &config.session_table).await?;
    let rows =
        crate::db::catalog::row_estimate(&db.conn, session_schema, &config.session_table).await?;
    println!(
        "session table: {} ({}), about {rows} rows",
        crate::db::sql::qualified(session_schema, &config.session_table),
        columns
            .unwrap_or_default()
            .iter()
            .map(|c| format!("{} {}", c.name, c.sql_type))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "sockgate's own tables: {}, migrations up to date",
        own_place(&tables.namespace)
    );
    print_tables(&tables);
    println!("origins: {}", config.allowlist()?.describe());
    println!("adapter: {:?}", config.adapter()?);
    println!("OK: sockgate can serve with this configuration");
    Ok(())
}

/// Where sockgate's own tables are, in words.
pub fn own_place(ns: &Namespace) -> String {
    match ns.backend {
        DbBackend::Postgres => format!("schema {}", crate::db::sql::ident(&ns.schema)),
        _ => format!(
            "tables named {}* (SQLite)",
            crate::db::tables::SQLITE_PREFIX
        ),
    }
}

fn print_tables(tables: &Tables) {
    let col = |role: &str, c: &Col| format!("{role}={} {}", c.q, c.sql_type);
    let opt = |role: &str, c: &Option<Col>| c.as_ref().map(|c| col(role, c));
    let whose = |mapped: bool| {
        if mapped {
            "the app's, mapped"
        } else {
            "sockgate's own"
        }
    };
    let g = &tables.guests;
    let parts: Vec<String> = [
        Some(col("id", &g.id)),
        Some(col("user_id", &g.user_id)),
        Some(col("organization_id", &g.organization_id)),
        Some(col("soft_locked", &g.soft_locked)),
        opt("lock_reason", &g.lock_reason),
        opt("locked_at", &g.locked_at),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!(
        "guests: {} ({}): {}",
        g.table,
        whose(tables.mapped_guests),
        parts.join(", ")
    );
    let m = &tables.members;
    println!(
        "members: {} ({}): {}, {}, {}; admin roles: {}",
        m.table,
        whose(tables.mapped_guests),
        col("user_id", &m.user_id),
        col("organization_id", &m.organization_id),
        col("role", &m.role),
        m.admin_roles.join(", ")
    );
    let a = &tables.audit;
    let mut parts: Vec<String> = [
        opt("id", &a.id),
        Some(col("action", &a.action)),
        Some(col("severity", &a.severity)),
        Some(col("user_id", &a.user_id)),
        Some(col("details", &a.details)),
        Some(col("created_at", &a.created_at)),
        opt("socket_id", &a.socket_id),
        opt("reason", &a.reason),
        opt("ip", &a.ip),
        opt("session_ref", &a.session_ref),
        opt("headers", &a.headers),
    ]
    .into_iter()
    .flatten()
    .collect();
    let in_details: Vec<&str> = [
        ("socket_id", &a.socket_id),
        ("reason", &a.reason),
        ("client_ip", &a.ip),
        ("session_ref", &a.session_ref),
        ("headers", &a.headers),
    ]
    .into_iter()
    .filter(|(_, c)| c.is_none())
    .map(|(name, _)| name)
    .collect();
    if !in_details.is_empty() {
        parts.push(format!("inside details: {}", in_details.join(", ")));
    }
    println!(
        "audit: {} ({}): {}",
        a.table,
        whose(!a.own),
        parts.join(", ")
    );
}

/// The database URL without its password.
fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let shown = redacted_url("postgres://app:hunter2@db:5432/app?sslmode=require");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app:***@db"), "{shown}");
    }
}
