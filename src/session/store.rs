//! Reads and writes connect-pg-simple's session table, the way
//! connect-pg-simple itself does, one round trip per call.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use serde_json::Value as Json;

use std::sync::Arc;

use crate::db::connect::quoted_table;
use crate::db::sql::{Sql, as_id};
use crate::db::tables::Tables;

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
    /// The lock reason when the session's user is a soft-locked guest.
    pub guest_lock: Option<String>,
    /// The text holds a `\u0000` escape (see [`NUL_ESCAPE`]).
    raw_nul: bool,
}

/// Every statement that reads or writes `expire` names the Node app's
/// zone itself (`expire AT TIME ZONE $zone`, the zone a bound parameter),
/// so nothing depends on the connection's `TimeZone`: a pooler in
/// transaction mode, `DISCARD ALL` or a proxy resetting sessions cannot
/// shift expiry by the zone's offset.
#[derive(Clone)]
pub struct SessionStore {
    db: DatabaseConnection,
    table: String,
    /// The zone `expire` is written in (PostgreSQL; SQLite stores UTC).
    zone: String,
    /// Where soft-locked guests are read; without it no session is
    /// judged locked (`sockgate session mint` only).
    tables: Option<Arc<Tables>>,
}

impl SessionStore {
    /// `schema` and `zone` apply on PostgreSQL only: SQLite has no schemas
    /// and its development tables hold UTC.
    pub fn new(
        db: &crate::db::connect::Database,
        schema: Option<&str>,
        table: &str,
        tables: Option<Arc<Tables>>,
    ) -> Self {
        let schema = match db.conn.get_database_backend() {
            DbBackend::Postgres => schema,
            _ => None,
        };
        Self {
            table: quoted_table(schema, table),
            zone: db.session_zone.clone().unwrap_or_else(|| "UTC".to_owned()),
            db: db.conn.clone(),
            tables,
        }
    }

    /// The zone `expire` is read and written in.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// The session row for `sid`, expired or not; the caller judges expiry
    /// with [`crate::session::rules::is_live`], which is connect-pg-simple's rule.
    pub async fn load(&self, sid: &str) -> Result<Option<StoredSession>, StoreError> {
        let sql = match self.backend() {
            DbBackend::Postgres => format!(
                "SELECT sid, sess::text AS sess, {}, {} \
                 FROM {} WHERE sid = $1",
                pg_expire_at("$2"),
                self.guest_lock_column(),
                self.table
            ),
            _ => format!(
                "SELECT sid, sess AS sess, expire AS expire_at, {} FROM {} WHERE sid = ?",
                self.guest_lock_column(),
                self.table
            ),
        };
        let values: Vec<Value> = match self.backend() {
            DbBackend::Postgres => vec![sid.into(), self.zone.as_str().into()],
            _ => vec![sid.into()],
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(self.backend(), sql, values))
            .await?;
        let Some(mut stored) = row.map(|row| self.decode(&row)).transpose()? else {
            return Ok(None);
        };
        // The lock column could not read a session PostgreSQL's JSON
        // operators refuse; its user was decoded here, so ask by user.
        if self.backend() == DbBackend::Postgres
            && stored.guest_lock.is_none()
            && stored.raw_nul
            && let Some(user) = stored
                .sess
                .as_ref()
                .and_then(crate::session::rules::passport_user)
        {
            stored.guest_lock = self.guest_lock_of(&user).await?;
        }
        Ok(Some(stored))
    }

