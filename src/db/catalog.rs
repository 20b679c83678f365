//! What the database says a table looks like: its columns, their types and
//! whether a row can be inserted without naming them. Read-only, and it
//! judges nothing: whether a table serves the mapping is `db::tables`'s call.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

use crate::db::sql::{IdKind, qualified};

/// The broad kind of a column, as far as sockgate's statements care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Integer,
    Text,
    Uuid,
    Boolean,
    Json,
    /// `timestamp without time zone`
    Timestamp,
    /// `timestamp with time zone`
    TimestampTz,
    /// A PostgreSQL enum: read as text, written through a cast.
    Enum,
    Inet,
    Other,
}

impl Kind {
    pub fn id(self) -> Option<IdKind> {
        match self {
            Kind::Integer => Some(IdKind::Integer),
            Kind::Text => Some(IdKind::Text),
            Kind::Uuid => Some(IdKind::Uuid),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub name: String,
    /// The type as the database prints it (`integer`, `"Role"`, `TEXT`).
    pub sql_type: String,
    pub kind: Kind,
    pub not_null: bool,
    /// A default, identity, generated value or SQLite rowid alias.
    pub has_default: bool,
}

/// The columns of `schema.table` in order, or `None` when there is no such
/// table. On SQLite the schema is ignored.
pub async fn columns(
    db: &DatabaseConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<Option<Vec<CatalogColumn>>, DbErr> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let rows = db
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS sql_type, \
                            t.typname::text AS typname, t.typtype::text AS typtype, a.attnotnull AS not_null, \
                            (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS has_default \
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                    [qualified(schema, table).into()],
                ))
                .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            rows.iter()
                .map(|row| {
                    let typname: String = row.try_get("", "typname")?;
                    let typtype: String = row.try_get("", "typtype")?;
                    Ok(CatalogColumn {
                        name: row.try_get("", "name")?,
                        sql_type: row.try_get("", "sql_type")?,
                        kind: pg_kind(&typname, &typtype),
                        not_null: row.try_get("", "not_null")?,
                        has_default: row.try_get("", "has_default")?,
                    })
                })
                .collect::<Result<Vec<_>, DbErr>>()
                .map(Some)
        }
        _ => {
            let rows = db
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "SELECT name, type AS sql_type, \"notnull\" AS not_null, \
                            dflt_value IS NOT NULL AS has_default, pk \
                     FROM pragma_table_info(?1)",
                    [table.into()],
                ))
                .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            let pk_count = rows
                .iter()
                .filter(|r| r.try_get::<i64>("", "pk").unwrap_or(0) > 0)
                .count();
            rows.iter()
                .map(|row| {
                    let sql_type: String = row.try_get("", "sql_type")?;
                    let pk: i64 = row.try_get("", "pk")?;
                    let kind = sqlite_kind(&sql_type);
                    // `INTEGER PRIMARY KEY` is the rowid: it fills itself.
                    let rowid = pk > 0 && pk_count == 1 && sql_type.eq_ignore_ascii_case("integer");
                    Ok(CatalogColumn {
                        name: row.try_get("", "name")?,
                        kind,
                        not_null: row.try_get::<i64>("", "not_null")? != 0 && !rowid,
                        has_default: row.try_get::<i64>("", "has_default")? != 0 || rowid,
                        sql_type,
                    })
                })
                .collect::<Result<Vec<_>, DbErr>>()
                .map(Some)
        }
    }
}

/// Whether a PostgreSQL schema exists.
pub async fn schema_exists(db: &DatabaseConnection, schema: &str) -> Result<bool, DbErr> {
    Ok(db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS one FROM pg_namespace WHERE nspname = $1",
            [schema.into()],
        ))
        .await?
        .is_some())
}

/// Rows in a table (for `sockgate check`): the planner's estimate on
/// PostgreSQL, so a large session table is not scanned.
pub async fn row_estimate(
    db: &DatabaseConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<i64, DbErr> {
    let stmt = match db.get_database_backend() {
        DbBackend::Postgres => Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT GREATEST(reltuples, 0)::bigint AS n FROM pg_class WHERE oid = to_regclass($1)",
            [qualified(schema, table).into()],
        ),
        _ => Statement::from_string(
            DbBackend::Sqlite,
            format!("SELECT COUNT(*) AS n FROM {}", qualified(None, table)),
        ),
    };
    Ok(db
        .query_one_raw(stmt)
        .await?
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0))
}

/// A single-column foreign key of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub column: String,
    pub ref_schema: Option<String>,
    pub ref_table: String,
    pub ref_column: String,
}

