//! Statements over tables whose names come from configuration: every
//! identifier quoted, every value bound, the placeholder style of the
//! backend. Nothing from a config file or a request is spliced in unquoted.
//! Knows no table or column by name; callers bring them from the
//! configuration or the mapping.

use sea_orm::{DbBackend, Statement, Value};
use sea_query_sqlx::SqlxValues;

/// `name` as a quoted identifier: `"name"` with inner quotes doubled (the
/// same rule on PostgreSQL and SQLite).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`, or `"table"` without a schema.
pub fn qualified(schema: Option<&str>, table: &str) -> String {
    match schema {
        Some(schema) => format!("{}.{}", ident(schema), ident(table)),
        None => ident(table),
    }
}

/// A statement under construction: [`Sql::bind`] returns the placeholder
/// for a value in the backend's style.
pub struct Sql {
    backend: DbBackend,
    pub text: String,
    values: Vec<Value>,
}

impl Sql {
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    pub fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => format!("?{}", self.values.len()),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}

/// `stmt` as sqlx takes it: its text (built by [`Sql`], every value bound),
/// and its values through sea-orm's own binder.
pub fn for_sqlx(stmt: Statement) -> (sqlx::AssertSqlSafe<String>, SqlxValues) {
    let values = SqlxValues(stmt.values.unwrap_or(sea_orm::Values(Vec::new())));
    (sqlx::AssertSqlSafe(stmt.sql), values)
}

/// How an id column compares with an id as text (`sess.passport.user` is a
/// JSON number or string; an admin route's path is text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Integer,
    Text,
    Uuid,
}

/// `text_expr` (a text-valued SQL expression) as a value of an id column
/// of `kind`, or NULL when it cannot be one, so `column = as_id(..)` uses
/// the column's index and a user id `'7'` matches an integer `7` and a text
/// `'7'` alike. SQLite compares by the column's affinity on its own.
pub fn as_id(backend: DbBackend, kind: IdKind, text_expr: &str) -> String {
    match (backend, kind) {
        (DbBackend::Postgres, IdKind::Integer) => format!(
            "(CASE WHEN {text_expr} ~ '^-?[0-9]{{1,18}}$' THEN CAST({text_expr} AS bigint) END)"
        ),
        (DbBackend::Postgres, IdKind::Uuid) => format!(
            "(CASE WHEN {text_expr} ~* '^[0-9a-f]{{8}}-?[0-9a-f]{{4}}-?[0-9a-f]{{4}}-?[0-9a-f]{{4}}-?[0-9a-f]{{12}}$' \
               THEN CAST({text_expr} AS uuid) END)"
        ),
        (DbBackend::Postgres, IdKind::Text) => format!("CAST({text_expr} AS text)"),
        (_, IdKind::Integer) => format!(
            "(CASE WHEN CAST(CAST({text_expr} AS INTEGER) AS TEXT) = CAST({text_expr} AS TEXT) \
               THEN CAST({text_expr} AS INTEGER) END)"
        ),
        (_, _) => format!("CAST({text_expr} AS TEXT)"),
    }
}

/// A random (version 4) UUID as text: ids sockgate writes into a text or
/// uuid column that has no default.
pub fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(ident("userId"), "\"userId\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified(Some("app"), "guest"), "\"app\".\"guest\"");
        assert_eq!(qualified(None, "guest"), "\"guest\"");
    }

    proptest! {
        /// Whatever the name, the quoted form is one identifier: it starts
        /// and ends with a quote and every inner quote is doubled.
        #[test]
        fn a_quoted_identifier_cannot_end_early(name in any::<String>()) {
            let quoted = ident(&name);
            let inner = &quoted[1..quoted.len() - 1];
            prop_assert!(quoted.starts_with('"') && quoted.ends_with('"'));
            prop_assert_eq!(inner.replace("\"\"", ""), name.replace('"', ""));
            prop_assert_eq!(inner.matches('"').count() % 2, 0);
        }
    }
}