    /// The lock reason (or `''`) when `user` is a soft-locked guest.
    pub async fn guest_lock_of(
        &self,
        user: &crate::session::rules::UserId,
    ) -> Result<Option<String>, StoreError> {
        let Some(tables) = &self.tables else {
            return Ok(None);
        };
        let g = &tables.guests;
        let mut sql = Sql::new(self.backend());
        let param = sql.bind(user.as_str());
        sql.text = format!(
            "SELECT {reason} AS guest_lock FROM {table} g \
             WHERE g.{locked} IS TRUE AND g.{user_col} = {user} LIMIT 1",
            reason = lock_reason_expr(tables),
            table = g.table,
            locked = g.soft_locked.q,
            user_col = g.user_id.q,
            user = as_id(self.backend(), g.user_id.id_kind(), &param),
        );
        let row = self.db.query_one_raw(sql.build()).await?;
        Ok(row
            .map(|r| r.try_get::<String>("", "guest_lock"))
            .transpose()?)
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
            raw_nul: sess.contains(NUL_ESCAPE),
            sess: serde_json::from_str(&sess).ok(),
            expire_at,
            guest_lock: row.try_get("", "guest_lock")?,
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
                    "INSERT INTO {t} (sess, expire, sid) \
                     SELECT CAST($1 AS json), to_timestamp($2) AT TIME ZONE $4, $3 \
                     ON CONFLICT (sid) DO UPDATE \
                     SET sess = CAST($1 AS json), expire = to_timestamp($2) AT TIME ZONE $4",
                    t = self.table
                ),
                [
                    sess_text.into(),
                    (expire_secs as f64).into(),
                    sid.into(),
                    self.zone.as_str().into(),
                ],
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

/// What the watcher needs of one live session: no more than this crosses
/// the wire per socket per tick.
#[derive(Debug, Clone)]
pub struct SessionCheck {
    pub sid: String,
    pub expire_at: DateTime<Utc>,
    /// `sess.passport.user` as stored, if any.
    pub user: Option<crate::session::rules::UserId>,
    /// `sess.cookie.originalMaxAge` in ms, if any.
    pub original_max_age_ms: Option<f64>,
    /// The lock reason when the session's user is a soft-locked guest.
    pub guest_lock: Option<String>,
}

impl SessionStore {
    /// A column `guest_lock`: the lock reason (or `''`) when the row's
    /// `sess.passport.user` (or its `id`) is a soft-locked guest, else NULL.
    /// Read in the same query as the session, so a handshake stays one round
    /// trip. Malformed `sess` reads as no user rather than failing the query.
    fn guest_lock_column(&self) -> String {
        let Some(tables) = &self.tables else {
            return "CAST(NULL AS TEXT) AS guest_lock".to_owned();
        };
        let backend = self.backend();
        let (user, user_id) = match backend {
            DbBackend::Postgres => (
                format!("({PG_SESS} #>> '{{passport,user}}')"),
                format!("({PG_SESS} #>> '{{passport,user,id}}')"),
            ),
            _ => (
                "(CASE WHEN json_valid(sess) THEN sess ->> '$.passport.user' END)".to_owned(),
                "(CASE WHEN json_valid(sess) THEN sess ->> '$.passport.user.id' END)".to_owned(),
            ),
        };
        let kind = tables.guests.user_id.id_kind();
        format!(
            "(SELECT {reason} FROM {table} g WHERE g.{locked} IS TRUE \
               AND g.{user_col} IN ({a}, {b}) LIMIT 1) AS guest_lock",
            reason = lock_reason_expr(tables),
            table = tables.guests.table,
            locked = tables.guests.soft_locked.q,
            user_col = tables.guests.user_id.q,
            a = as_id(backend, kind, &user),
            b = as_id(backend, kind, &user_id),
        )
    }
}

/// The lock reason of guest row `g`, `''` when none is kept.
fn lock_reason_expr(tables: &Tables) -> String {
    match &tables.guests.lock_reason {
        Some(col) => format!("COALESCE(CAST(g.{} AS TEXT), '')", col.q),
        None => "''".to_owned(),
    }
}

/// `sess` as json for PostgreSQL's JSON operators, or NULL when its text
/// holds a `\u0000` escape: legal in `json`, but every JSON operator on such
/// a value fails, and one such row would fail the whole statement (every
/// socket's re-check on the node). Those rows are read as text and decoded
/// here instead ([`NUL_ESCAPE`]).
const PG_SESS: &str = "(CASE WHEN strpos(sess::text, '\\u0000') = 0 THEN sess::json END)";

/// What marks a session text PostgreSQL's JSON operators cannot read.
pub const NUL_ESCAPE: &str = "\\u0000";

/// `expire` as the instant the Node app means (`$zone` is the parameter
/// with the zone), clamped to a range every driver decodes: `infinity` is
/// a legal timestamp and would fail the row's decoding.
fn pg_expire_at(zone_param: &str) -> String {
    format!(
        "(LEAST(GREATEST(expire, '1970-01-01'::timestamp), '9999-12-31'::timestamp) AT TIME ZONE {zone_param}) AS expire_at"
    )
}

/// A session to extend: the new `expire` (whole seconds) and the matching
/// `cookie.expires` text.
#[derive(Debug, Clone)]
pub struct Extension {
    pub sid: String,
    pub expire_secs: i64,
    pub cookie_expires: String,
}

/// PostgreSQL takes one array parameter per query; this many sessions per
/// query keeps a tick at one query per thousand sockets.
pub const PG_CHECK_CHUNK: usize = 1000;
/// SQLite's default limit on bound parameters is far above this, and
/// shorter statements prepare faster.
pub const SQLITE_CHECK_CHUNK: usize = 500;

impl SessionStore {
    pub fn check_chunk(&self) -> usize {
        match self.backend() {
            DbBackend::Postgres => PG_CHECK_CHUNK,
            _ => SQLITE_CHECK_CHUNK,
        }
    }

