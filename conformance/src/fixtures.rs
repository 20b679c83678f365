//! The rows the suite writes into the deployment's database, through
//! sockgate's own code (connect-pg-simple's SQL for sessions, the
//! deployment's table mapping for guests and members), and removes again.
//!
//! Every user id is `conformance-<run>-<role>` and every organization is
//! named `conformance-<run>`, so a run interrupted before its clean-up
//! leaves rows that say where they came from (integer and UUID user ids are
//! derived from that text). Row ids are assigned by the database where it
//! can; every row written is recorded and exactly those rows are deleted.

use std::sync::Mutex;
use std::time::Duration;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use serde_json::Value;
use sha2::Digest;

use super::rows::{Fill, RowWriter};
use sockgate::db::IdKind;
use sockgate::db::Tables;

use sockgate::Config;
use sockgate::db::Database;
use sockgate::session::Secrets;
use sockgate::session::SessionStore;
use sockgate::session::UserId;

/// The prefix of every user id (and organization name) the suite creates.
pub const PREFIX: &str = "conformance-";

/// A session the suite wrote.
#[derive(Clone, Debug)]
pub struct Session {
    pub sid: String,
    /// `s:<sid>.<signature>`, what `auth.sessionId` carries.
    pub signed: String,
    /// The whole `Cookie` header value: `<name>=<URL-encoded signed value>`.
    pub cookie: String,
    /// `expire`, in Unix seconds.
    pub expire_secs: i64,
}

/// An organization with an admin and guests, for the guest-lock cases.
#[derive(Clone, Debug)]
pub struct GuestOrg {
    pub organization_id: String,
    pub admin: Session,
    pub guests: Vec<Guest>,
}

#[derive(Clone, Debug)]
pub struct Guest {
    pub id: String,
    pub user: String,
    pub session: Session,
}

#[derive(Default)]
struct Created {
    sids: Vec<String>,
}

pub struct Fixtures {
    config: Config,
    db: Database,
    store: SessionStore,
    secrets: Secrets,
    /// A short random tag of this run.
    pub run: String,
    created: Mutex<Created>,
    /// Guests, members and audit rows as the deployment maps them.
    pub tables: Arc<Tables>,
    rows: tokio::sync::Mutex<RowWriter>,
}

fn schema_of(schema: &Option<String>) -> Option<&str> {
    schema.as_deref()
}

