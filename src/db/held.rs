//! One of the pool's connections, kept by a task that sends statement after
//! statement (the session lookups' batches under load). sqlx pings a
//! connection every time it hands one out and every time it takes one back
//! (`test_before_acquire`, and a return ping that cannot be turned off):
//! two round trips to the server around each statement, each as dear as
//! the statement's own, each waking the server's backend and then this
//! process again. Kept across a run of statements, the connection is
//! pinged once on the way out and once on the way back, per run.
//!
//! Given back after [`MAX_USES`] statements, or at once when nothing is
//! left in the pool for anyone else, so that a run that never ends (a
//! handshake storm) does not keep the rest of the server waiting on a small
//! pool; and after any error: a connection a statement failed on is left to
//! the pool's ping (or its close) to judge.

use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult, RuntimeErr,
    Statement,
};
use sqlx::pool::PoolConnection;
use sqlx::{Postgres, Sqlite};

/// Statements sent on one checkout before it goes back to the pool.
pub const MAX_USES: u32 = 32;

enum Conn {
    Postgres(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
}

/// A connection borrowed on the first statement and kept for the next,
/// until [`MAX_USES`], an error or the drop.
pub struct Held {
    db: DatabaseConnection,
    conn: Option<Conn>,
    uses: u32,
}

impl Held {
    /// Borrows nothing yet: the first statement does.
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            conn: None,
            uses: 0,
        }
    }

    /// The rows of `stmt`, a statement whose text recurs (it stays prepared
    /// on the connection, as sea-orm's own queries do).
    pub async fn query_all(&mut self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        if !matches!(
            self.db.get_database_backend(),
            DbBackend::Postgres | DbBackend::Sqlite
        ) {
            return self.db.query_all_raw(stmt).await;
        }
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.acquire().await?,
        };
        let (sql, values) = crate::db::sql::for_sqlx(stmt);
        let (conn, rows) = match conn {
            Conn::Postgres(mut c) => {
                let rows = sqlx::query_with(sql, values).fetch_all(&mut *c).await;
                let rows = rows.map(|rows| rows.into_iter().map(QueryResult::from).collect());
                (Conn::Postgres(c), rows)
            }
            Conn::Sqlite(mut c) => {
                let rows = sqlx::query_with(sql, values).fetch_all(&mut *c).await;
                let rows = rows.map(|rows| rows.into_iter().map(QueryResult::from).collect());
                (Conn::Sqlite(c), rows)
            }
        };
        self.uses += 1;
        if rows.is_ok() && self.uses < MAX_USES && self.pool_has_room() {
            self.conn = Some(conn);
        } else {
            // Back to the pool, which pings it before anyone borrows it.
            drop(conn);
            self.uses = 0;
        }
        rows.map_err(|e| DbErr::Query(RuntimeErr::SqlxError(e.into())))
    }

    /// Whether another borrower would find a connection without this one:
    /// one idle, or room to open one.
    fn pool_has_room(&self) -> bool {
        fn room<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> bool {
            pool.num_idle() > 0 || pool.size() < pool.options().get_max_connections()
        }
        match self.db.get_database_backend() {
            DbBackend::Postgres => room(self.db.get_postgres_connection_pool()),
            _ => room(self.db.get_sqlite_connection_pool()),
        }
    }

    async fn acquire(&self) -> Result<Conn, DbErr> {
        let conn = match self.db.get_database_backend() {
            DbBackend::Postgres => self
                .db
                .get_postgres_connection_pool()
                .acquire()
                .await
                .map(Conn::Postgres),
            _ => self
                .db
                .get_sqlite_connection_pool()
                .acquire()
                .await
                .map(Conn::Sqlite),
        };
        // As sea-orm reports a checkout that fails.
        conn.map_err(|e| match e {
            sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
            sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
            e => DbErr::Conn(RuntimeErr::SqlxError(e.into())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn sqlite(max: u32) -> DatabaseConnection {
        let mut config = crate::config::Config::for_database("sqlite::memory:");
        config.db_max_connections = max;
        crate::db::connect::connect(&config).await.unwrap().conn
    }

    fn select(n: i64) -> Statement {
        Statement::from_sql_and_values(DbBackend::Sqlite, "SELECT ?1 AS n", [n.into()])
    }

    /// Waits until the pool has `want` (open, idle) connections: a
    /// connection given back goes through the pool's return, a task of its
    /// own. What it had after 5 s otherwise.
    async fn pool(db: &DatabaseConnection, want: (u32, usize)) -> (u32, usize) {
        let pool = db.get_sqlite_connection_pool();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = (pool.size(), pool.num_idle());
            if now == want || tokio::time::Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The pool's (open, idle) connections once a return that was going to
    /// happen has had time to.
    async fn settled(db: &DatabaseConnection) -> (u32, usize) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pool = db.get_sqlite_connection_pool();
        (pool.size(), pool.num_idle())
    }

    #[tokio::test]
    async fn one_connection_serves_a_run_and_goes_back_after_max_uses_an_error_or_the_drop() {
        let db = sqlite(4).await;
        let mut held = Held::new(db.clone());
        for n in 0..3 {
            let rows = held.query_all(select(n)).await.unwrap();
            assert_eq!(rows[0].try_get::<i64>("", "n").unwrap(), n);
        }
        assert_eq!(
            settled(&db).await,
            (1, 0),
            "three statements, one connection, kept"
        );

        for n in 3..i64::from(MAX_USES) {
            held.query_all(select(n)).await.unwrap();
        }
        assert_eq!(
            pool(&db, (1, 1)).await,
            (1, 1),
            "given back after {MAX_USES}"
        );
        held.query_all(select(0)).await.unwrap();
        assert_eq!(settled(&db).await, (1, 0), "borrowed again for the next");

        let err = held
            .query_all(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT * FROM nowhere",
            ))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
        assert_eq!(pool(&db, (1, 1)).await, (1, 1), "given back after an error");

        held.query_all(select(0)).await.unwrap();
        drop(held);
        assert_eq!(pool(&db, (1, 1)).await, (1, 1), "given back on the drop");
    }

    #[tokio::test]
    async fn the_last_connection_is_given_back_after_each_statement() {
        let db = sqlite(1).await;
        let mut held = Held::new(db.clone());
        held.query_all(select(1)).await.unwrap();
        assert_eq!(
            pool(&db, (1, 1)).await,
            (1, 1),
            "nothing left for anyone else"
        );
        // The next borrower gets it at once, while the run goes on.
        let mut other = Held::new(db.clone());
        let rows = tokio::time::timeout(Duration::from_secs(1), other.query_all(select(2))).await;
        assert!(rows.expect("not kept waiting").is_ok());
        held.query_all(select(3)).await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_pool_is_a_failed_checkout_as_sea_orm_reports_it() {
        let db = sqlite(1).await;
        db.close_by_ref().await.unwrap();
        let err = Held::new(db).query_all(select(1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed)
            ),
            "{err:?}"
        );
    }
}