    /// One query for up to [`Self::check_chunk`] sessions; rows missing from
    /// the answer were deleted.
    pub async fn check_many(&self, sids: &[String]) -> Result<Vec<SessionCheck>, StoreError> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let stmt = match self.backend() {
            DbBackend::Postgres => Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT sid, {}, \
                            ({PG_SESS} -> 'passport' -> 'user')::text AS user_json, \
                            ({PG_SESS} -> 'cookie' -> 'originalMaxAge')::text AS max_age, \
                            CASE WHEN strpos(sess::text, '\\u0000') > 0 THEN sess::text END AS raw_sess, {} \
                     FROM {} WHERE sid = ANY($1)",
                    pg_expire_at("$2"),
                    self.guest_lock_column(),
                    self.table
                ),
                [
                    Value::Array(
                        sea_orm::sea_query::ArrayType::String,
                        Some(Box::new(
                            sids.iter().map(|s| Value::from(s.as_str())).collect(),
                        )),
                    ),
                    self.zone.as_str().into(),
                ],
            ),
            _ => Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!(
                    "SELECT sid, expire AS expire_at, \
                            CASE WHEN json_valid(sess) THEN sess -> '$.passport.user' END AS user_json, \
                            CASE WHEN json_valid(sess) THEN sess -> '$.cookie.originalMaxAge' END AS max_age, \
                            NULL AS raw_sess, {} \
                     FROM {} WHERE sid IN ({})",
                    self.guest_lock_column(),
                    self.table,
                    vec!["?"; sids.len()].join(", ")
                ),
                sids.iter().map(|s| Value::from(s.as_str())),
            ),
        };
        let rows = self.db.query_all_raw(stmt).await?;
        let mut checks = Vec::with_capacity(rows.len());
        for row in &rows {
            let expire_at = match self.backend() {
                DbBackend::Postgres => row.try_get::<DateTime<Utc>>("", "expire_at")?,
                _ => Utc.from_utc_datetime(&row.try_get::<NaiveDateTime>("", "expire_at")?),
            };
            let raw_sess: Option<String> = row.try_get("", "raw_sess")?;
            let mut check = match raw_sess.and_then(|t| serde_json::from_str::<Json>(&t).ok()) {
                // A session SQL's JSON operators could not read (see
                // `PG_SESS`): decoded here, its lock asked for by user.
                Some(sess) => SessionCheck {
                    sid: row.try_get("", "sid")?,
                    expire_at,
                    user: crate::session::rules::passport_user(&sess),
                    original_max_age_ms: crate::session::rules::original_max_age(&sess),
                    guest_lock: None,
                },
                None => {
                    let user_json: Option<String> = row.try_get("", "user_json")?;
                    let max_age: Option<String> = row.try_get("", "max_age")?;
                    let user = user_json
                        .and_then(|text| serde_json::from_str::<Json>(&text).ok())
                        .and_then(|user| {
                            crate::session::rules::passport_user(
                                &serde_json::json!({"passport": {"user": user}}),
                            )
                        });
                    SessionCheck {
                        sid: row.try_get("", "sid")?,
                        expire_at,
                        user,
                        original_max_age_ms: max_age.and_then(|t| t.parse::<f64>().ok()),
                        guest_lock: row.try_get("", "guest_lock")?,
                    }
                }
            };
            if check.guest_lock.is_none()
                && row.try_get::<Option<String>>("", "raw_sess")?.is_some()
                && let Some(user) = &check.user
            {
                check.guest_lock = self.guest_lock_of(user).await?;
            }
            checks.push(check);
        }
        Ok(checks)
    }

    /// connect-pg-simple's `touch` for many sessions in one statement:
    /// `expire` only ever moves forward, and `sess.cookie.expires` is set to
    /// match in SQL, so a concurrent write of other session fields by the
    /// Node app is not lost. A session cookie without an expiry (a browser
    /// session cookie) keeps none.
    pub async fn extend_many(&self, items: &[Extension]) -> Result<u64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        match self.backend() {
            DbBackend::Postgres => {
                let array = |ty, values: Vec<Value>| Value::Array(ty, Some(Box::new(values)));
                use sea_orm::sea_query::ArrayType;
                let stmt = Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    format!(
                        "UPDATE {t} AS s SET \
                           expire = to_timestamp(v.exp) AT TIME ZONE $4, \
                           sess = CASE WHEN jsonb_typeof(s.sess::jsonb #> '{{cookie,expires}}') = 'string' \
                                       THEN jsonb_set(s.sess::jsonb, '{{cookie,expires}}', to_jsonb(v.iso))::json \
                                       ELSE s.sess::json END \
                         FROM unnest($1::text[], $2::float8[], $3::text[]) AS v(sid, exp, iso) \
                         WHERE s.sid = v.sid AND s.expire < (to_timestamp(v.exp) AT TIME ZONE $4) \
                           AND strpos(s.sess::text, '\\u0000') = 0",
                        t = self.table
                    ),
                    [
                        array(
                            ArrayType::String,
                            items.iter().map(|i| Value::from(i.sid.as_str())).collect(),
                        ),
                        array(
                            ArrayType::Double,
                            items
                                .iter()
                                .map(|i| Value::from(i.expire_secs as f64))
                                .collect(),
                        ),
                        array(
                            ArrayType::String,
                            items
                                .iter()
                                .map(|i| Value::from(i.cookie_expires.as_str()))
                                .collect(),
                        ),
                        self.zone.as_str().into(),
                    ],
                );
                Ok(self.db.execute_raw(stmt).await?.rows_affected())
            }
            _ => {
                let sql = format!(
                    "UPDATE {t} SET expire = ?, \
                       sess = CASE WHEN json_type(sess, '$.cookie.expires') = 'text' \
                                   THEN json_set(sess, '$.cookie.expires', ?) ELSE sess END \
                     WHERE sid = ? AND expire < ?",
                    t = self.table
                );
                let mut updated = 0;
                for item in items {
                    let expire = sqlite_expire(item.expire_secs);
                    let stmt = Statement::from_sql_and_values(
                        DbBackend::Sqlite,
                        sql.clone(),
                        [
                            Value::from(expire),
                            Value::from(item.cookie_expires.as_str()),
                            Value::from(item.sid.as_str()),
                            Value::from(expire),
                        ],
                    );
                    updated += self.db.execute_raw(stmt).await?.rows_affected();
                }
                Ok(updated)
            }
        }
    }
}
