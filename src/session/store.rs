//! Reads and writes connect-pg-simple's session table, the way
//! connect-pg-simple itself does, one round trip per call; what differs
//! between PostgreSQL and SQLite is asked of [`Dialect`], so nothing here
//! matches on the backend. It reads rows but never judges them: whether a
//! session is live, and whose it is, is `session::rules`'s to say.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use serde_json::Value as Json;

use std::collections::HashMap;
use std::sync::Arc;

use crate::db::connect::quoted_table;
use crate::db::held::Held;
use crate::db::sql::{Sql, as_id};
use crate::db::tables::Tables;
pub use crate::session::dialect::Extension;
use crate::session::dialect::{Dialect, NUL_ESCAPE};
use crate::session::lookup::{Keyed, Lookups, Pending};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error: callers
    /// fail closed. Shared: one failed statement answers a batch of lookups.
    #[error("session store unavailable: {0}")]
    Unavailable(Arc<DbErr>),
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        StoreError::Unavailable(Arc::new(e))
    }
}

/// A row of the session table.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub sid: String,
    /// `sess.passport.user`: `None` when nobody is logged in, or the
    /// stored text is not JSON.
    pub user: Option<crate::session::rules::UserId>,
    /// `expire` as the instant the Node app means by it.
    pub expire_at: DateTime<Utc>,
    /// The lock reason when the session's user is a soft-locked guest.
    pub guest_lock: Option<String>,
    /// The text holds a `\u0000` escape (see [`NUL_ESCAPE`]).
    raw_nul: bool,
}

impl Keyed for StoredSession {
    fn key(&self) -> &str {
        &self.sid
    }
}

/// A session lookup queued by [`SessionStore::start_load`], not yet read.
pub struct PendingLoad(Pending<StoredSession, StoreError>);

