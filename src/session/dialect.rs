//! Where the session store's SQL differs between PostgreSQL and SQLite: the
//! text and bound values of each statement over connect-pg-simple's table,
//! how `sess` JSON is read in SQL, how `expire` is written and read back
//! (a zoned timestamp on PostgreSQL, UTC wall-clock text on SQLite) and how
//! many sessions one check asks for. It builds statements and decodes
//! values but never runs them; it must not know the connection, the
//! configured zone's source, the guests table or express-session's rules,
//! which the store supplies or judges.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use sea_orm::sea_query::ArrayType;
use sea_orm::{DbBackend, DbErr, QueryResult, Statement, Value};

use crate::db::sql::Sql;

/// A session to extend: the new `expire` (whole seconds) and the matching
/// `cookie.expires` text.
#[derive(Debug, Clone)]
pub struct Extension {
    pub sid: String,
    pub expire_secs: i64,
    pub cookie_expires: String,
}

/// The SQL dialect of the session store, chosen once from the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    Sqlite,
}

/// PostgreSQL takes one array parameter per query; this many sessions per
/// query keeps a tick at one query per thousand sockets.
pub const PG_CHECK_CHUNK: usize = 1000;
/// SQLite's default limit on bound parameters is far above this, and
/// shorter statements prepare faster.
pub const SQLITE_CHECK_CHUNK: usize = 500;

/// What marks a session text PostgreSQL's JSON operators cannot read.
pub const NUL_ESCAPE: &str = "\\u0000";

/// `sess` as json for PostgreSQL's JSON operators, or NULL when its text
/// holds a `\u0000` escape: legal in `json`, but every JSON operator on such
/// a value fails, and one such row would fail the whole statement (every
/// socket's re-check on the node). Those rows are read as text and decoded
/// by the store instead ([`NUL_ESCAPE`]).
const PG_SESS: &str = "(CASE WHEN strpos(sess::text, '\\u0000') = 0 THEN sess::json END)";

impl Dialect {
    /// The dialect of a connection's backend: every backend but PostgreSQL
    /// is SQLite, the only other one sockgate connects to.
    pub fn of(backend: DbBackend) -> Self {
        match backend {
            DbBackend::Postgres => Self::Postgres,
            _ => Self::Sqlite,
        }
    }

    /// The backend statements are built for (and [`crate::db::sql`] speaks).
    pub fn backend(self) -> DbBackend {
        match self {
            Self::Postgres => DbBackend::Postgres,
            Self::Sqlite => DbBackend::Sqlite,
        }
    }

    /// The configured schema where there are schemas: SQLite has none.
    pub fn schema(self, schema: Option<&str>) -> Option<&str> {
        match self {
            Self::Postgres => schema,
            Self::Sqlite => None,
        }
    }

    /// How many sessions one [`Self::check_many`] statement asks for.
    pub fn check_chunk(self) -> usize {
        match self {
            Self::Postgres => PG_CHECK_CHUNK,
            Self::Sqlite => SQLITE_CHECK_CHUNK,
        }
    }

    /// Whether SQL reading `sess` as JSON skips a session whose text holds
    /// [`NUL_ESCAPE`] (PostgreSQL, see [`PG_SESS`]): its user is then
    /// unknown to the statement, and its guest lock must be asked for by
    /// the user decoded from the text.
    pub fn json_skips_nul_escape(self) -> bool {
        self == Self::Postgres
    }

    /// The JSON value at `path` in `sess` as text (a string unquoted), or
    /// NULL when there is none or `sess` is JSON that SQL cannot read.
    pub fn sess_text_at(self, path: &[&str]) -> String {
        match self {
            Self::Postgres => format!("({PG_SESS} #>> '{{{}}}')", path.join(",")),
            Self::Sqlite => format!(
                "(CASE WHEN json_valid(sess) THEN sess ->> '$.{}' END)",
                path.join(".")
            ),
        }
    }