impl Fixtures {
    /// Connects to the deployment's database (in the Node app's time zone
    /// on PostgreSQL, exactly as the server does) and checks that the
    /// session table is there. Creates nothing.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let db = sockgate::db::connect(config).await?;
        sockgate::db::verify_session_table(
            &db.conn,
            config.session_schema.as_deref(),
            &config.session_table,
        )
        .await?;
        let tables = Arc::new(sockgate::db::check_tables(config, &db).await?);
        let store = SessionStore::new(
            &db,
            config.session_schema.as_deref(),
            &config.session_table,
            Some(tables.clone()),
        );
        let run = sockgate::session::new_sid()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(10)
            .collect::<String>()
            .to_ascii_lowercase();
        let rows = RowWriter::new(db.conn.clone(), format!("{PREFIX}{run}"));
        Ok(Self {
            secrets: Secrets::of(config)?,
            config: config.clone(),
            db,
            store,
            run,
            created: Mutex::default(),
            tables,
            rows: tokio::sync::Mutex::new(rows),
        })
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.db.conn
    }

    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    fn created(&self) -> std::sync::MutexGuard<'_, Created> {
        self.created.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A user id of this run: `conformance-<run>-<role>`, or where the
    /// mapped user ids are integers or UUIDs, one of that type derived from
    /// the run and the role (far above the ids an app hands out).
    pub fn user(&self, role: &str) -> String {
        let text = format!("{PREFIX}{}-{role}", self.run);
        let digest = sha2::Sha256::digest(text.as_bytes());
        match self.tables.guests.user_id.id_kind() {
            IdKind::Text => text,
            IdKind::Integer => {
                let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
                (2_000_000_000 + i64::from(n % 147_000_000)).to_string()
            }
            IdKind::Uuid => {
                let h = hex::encode(&digest[..16]);
                format!(
                    "{}-{}-4{}-8{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[13..16],
                    &h[17..20],
                    &h[20..32]
                )
            }
        }
    }

    /// `s:<sid>.<signature>` with the deployment's first secret.
    pub fn sign(&self, sid: &str) -> String {
        format!("s:{}", self.secrets.sign(sid))
    }

    /// A whole `Cookie` header value carrying `signed`.
    pub fn cookie(&self, signed: &str) -> String {
        format!(
            "{}={}",
            self.config.cookie_name,
            sockgate::session::cookie_value(signed)
        )
    }

    fn session(&self, sid: String, expire_secs: i64) -> Session {
        let signed = self.sign(&sid);
        Session {
            cookie: self.cookie(&signed),
            signed,
            sid,
            expire_secs,
        }
    }

    /// A logged-in session for `user`, written as express-session +
    /// passport + connect-pg-simple write one after a login
    /// (`session_mint::mint_session`).
    pub async fn logged_in(&self, user: &str, ttl: Duration) -> Result<Session, String> {
        let minted =
            sockgate::session::mint_session(&self.store, &self.secrets, &UserId::new(user), ttl)
                .await
                .map_err(|e| format!("writing a session row: {e:#}"))?;
        self.created().sids.push(minted.sid.clone());
        Ok(self.session(minted.sid, minted.expires_at.timestamp()))
    }

    /// Any session row, written with connect-pg-simple's `set`.
    pub async fn raw(&self, sess: &Value, expire_secs: i64) -> Result<Session, String> {
        let sid = sockgate::session::new_sid();
        self.created().sids.push(sid.clone());
        self.store
            .upsert(&sid, sess, expire_secs)
            .await
            .map_err(|e| format!("writing a session row: {e}"))?;
        Ok(self.session(sid, expire_secs))
    }

    /// Deletes a session row (connect-pg-simple's `destroy`, i.e. logout).
    pub async fn destroy(&self, sid: &str) -> Result<(), String> {
        self.store
            .destroy(sid)
            .await
            .map_err(|e| format!("deleting a session row: {e}"))
    }

    /// `expire` of a session as the server reads it, `None` when the row
    /// is gone.
    pub async fn expire_of(&self, sid: &str) -> Result<Option<i64>, String> {
        let row = self
            .store
            .load(sid)
            .await
            .map_err(|e| format!("reading a session row: {e}"))?;
        Ok(row.map(|r| r.expire_at.timestamp()))
    }

    /// An organization with an admin member and `guests` guests, each user
    /// with a logged-in session, written through the deployment's mapping
    /// (the app's tables, or sockgate's own): whatever else those rows need
    /// (a user row, an organization row, required columns) is made up and
    /// removed again at the end.
    pub async fn guest_org(&self, guests: usize) -> Result<GuestOrg, String> {
        let tables = self.tables.clone();
        let (g, m) = (&tables.guests, &tables.members);
        let admin_role = m
            .admin_roles
            .first()
            .cloned()
            .ok_or("the member mapping names no admin role")?;
        let guest_schema = schema_of(&g.table_schema);
        let member_schema = schema_of(&m.table_schema);
        let mut rows = self.rows.lock().await;
        // The organization: a row where the guest table's foreign key
        // points, else an id of the column's type nobody uses.
        let fks = sockgate::db::foreign_keys(self.conn(), guest_schema, &g.table_name)
            .await
            .map_err(|e| format!("{}: {e}", g.table))?;
        let org = match fks.iter().find(|k| k.column == g.organization_id.name) {
            Some(fk) => {
                rows.insert(
                    fk.ref_schema.as_deref(),
                    &fk.ref_table,
                    Vec::new(),
                    &fk.ref_column,
                )
                .await?
            }
            None => match g.organization_id.id_kind() {
                IdKind::Integer => super::rows::random_int().to_string(),
                IdKind::Uuid => sockgate::db::new_uuid(),
                IdKind::Text => format!("{PREFIX}{}", self.run),
            },
        };

        let admin_user = self.user("admin");
        rows.insert(
            member_schema,
            &m.table_name,
            vec![
                (m.user_id.name.clone(), Fill::Text(admin_user.clone())),
                (m.organization_id.name.clone(), Fill::Text(org.clone())),
                (m.role.name.clone(), Fill::Text(admin_role)),
            ],
            &m.user_id.name,
        )
        .await?;
        drop(rows);
        let admin = self
            .logged_in(&admin_user, Duration::from_secs(3600))
            .await?;

        let mut list = Vec::new();
        for n in 0..guests {
            let user = self.user(&format!("guest{n}"));
            let id = self
                .rows
                .lock()
                .await
                .insert(
                    guest_schema,
                    &g.table_name,
                    vec![
                        (g.user_id.name.clone(), Fill::Text(user.clone())),
                        (g.organization_id.name.clone(), Fill::Text(org.clone())),
                        (g.soft_locked.name.clone(), Fill::Bool(false)),
                    ],
                    &g.id.name,
                )
                .await?;
            let session = self.logged_in(&user, Duration::from_secs(3600)).await?;
            list.push(Guest { id, user, session });
        }
        Ok(GuestOrg {
            organization_id: org,
            admin,
            guests: list,
        })
    }

    /// Deletes everything this run wrote: its sessions, then its guest,
    /// member, user and organization rows. Returns what could not be
    /// removed (the whole list is always attempted).
    pub async fn cleanup(&self) -> Result<(), String> {
        let created = std::mem::take(&mut *self.created());
        let mut problems = Vec::new();
        for sid in &created.sids {
            if let Err(e) = self.store.destroy(sid).await {
                problems.push(format!("session row: {e}"));
            }
        }
        problems.extend(self.rows.lock().await.delete_all().await);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "clean-up incomplete (rows of run {} are prefixed {PREFIX}{}): {}",
                self.run,
                self.run,
                problems.join("; ")
            ))
        }
    }
}
