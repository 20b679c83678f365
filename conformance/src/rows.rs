//! Fixture rows in tables sockgate knows only through the catalog: the
//! app's mapped guest and member tables (and whatever their foreign keys
//! point at, such as the app's users and organizations), or sockgate's own.
//!
//! A row is written with the values the suite cares about; every other
//! required column without a default gets a placeholder of its type, and a
//! foreign key gets a row of its own in the table it points at (made the
//! same way, two levels deep at most). Every row written is recorded and
//! deleted again, children first.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};

use sockgate::db::{self as catalog, CatalogColumn, Kind};
use sockgate::db::{IdKind, Sql, as_id, ident, qualified};

/// A value for a column, turned into SQL of the column's type.
#[derive(Debug, Clone)]
pub enum Fill {
    /// Text, converted to the column's id type when it is one.
    Text(String),
    Bool(bool),
}

#[derive(Debug, Clone)]
struct Written {
    table: String,
    key_column: String,
    key_kind: IdKind,
    key: String,
}

pub struct RowWriter {
    db: DatabaseConnection,
    /// Marks every placeholder text, so leftovers say where they came from.
    tag: String,
    counter: u64,
    written: Vec<Written>,
}

/// How deep foreign keys are followed: a guest's user and organization,
/// and what those point at.
const MAX_DEPTH: usize = 3;