    /// The text of [`Self::load_many`]: columns `sid`, `sess` (text),
    /// `expire_at` (read with [`Self::expire_at`]) and `guest_lock`, the
    /// column given. One text for any number of ids (an array on
    /// PostgreSQL, a JSON array on SQLite), so one prepared statement
    /// serves every batch; the store makes it once.
    pub fn load_many_text(self, table: &str, guest_lock: &str) -> String {
        match self {
            Self::Postgres => format!(
                "SELECT sid, sess::text AS sess, {}, {guest_lock} \
                 FROM {table} WHERE sid = ANY($1)",
                pg_expire_at("$2"),
            ),
            Self::Sqlite => format!(
                "SELECT sid, sess AS sess, expire AS expire_at, {guest_lock} FROM {table} \
                 WHERE sid IN (SELECT CAST(value AS TEXT) FROM json_each(?))"
            ),
        }
    }

    /// The rows of `sids`, by `text` from [`Self::load_many_text`].
    pub fn load_many(self, text: &str, sids: &[String], zone: &str) -> Statement {
        match self {
            Self::Postgres => Statement::from_sql_and_values(
                DbBackend::Postgres,
                text,
                [pg_text_array(sids.iter().map(String::as_str)), zone.into()],
            ),
            Self::Sqlite => Statement::from_sql_and_values(
                DbBackend::Sqlite,
                text,
                [serde_json::to_string(sids)
                    .expect("strings serialize")
                    .into()],
            ),
        }
    }

    /// The row's `expire_at` column as the instant the Node app means.
    pub fn expire_at(self, row: &QueryResult) -> Result<DateTime<Utc>, DbErr> {
        match self {
            Self::Postgres => row.try_get::<DateTime<Utc>>("", "expire_at"),
            // Development tables store UTC wall-clock text.
            Self::Sqlite => {
                Ok(Utc.from_utc_datetime(&row.try_get::<NaiveDateTime>("", "expire_at")?))
            }
        }
    }

