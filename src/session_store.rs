//! Reads and writes connect-pg-simple's session table, the way
//! connect-pg-simple itself does, one round trip per call.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use serde_json::Value as Json;

use crate::db::quoted_table;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error: callers
    /// fail closed.
    #[error("session store unavailable: {0}")]
    Unavailable(#[from] DbErr),
}

/// A row of the session table.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub sid: String,
    /// `None` when the stored JSON does not parse (nobody is logged in).
    pub sess: Option<Json>,
    /// `expire` as the instant the Node app means by it.
    pub expire_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct SessionStore {
    db: DatabaseConnection,
    table: String,
}

impl SessionStore {
    /// `schema` applies on PostgreSQL only; SQLite has no schemas.
    pub fn new(db: DatabaseConnection, schema: Option<&str>, table: &str) -> Self {
        let schema = match db.get_database_backend() {
            DbBackend::Postgres => schema,
            _ => None,
        };
        Self {
            table: quoted_table(schema, table),
            db,
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// The session row for `sid`, expired or not; the caller judges expiry
    /// with [`crate::session::is_live`], which is connect-pg-simple's rule.
    pub async fn load(&self, sid: &str) -> Result<Option<StoredSession>, StoreError> {
        let sql = match self.backend() {
            // `expire::timestamptz` reads the wall-clock value in the
            // connection's zone, which `db::connect` set to the Node app's.
            DbBackend::Postgres => format!(
                "SELECT sid, sess::text AS sess, expire::timestamptz AS expire_at FROM {} WHERE sid = $1",
                self.table
            ),
            _ => format!(
                "SELECT sid, sess AS sess, expire AS expire_at FROM {} WHERE sid = ?",
                self.table
            ),
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                self.backend(),
                sql,
                [sid.into()],
            ))
            .await?;
        row.map(|row| self.decode(&row)).transpose()
    }

    fn decode(&self, row: &sea_orm::QueryResult) -> Result<StoredSession, StoreError> {
        let sid: String = row.try_get("", "sid")?;
        let sess: String = row.try_get("", "sess")?;
        let expire_at = match self.backend() {
            DbBackend::Postgres => row.try_get::<DateTime<Utc>>("", "expire_at")?,
            // Development tables store UTC wall-clock text.
            _ => Utc.from_utc_datetime(&row.try_get::<NaiveDateTime>("", "expire_at")?),
        };
        Ok(StoredSession {
            sid,
            sess: serde_json::from_str(&sess).ok(),
            expire_at,
        })
    }

    /// connect-pg-simple's `set`: insert or replace the session, `expire`
    /// written as `to_timestamp(expire_secs)` in the Node app's zone.
    pub async fn upsert(&self, sid: &str, sess: &Json, expire_secs: i64) -> Result<(), StoreError> {
        let sess_text = sess.to_string();
        let stmt = match self.backend() {
            DbBackend::Postgres => Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "INSERT INTO {t} (sess, expire, sid) SELECT CAST($1 AS json), to_timestamp($2), $3 \
                     ON CONFLICT (sid) DO UPDATE SET sess = CAST($1 AS json), expire = to_timestamp($2)",
                    t = self.table
                ),
                [sess_text.into(), (expire_secs as f64).into(), sid.into()],
            ),
            _ => Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!(
                    "INSERT INTO {t} (sess, expire, sid) VALUES (?, ?, ?) \
                     ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expire = excluded.expire",
                    t = self.table
                ),
                [
                    sess_text.into(),
                    Value::from(sqlite_expire(expire_secs)),
                    sid.into(),
                ],
            ),
        };
        self.db.execute_raw(stmt).await?;
        Ok(())
    }

    /// Deletes a session (logout), as connect-pg-simple's `destroy`.
    pub async fn destroy(&self, sid: &str) -> Result<(), StoreError> {
        let placeholder = if self.backend() == DbBackend::Postgres {
            "$1"
        } else {
            "?"
        };
        let sql = format!("DELETE FROM {} WHERE sid = {placeholder}", self.table);
        self.db
            .execute_raw(Statement::from_sql_and_values(
                self.backend(),
                sql,
                [sid.into()],
            ))
            .await?;
        Ok(())
    }
}

fn sqlite_expire(expire_secs: i64) -> NaiveDateTime {
    Utc.timestamp_opt(expire_secs, 0)
        .single()
        .unwrap_or_default()
        .naive_utc()
}