impl RowWriter {
    pub fn new(db: DatabaseConnection, tag: String) -> Self {
        Self {
            db,
            tag,
            counter: 0,
            written: Vec::new(),
        }
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Inserts a row into `schema.table` with `values`, filling what else is
    /// required, and returns the text of column `returning`.
    pub async fn insert(
        &mut self,
        schema: Option<&str>,
        table: &str,
        values: Vec<(String, Fill)>,
        returning: &str,
    ) -> Result<String, String> {
        Box::pin(self.insert_at(schema, table, values, returning, 0)).await
    }

    async fn insert_at(
        &mut self,
        schema: Option<&str>,
        table: &str,
        mut values: Vec<(String, Fill)>,
        returning: &str,
        depth: usize,
    ) -> Result<String, String> {
        let shown = qualified(schema, table);
        if depth > MAX_DEPTH {
            return Err(format!(
                "{shown}: foreign keys nest deeper than {MAX_DEPTH} tables; create the fixtures by hand"
            ));
        }
        let err = |e: sea_orm::DbErr| format!("{shown}: {e}");
        let columns = catalog::columns(&self.db, schema, table)
            .await
            .map_err(err)?
            .ok_or_else(|| format!("{shown} does not exist"))?;
        let keys = catalog::foreign_keys(&self.db, schema, table)
            .await
            .map_err(err)?;
        // A value given for a foreign key column must name a row there.
        for (name, fill) in &values {
            if let (Some(fk), Fill::Text(value)) = (keys.iter().find(|k| &k.column == name), fill) {
                Box::pin(self.ensure(fk, value, depth + 1)).await?;
            }
        }
        let key_column = catalog::primary_key(&self.db, schema, table)
            .await
            .map_err(err)?
            .unwrap_or_else(|| returning.to_owned());
        for column in &columns {
            // The key too: SQLite lets a text primary key be NULL.
            let required = column.not_null || column.name == key_column || column.name == returning;
            if !required || column.has_default || values.iter().any(|(n, _)| n == &column.name) {
                continue;
            }
            let fill = match keys.iter().find(|k| k.column == column.name) {
                Some(fk) => {
                    let key = Box::pin(self.insert_at(
                        fk.ref_schema.as_deref(),
                        &fk.ref_table,
                        Vec::new(),
                        &fk.ref_column,
                        depth + 1,
                    ))
                    .await?;
                    Fill::Text(key)
                }
                None => self.placeholder(&shown, column).await?,
            };
            values.push((column.name.clone(), fill));
        }
        let kind_of = |name: &str| columns.iter().find(|c| c.name == name).map(|c| c.kind);

        let mut sql = Sql::new(self.backend());
        let mut names = Vec::new();
        let mut exprs = Vec::new();
        for (name, fill) in &values {
            let kind =
                kind_of(name).ok_or_else(|| format!("{shown}: no column {}", ident(name)))?;
            let sql_type = columns
                .iter()
                .find(|c| &c.name == name)
                .map(|c| c.sql_type.clone())
                .unwrap_or_default();
            names.push(ident(name));
            exprs.push(self.value(&mut sql, kind, &sql_type, fill));
        }
        sql.text = format!(
            "INSERT INTO {shown} ({}) VALUES ({}) RETURNING CAST({} AS TEXT) AS r, CAST({} AS TEXT) AS k",
            names.join(", "),
            exprs.join(", "),
            ident(returning),
            ident(&key_column),
        );
        let row = self
            .db
            .query_one_raw(sql.build())
            .await
            .map_err(|e| format!("inserting into {shown}: {e}"))?
            .ok_or_else(|| format!("inserting into {shown}: no row returned"))?;
        let returned: String = row.try_get("", "r").map_err(err)?;
        let key: String = row.try_get("", "k").map_err(err)?;
        self.written.push(Written {
            table: shown,
            key_kind: kind_of(&key_column)
                .and_then(Kind::id)
                .unwrap_or(IdKind::Text),
            key_column,
            key,
        });
        Ok(returned)
    }

    /// Makes sure the row `fk` points at with `value` exists.
    async fn ensure(
        &mut self,
        fk: &catalog::ForeignKey,
        value: &str,
        depth: usize,
    ) -> Result<(), String> {
        let shown = qualified(fk.ref_schema.as_deref(), &fk.ref_table);
        let columns = catalog::columns(&self.db, fk.ref_schema.as_deref(), &fk.ref_table)
            .await
            .map_err(|e| format!("{shown}: {e}"))?
            .ok_or_else(|| format!("{shown} does not exist"))?;
        let kind = columns
            .iter()
            .find(|c| c.name == fk.ref_column)
            .and_then(|c| c.kind.id())
            .unwrap_or(IdKind::Text);
        let mut sql = Sql::new(self.backend());
        let p = sql.bind(value);
        sql.text = format!(
            "SELECT 1 AS one FROM {shown} WHERE {} = {}",
            ident(&fk.ref_column),
            as_id(self.backend(), kind, &p)
        );
        let exists = self
            .db
            .query_one_raw(sql.build())
            .await
            .map_err(|e| format!("{shown}: {e}"))?
            .is_some();
        if !exists {
            self.insert_at(
                fk.ref_schema.as_deref(),
                &fk.ref_table,
                vec![(fk.ref_column.clone(), Fill::Text(value.to_owned()))],
                &fk.ref_column,
                depth,
            )
            .await?;
        }
        Ok(())
    }

    /// A stand-in value of `column`'s type for a required column the suite
    /// has no value for.
    async fn placeholder(&mut self, table: &str, column: &CatalogColumn) -> Result<Fill, String> {
        self.counter += 1;
        let n = self.counter;
        Ok(match column.kind {
            Kind::Integer => Fill::Text(random_int().to_string()),
            Kind::Text => Fill::Text(format!("{}-{n}", self.tag)),
            Kind::Uuid => Fill::Text(sockgate::db::new_uuid()),
            Kind::Boolean => Fill::Bool(false),
            Kind::Json | Kind::Timestamp | Kind::TimestampTz | Kind::Inet => {
                Fill::Text(String::new())
            }
            Kind::Enum => {
                let label = catalog::first_enum_label(&self.db, &column.sql_type)
                    .await
                    .map_err(|e| format!("{table}: {e}"))?
                    .ok_or_else(|| format!("{table}: enum {} has no labels", column.sql_type))?;
                Fill::Text(label)
            }
            Kind::Other => {
                return Err(format!(
                    "{table}: column {} ({}) is required and the suite cannot make up a value of that type",
                    ident(&column.name),
                    column.sql_type
                ));
            }
        })
    }

    /// `fill` as SQL of a column of `kind`.
    fn value(&self, sql: &mut Sql, kind: Kind, sql_type: &str, fill: &Fill) -> String {
        let pg = self.backend() == DbBackend::Postgres;
        match (fill, kind) {
            (Fill::Bool(b), _) => if *b { "TRUE" } else { "FALSE" }.to_owned(),
            (Fill::Text(_), Kind::Timestamp) if pg => "LOCALTIMESTAMP".to_owned(),
            (Fill::Text(_), Kind::TimestampTz) if pg => "now()".to_owned(),
            (Fill::Text(_), Kind::TimestampTz | Kind::Timestamp) => {
                "strftime('%Y-%m-%d %H:%M:%f', 'now')".to_owned()
            }
            (Fill::Text(_), Kind::Json) => "'{}'".to_owned(),
            (Fill::Text(_), Kind::Inet) if pg => "CAST('127.0.0.1' AS inet)".to_owned(),
            (Fill::Text(t), Kind::Enum) if pg => {
                let p = sql.bind(t.as_str());
                format!("CAST(CAST({p} AS text) AS {sql_type})")
            }
            (Fill::Text(t), kind) => {
                let p = sql.bind(t.as_str());
                match kind.id() {
                    Some(id) => as_id(self.backend(), id, &p),
                    None => p,
                }
            }
        }
    }

    /// Deletes every row written, the last first. Returns what could not
    /// be deleted; everything is attempted.
    pub async fn delete_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        while let Some(w) = self.written.pop() {
            let mut sql = Sql::new(self.backend());
            let p = sql.bind(w.key.as_str());
            sql.text = format!(
                "DELETE FROM {} WHERE {} = {}",
                w.table,
                ident(&w.key_column),
                as_id(self.backend(), w.key_kind, &p)
            );
            if let Err(e) = self.db.execute_raw(sql.build()).await {
                problems.push(format!("{} row {}: {e}", w.table, w.key));
            }
        }
        problems
    }
}

/// An integer id far above what an app hands out, within `integer`.
pub fn random_int() -> i64 {
    use rand::Rng;
    rand::rng().random_range(2_000_000_000..2_147_000_000)
}