    /// connect-pg-simple's `set`: insert or replace the session, `expire`
    /// written as `to_timestamp(expire_secs)` in the Node app's `zone`
    /// (PostgreSQL) or as UTC (SQLite).
    pub fn upsert(
        self,
        table: &str,
        sid: &str,
        sess_text: String,
        expire_secs: i64,
        zone: &str,
    ) -> Statement {
        match self {
            Self::Postgres => Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "INSERT INTO {table} (sess, expire, sid) \
                     SELECT CAST($1 AS json), to_timestamp($2) AT TIME ZONE $4, $3 \
                     ON CONFLICT (sid) DO UPDATE \
                     SET sess = CAST($1 AS json), expire = to_timestamp($2) AT TIME ZONE $4"
                ),
                [
                    sess_text.into(),
                    (expire_secs as f64).into(),
                    sid.into(),
                    zone.into(),
                ],
            ),
            Self::Sqlite => Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!(
                    "INSERT INTO {table} (sess, expire, sid) VALUES (?, ?, ?) \
                     ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expire = excluded.expire"
                ),
                [
                    sess_text.into(),
                    Value::from(sqlite_expire(expire_secs)),
                    sid.into(),
                ],
            ),
        }
    }

    /// connect-pg-simple's `destroy`.
    pub fn destroy(self, table: &str, sid: &str) -> Statement {
        let placeholder = match self {
            Self::Postgres => "$1",
            Self::Sqlite => "?",
        };
        Statement::from_sql_and_values(
            self.backend(),
            format!("DELETE FROM {table} WHERE sid = {placeholder}"),
            [sid.into()],
        )
    }

    /// The rows of `sids` (at most [`Self::check_chunk`]): columns `sid`,
    /// `expire_at` (read with [`Self::expire_at`]) and `sess` (its text).
    /// The JSON is read by the caller, not by SQL: each JSON path in SQL is
    /// another parse of every row on the app's database, where an index
    /// lookup and the row's text are all the check needs.
    pub fn check_many(self, table: &str, sids: &[String], zone: &str) -> Statement {
        match self {
            Self::Postgres => Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT sid, {}, sess::text AS sess \
                     FROM {table} WHERE sid = ANY($1)",
                    pg_expire_at("$2"),
                ),
                [pg_text_array(sids.iter().map(String::as_str)), zone.into()],
            ),
            Self::Sqlite => Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!(
                    "SELECT sid, expire AS expire_at, sess \
                     FROM {table} WHERE sid IN ({})",
                    vec!["?"; sids.len()].join(", ")
                ),
                sids.iter().map(|s| Value::from(s.as_str())),
            ),
        }
    }

    /// `values` as a table `u` of one text column `id`, bound as a single
    /// parameter of `sql` whatever their number (a text array on
    /// PostgreSQL, a JSON array read by `json_each` on SQLite), so a list
    /// of any length is one statement.
    pub fn text_list(self, sql: &mut Sql, values: &[&str]) -> String {
        match self {
            Self::Postgres => {
                let param = sql.bind(pg_text_array(values.iter().copied()));
                format!("unnest(CAST({param} AS text[])) AS u(id)")
            }
            Self::Sqlite => {
                let param = sql.bind(serde_json::to_string(values).expect("strings serialize"));
                format!("(SELECT CAST(value AS TEXT) AS id FROM json_each({param})) AS u")
            }
        }
    }

    /// connect-pg-simple's `touch` for `items` (not empty), to be run in
    /// order with their affected rows summed: one statement on PostgreSQL,
    /// one per session on SQLite. `expire` only moves forward, and
    /// `sess.cookie.expires` is set in SQL only where it is a string; a
    /// session PostgreSQL's JSON operators cannot read is left alone.
    pub fn extend_many(self, table: &str, items: &[Extension], zone: &str) -> Vec<Statement> {
        match self {
            Self::Postgres => {
                let array = |ty, values: Vec<Value>| Value::Array(ty, Some(Box::new(values)));
                vec![Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    format!(
                        "UPDATE {table} AS s SET \
                           expire = to_timestamp(v.exp) AT TIME ZONE $4, \
                           sess = CASE WHEN jsonb_typeof(s.sess::jsonb #> '{{cookie,expires}}') = 'string' \
                                       THEN jsonb_set(s.sess::jsonb, '{{cookie,expires}}', to_jsonb(v.iso))::json \
                                       ELSE s.sess::json END \
                         FROM unnest($1::text[], $2::float8[], $3::text[]) AS v(sid, exp, iso) \
                         WHERE s.sid = v.sid AND s.expire < (to_timestamp(v.exp) AT TIME ZONE $4) \
                           AND strpos(s.sess::text, '\\u0000') = 0"
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
                        zone.into(),
                    ],
                )]
            }
            Self::Sqlite => {
                let sql = format!(
                    "UPDATE {table} SET expire = ?, \
                       sess = CASE WHEN json_type(sess, '$.cookie.expires') = 'text' \
                                   THEN json_set(sess, '$.cookie.expires', ?) ELSE sess END \
                     WHERE sid = ? AND expire < ?"
                );
                items
                    .iter()
                    .map(|item| {
                        let expire = sqlite_expire(item.expire_secs);
                        Statement::from_sql_and_values(
                            DbBackend::Sqlite,
                            sql.clone(),
                            [
                                Value::from(expire),
                                Value::from(item.cookie_expires.as_str()),
                                Value::from(item.sid.as_str()),
                                Value::from(expire),
                            ],
                        )
                    })
                    .collect()
            }
        }
    }
}

/// `expire_secs` as SQLite's UTC wall-clock `expire`; a time chrono cannot
/// hold reads as the Unix epoch.
fn sqlite_expire(expire_secs: i64) -> NaiveDateTime {
    Utc.timestamp_opt(expire_secs, 0)
        .single()
        .unwrap_or_default()
        .naive_utc()
}