/// The single-column foreign keys of `schema.table`.
pub async fn foreign_keys(
    db: &DatabaseConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<Vec<ForeignKey>, DbErr> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let rows = db
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT a.attname::text AS col, n.nspname::text AS ref_schema, \
                            c.relname::text AS ref_table, fa.attname::text AS ref_col \
                     FROM pg_constraint k \
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] \
                     JOIN pg_class c ON c.oid = k.confrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     JOIN pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1] \
                     WHERE k.conrelid = to_regclass($1) AND k.contype = 'f' \
                       AND array_length(k.conkey, 1) = 1",
                    [qualified(schema, table).into()],
                ))
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(ForeignKey {
                        column: r.try_get("", "col")?,
                        ref_schema: Some(r.try_get("", "ref_schema")?),
                        ref_table: r.try_get("", "ref_table")?,
                        ref_column: r.try_get("", "ref_col")?,
                    })
                })
                .collect()
        }
        _ => {
            let rows = db
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "SELECT \"from\" AS col, \"table\" AS ref_table, \"to\" AS ref_col, id, \
                            (SELECT COUNT(*) FROM pragma_foreign_key_list(?1) f2 WHERE f2.id = f.id) AS n \
                     FROM pragma_foreign_key_list(?1) f",
                    [table.into()],
                ))
                .await?;
            let mut keys = Vec::new();
            for r in &rows {
                if r.try_get::<i64>("", "n")? != 1 {
                    continue;
                }
                let ref_table: String = r.try_get("", "ref_table")?;
                let ref_column = match r.try_get::<Option<String>>("", "ref_col")? {
                    Some(c) => c,
                    None => primary_key(db, None, &ref_table)
                        .await?
                        .unwrap_or_else(|| "rowid".to_owned()),
                };
                keys.push(ForeignKey {
                    column: r.try_get("", "col")?,
                    ref_schema: None,
                    ref_table,
                    ref_column,
                });
            }
            Ok(keys)
        }
    }
}

/// The single-column primary key of `schema.table`, if it has one.
pub async fn primary_key(
    db: &DatabaseConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<Option<String>, DbErr> {
    let rows = match db.get_database_backend() {
        DbBackend::Postgres => {
            db.query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT a.attname::text AS col FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
                [qualified(schema, table).into()],
            ))
            .await?
        }
        _ => {
            db.query_all_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "SELECT name AS col FROM pragma_table_info(?1) WHERE pk > 0",
                [table.into()],
            ))
            .await?
        }
    };
    if rows.len() != 1 {
        return Ok(None);
    }
    Ok(Some(rows[0].try_get("", "col")?))
}

/// The first label of a PostgreSQL enum type (as `format_type` prints it).
pub async fn first_enum_label(
    db: &DatabaseConnection,
    sql_type: &str,
) -> Result<Option<String>, DbErr> {
    db.query_one_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT enumlabel::text AS label FROM pg_enum \
         WHERE enumtypid = CAST($1 AS regtype) ORDER BY enumsortorder LIMIT 1",
        [sql_type.into()],
    ))
    .await?
    .map(|r| r.try_get("", "label"))
    .transpose()
}

fn pg_kind(typname: &str, typtype: &str) -> Kind {
    match typname {
        "int2" | "int4" | "int8" => Kind::Integer,
        "text" | "varchar" | "bpchar" | "citext" | "name" => Kind::Text,
        "uuid" => Kind::Uuid,
        "bool" => Kind::Boolean,
        "json" | "jsonb" => Kind::Json,
        "timestamp" => Kind::Timestamp,
        "timestamptz" => Kind::TimestampTz,
        "inet" => Kind::Inet,
        _ if typtype == "e" => Kind::Enum,
        _ => Kind::Other,
    }
}

/// SQLite's type affinity rules (declared type names are free text).
fn sqlite_kind(declared: &str) -> Kind {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        Kind::Integer
    } else if t.contains("BOOL") {
        Kind::Boolean
    } else if t.contains("JSON") {
        Kind::Json
    } else if t.contains("TIMESTAMP") || t.contains("DATE") {
        Kind::TimestampTz
    } else if t.contains("UUID") {
        Kind::Uuid
    } else {
        Kind::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_declared_types_map_by_affinity() {
        assert_eq!(sqlite_kind("INTEGER"), Kind::Integer);
        assert_eq!(sqlite_kind("bigint"), Kind::Integer);
        assert_eq!(sqlite_kind("boolean"), Kind::Boolean);
        assert_eq!(sqlite_kind("varchar(255)"), Kind::Text);
        assert_eq!(sqlite_kind("timestamp_text"), Kind::TimestampTz);
        assert_eq!(sqlite_kind(""), Kind::Text);
    }
}