/// Every statement that reads or writes `expire` names the Node app's
/// zone itself (`expire AT TIME ZONE $zone`, the zone a bound parameter),
/// so nothing depends on the connection's `TimeZone`: a pooler in
/// transaction mode, `DISCARD ALL` or a proxy resetting sessions cannot
/// shift expiry by the zone's offset.
#[derive(Clone)]
pub struct SessionStore {
    db: DatabaseConnection,
    /// Where the SQL differs by backend, chosen from the connection.
    dialect: Dialect,
    table: String,
    /// The zone `expire` is written in (PostgreSQL; SQLite stores UTC).
    zone: String,
    /// Where soft-locked guests are read; without it no session is
    /// judged locked (`sockgate session mint` only).
    tables: Option<Arc<Tables>>,
    /// Concurrent handshakes' lookups, shared by every clone.
    lookups: Arc<Lookups<StoredSession, StoreError>>,
    /// The text of their statement, the same for every batch.
    load_text: Arc<str>,
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
        let dialect = Dialect::of(db.conn.get_database_backend());
        let table = quoted_table(dialect.schema(schema), table);
        let load_text = dialect
            .load_many_text(&table, &guest_lock_column(dialect, tables.as_deref()))
            .into();
        Self {
            dialect,
            table,
            zone: db.session_zone.clone().unwrap_or_else(|| "UTC".to_owned()),
            db: db.conn.clone(),
            tables,
            lookups: Arc::default(),
            load_text,
        }
    }

    /// The zone `expire` is read and written in.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Handshake lookups sent so far, and the statements that answered
    /// them (lookups that arrive together share one).
    pub fn lookup_counts(&self) -> (u64, u64) {
        self.lookups.counts()
    }

    /// The session row for `sid`, expired or not; the caller judges expiry
    /// with `session::rules::is_live`, which is connect-pg-simple's rule.
    /// One round trip, shared with the handshakes looked up beside it
    /// (`session::lookup`).
    pub async fn load(&self, sid: &str) -> Result<Option<StoredSession>, StoreError> {
        self.finish_load(self.start_load(sid)).await
    }

    /// [`load`](Self::load)'s statement, queued now; its answer is read by
    /// [`finish_load`](Self::finish_load), on this store or a clone.
    pub fn start_load(&self, sid: &str) -> PendingLoad {
        // A run of batches keeps one connection (`db::held`): under load,
        // the pool's two pings once per run instead of around every
        // statement.
        PendingLoad(self.lookups.enqueue(
            sid,
            || (self.clone(), Held::new(self.db.clone())),
            |(store, mut conn), sids| async move {
                let rows = store.load_many(&mut conn, &sids).await;
                ((store, conn), rows)
            },
        ))
    }

    /// The row a [`start_load`](Self::start_load) asked for.
    pub async fn finish_load(
        &self,
        pending: PendingLoad,
    ) -> Result<Option<StoredSession>, StoreError> {
        let found = pending.0.answer().await.unwrap_or_else(|| {
            Err(StoreError::Unavailable(Arc::new(DbErr::Custom(
                "session lookup ended without an answer".to_owned(),
            ))))
        });
        let Some(mut stored) = found? else {
            return Ok(None);
        };
        // The lock column could not read a session PostgreSQL's JSON
        // operators refuse; its user was decoded here, so ask by user.
        if self.dialect.json_skips_nul_escape()
            && stored.guest_lock.is_none()
            && stored.raw_nul
            && let Some(user) = &stored.user
        {
            stored.guest_lock = self.guest_lock_of(user).await?;
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
        let mut sql = Sql::new(self.dialect.backend());
        let param = sql.bind(user.as_str());
        sql.text = format!(
            "SELECT {reason} AS guest_lock FROM {table} g \
             WHERE g.{locked} IS TRUE AND g.{user_col} = {user} LIMIT 1",
            reason = lock_reason_expr(tables),
            table = g.table,
            locked = g.soft_locked.q,
            user_col = g.user_id.q,
            user = as_id(self.dialect.backend(), g.user_id.id_kind(), &param),
        );
        let row = self.db.query_one_raw(sql.build()).await?;
        Ok(row
            .map(|r| r.try_get::<String>("", "guest_lock"))
            .transpose()?)
    }

    /// The rows of `sids` (any number), in one statement.
    async fn load_many(
        &self,
        conn: &mut Held,
        sids: &[String],
    ) -> Result<Vec<StoredSession>, StoreError> {
        let stmt = self.dialect.load_many(&self.load_text, sids, &self.zone);
        let rows = conn.query_all(stmt).await?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    fn decode(&self, row: &sea_orm::QueryResult) -> Result<StoredSession, StoreError> {
        let sid: String = row.try_get("", "sid")?;
        let sess: String = row.try_get("", "sess")?;
        let expire_at = self.dialect.expire_at(row)?;
        Ok(StoredSession {
            sid,
            raw_nul: sess.contains(NUL_ESCAPE),
            user: crate::session::sess::read(&sess).user,
            expire_at,
            guest_lock: row.try_get("", "guest_lock")?,
        })
    }

    /// connect-pg-simple's `set`: insert or replace the session, `expire`
    /// written as `to_timestamp(expire_secs)` in the Node app's zone.
    pub async fn upsert(&self, sid: &str, sess: &Json, expire_secs: i64) -> Result<(), StoreError> {
        let stmt = self
            .dialect
            .upsert(&self.table, sid, sess.to_string(), expire_secs, &self.zone);
        self.db.execute_raw(stmt).await?;
        Ok(())
    }

    /// Deletes a session (logout), as connect-pg-simple's `destroy`.
    pub async fn destroy(&self, sid: &str) -> Result<(), StoreError> {
        self.db
            .execute_raw(self.dialect.destroy(&self.table, sid))
            .await?;
        Ok(())
    }
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
}

/// A column `guest_lock`: the lock reason (or `''`) when the row's
/// `sess.passport.user` (or its `id`) is a soft-locked guest, else NULL.
/// Read in the same query as the session, so a handshake stays one round
/// trip. Malformed `sess` reads as no user rather than failing the query.
fn guest_lock_column(dialect: Dialect, tables: Option<&Tables>) -> String {
    let Some(tables) = tables else {
        return "CAST(NULL AS TEXT) AS guest_lock".to_owned();
    };
    let backend = dialect.backend();
    let user = dialect.sess_text_at(&["passport", "user"]);
    let user_id = dialect.sess_text_at(&["passport", "user", "id"]);
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

/// The lock reason of guest row `g`, `''` when none is kept.
fn lock_reason_expr(tables: &Tables) -> String {
    match &tables.guests.lock_reason {
        Some(col) => format!("COALESCE(CAST(g.{} AS TEXT), '')", col.q),
        None => "''".to_owned(),
    }
}

impl SessionStore {
    /// How many sessions one [`Self::check_many`] may ask for.
    pub fn check_chunk(&self) -> usize {
        self.dialect.check_chunk()
    }

    /// One query for up to [`Self::check_chunk`] sessions; rows missing from
    /// the answer were deleted. Each row's `sess` is read here, as the
    /// handshake reads it, so the app's database only looks rows up. Guest
    /// locks are not read here (each would be another parse of every row's
    /// `sess`): ask [`Self::locked_guests`] for the users whose sessions the
    /// rules keep.
    pub async fn check_many(&self, sids: &[String]) -> Result<Vec<SessionCheck>, StoreError> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let stmt = self.dialect.check_many(&self.table, sids, &self.zone);
        let rows = self.db.query_all_raw(stmt).await?;
        let mut checks = Vec::with_capacity(rows.len());
        for row in &rows {
            let sess: String = row.try_get("", "sess")?;
            // As the handshake reads it (`load`): text that is not JSON
            // names no user.
            let facts = crate::session::sess::read(&sess);
            checks.push(SessionCheck {
                sid: row.try_get("", "sid")?,
                expire_at: self.dialect.expire_at(row)?,
                user: facts.user,
                original_max_age_ms: facts.original_max_age_ms,
            });
        }
        Ok(checks)
    }

    /// Which of `users` are soft-locked guests, each with its lock reason
    /// (or `''`): one query for any number of users, matched against the
    /// guests table's user column as [`Self::guest_lock_of`] matches one.
    pub async fn locked_guests(
        &self,
        users: &[&crate::session::rules::UserId],
    ) -> Result<HashMap<crate::session::rules::UserId, String>, StoreError> {
        let mut locked = HashMap::new();
        let Some(tables) = &self.tables else {
            return Ok(locked);
        };
        if users.is_empty() {
            return Ok(locked);
        }
        let g = &tables.guests;
        let mut sql = Sql::new(self.dialect.backend());
        let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        let list = self.dialect.text_list(&mut sql, &ids);
        sql.text = format!(
            "SELECT u.id AS user_id, {reason} AS guest_lock FROM {list} \
             JOIN {table} g ON g.{user_col} = {user} WHERE g.{locked} IS TRUE",
            reason = lock_reason_expr(tables),
            table = g.table,
            user_col = g.user_id.q,
            user = as_id(self.dialect.backend(), g.user_id.id_kind(), "u.id"),
            locked = g.soft_locked.q,
        );
        for row in self.db.query_all_raw(sql.build()).await? {
            let user: String = row.try_get("", "user_id")?;
            let reason: String = row.try_get("", "guest_lock")?;
            // A user who is a guest of several organizations: one lock is
            // enough, as for the handshake's `LIMIT 1`.
            locked
                .entry(crate::session::rules::UserId::new(user))
                .or_insert(reason);
        }
        Ok(locked)
    }

    /// connect-pg-simple's `touch` for many sessions in one statement (one
    /// per session on SQLite):
    /// `expire` only ever moves forward, and `sess.cookie.expires` is set to
    /// match in SQL, so a concurrent write of other session fields by the
    /// Node app is not lost. A session cookie without an expiry (a browser
    /// session cookie) keeps none.
    pub async fn extend_many(&self, items: &[Extension]) -> Result<u64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let mut updated = 0;
        for stmt in self.dialect.extend_many(&self.table, items, &self.zone) {
            updated += self.db.execute_raw(stmt).await?.rows_affected();
        }
        Ok(updated)
    }
}