/// `values` as one PostgreSQL `text[]` parameter.
fn pg_text_array<'a>(values: impl Iterator<Item = &'a str>) -> Value {
    Value::Array(
        ArrayType::String,
        Some(Box::new(values.map(Value::from).collect())),
    )
}

/// `expire` as the instant the Node app means (`$zone` is the parameter
/// with the zone), clamped to a range every driver decodes: `infinity` is
/// a legal timestamp and would fail the row's decoding.
fn pg_expire_at(zone_param: &str) -> String {
    format!(
        "(LEAST(GREATEST(expire, '1970-01-01'::timestamp), '9999-12-31'::timestamp) AT TIME ZONE {zone_param}) AS expire_at"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(stmt: &Statement) -> Vec<Value> {
        stmt.values.clone().map(|v| v.0).unwrap_or_default()
    }

    fn extension(sid: &str, expire_secs: i64) -> Extension {
        Extension {
            sid: sid.to_owned(),
            expire_secs,
            cookie_expires: "2030-01-01T00:00:00.000Z".to_owned(),
        }
    }

    #[test]
    fn chosen_from_the_backend_with_anything_else_as_sqlite() {
        assert_eq!(Dialect::of(DbBackend::Postgres), Dialect::Postgres);
        assert_eq!(Dialect::of(DbBackend::Sqlite), Dialect::Sqlite);
        assert_eq!(Dialect::of(DbBackend::MySql), Dialect::Sqlite);
        assert_eq!(Dialect::Postgres.backend(), DbBackend::Postgres);
        assert_eq!(Dialect::Sqlite.backend(), DbBackend::Sqlite);
    }

    #[test]
    fn only_postgres_has_schemas() {
        assert_eq!(Dialect::Postgres.schema(Some("app")), Some("app"));
        assert_eq!(Dialect::Sqlite.schema(Some("app")), None);
        assert_eq!(Dialect::Postgres.check_chunk(), PG_CHECK_CHUNK);
        assert_eq!(Dialect::Sqlite.check_chunk(), SQLITE_CHECK_CHUNK);
    }

    #[test]
    fn sess_paths_read_as_text_or_null() {
        assert_eq!(
            Dialect::Postgres.sess_text_at(&["passport", "user", "id"]),
            format!("({PG_SESS} #>> '{{passport,user,id}}')")
        );
        assert_eq!(
            Dialect::Sqlite.sess_text_at(&["passport", "user"]),
            "(CASE WHEN json_valid(sess) THEN sess ->> '$.passport.user' END)"
        );
    }

    #[test]
    fn postgres_names_the_zone_in_every_expire_it_reads_or_writes() {
        let sids = ["s1".to_owned(), "s2".to_owned()];
        let text = Dialect::Postgres.load_many_text("\"session\"", "NULL AS guest_lock");
        let load = Dialect::Postgres.load_many(&text, &sids, "Europe/Berlin");
        assert!(
            load.sql.contains("AT TIME ZONE $2) AS expire_at"),
            "{}",
            load.sql
        );
        assert!(
            load.sql.ends_with("FROM \"session\" WHERE sid = ANY($1)"),
            "{}",
            load.sql
        );
        assert_eq!(values(&load).len(), 2);
        assert_eq!(values(&load)[1], Value::from("Europe/Berlin"));

        let upsert = Dialect::Postgres.upsert("\"session\"", "s1", "{}".to_owned(), 60, "UTC");
        assert_eq!(
            upsert
                .sql
                .matches("to_timestamp($2) AT TIME ZONE $4")
                .count(),
            2
        );
        assert_eq!(
            values(&upsert),
            vec![
                Value::from("{}"),
                Value::from(60.0),
                Value::from("s1"),
                Value::from("UTC")
            ]
        );

        let touch = Dialect::Postgres.extend_many(
            "\"session\"",
            &[extension("a", 1), extension("b", 2)],
            "UTC",
        );
        assert_eq!(touch.len(), 1, "one statement for every session");
        assert!(
            touch[0]
                .sql
                .contains("s.expire < (to_timestamp(v.exp) AT TIME ZONE $4)")
        );
        assert_eq!(values(&touch[0]).len(), 4);
    }

    #[test]
    fn sqlite_binds_utc_wall_clock_and_no_zone() {
        let text = Dialect::Sqlite.load_many_text("\"session\"", "NULL AS guest_lock");
        let load = Dialect::Sqlite.load_many(&text, &["s1".to_owned()], "Europe/Berlin");
        assert_eq!(
            load.sql,
            "SELECT sid, sess AS sess, expire AS expire_at, NULL AS guest_lock FROM \"session\" \
             WHERE sid IN (SELECT CAST(value AS TEXT) FROM json_each(?))"
        );
        assert_eq!(values(&load), vec![Value::from("[\"s1\"]")]);

        let upsert = Dialect::Sqlite.upsert(
            "\"session\"",
            "s1",
            "{}".to_owned(),
            86_400,
            "Europe/Berlin",
        );
        let day_one =
            NaiveDateTime::parse_from_str("1970-01-02 00:00:00", "%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(
            values(&upsert),
            vec![Value::from("{}"), Value::from(day_one), Value::from("s1")]
        );

        let touch = Dialect::Sqlite.extend_many(
            "\"session\"",
            &[extension("a", 1), extension("b", 2)],
            "UTC",
        );
        assert_eq!(touch.len(), 2, "one statement per session");
        assert!(
            touch
                .iter()
                .all(|s| s.sql.ends_with("WHERE sid = ? AND expire < ?"))
        );
    }

    #[test]
    fn an_expire_chrono_cannot_hold_reads_as_the_epoch() {
        assert_eq!(sqlite_expire(i64::MAX), NaiveDateTime::default());
        assert_eq!(
            Utc.from_utc_datetime(&sqlite_expire(1_700_000_000))
                .timestamp(),
            1_700_000_000
        );
    }

    #[test]
    fn checks_bind_one_array_or_one_placeholder_per_session() {
        let sids = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let pg = Dialect::Postgres.check_many("\"session\"", &sids, "UTC");
        assert!(pg.sql.ends_with("WHERE sid = ANY($1)"), "{}", pg.sql);
        assert_eq!(values(&pg).len(), 2);

        let sqlite = Dialect::Sqlite.check_many("\"session\"", &sids, "UTC");
        assert!(
            sqlite.sql.ends_with("WHERE sid IN (?, ?, ?)"),
            "{}",
            sqlite.sql
        );
        // The app's database looks rows up; the JSON is read in sockgate.
        for sql in [&pg.sql, &sqlite.sql] {
            assert!(!sql.contains("->") && !sql.contains("json"), "{sql}");
        }
        assert_eq!(values(&sqlite).len(), 3);
    }

    #[test]
    fn a_text_list_is_one_parameter_whatever_its_length() {
        let mut pg = Sql::new(DbBackend::Postgres);
        let from = Dialect::Postgres.text_list(&mut pg, &["7", "x"]);
        assert_eq!(from, "unnest(CAST($1 AS text[])) AS u(id)");
        assert_eq!(values(&pg.build()).len(), 1);

        let mut sqlite = Sql::new(DbBackend::Sqlite);
        let from = Dialect::Sqlite.text_list(&mut sqlite, &["7", "x\"y"]);
        assert_eq!(
            from,
            "(SELECT CAST(value AS TEXT) AS id FROM json_each(?1)) AS u"
        );
        assert_eq!(
            values(&sqlite.build()),
            vec![Value::from(r#"["7","x\"y"]"#)]
        );
    }

    #[test]
    fn destroy_uses_the_backends_placeholder() {
        assert_eq!(
            Dialect::Postgres.destroy("\"s\"", "x").sql,
            "DELETE FROM \"s\" WHERE sid = $1"
        );
        assert_eq!(
            Dialect::Sqlite.destroy("\"s\"", "x").sql,
            "DELETE FROM \"s\" WHERE sid = ?"
        );
    }
}
