//! The rows the suite writes into the deployment's database, through
//! sockgate's own code (connect-pg-simple's SQL for sessions, the entities
//! for guests), and removes again.
//!
//! Every user id is `conformance-<run>-<role>` and every organization is
//! named `conformance-<run>`, so a run interrupted before its clean-up
//! leaves rows that say where they came from. Organization, member and
//! guest ids are assigned by the database (no reserved range could be
//! guaranteed free in someone else's tables); the ids are recorded and
//! exactly those rows are deleted.

use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use entity::{app_user, guest, member, organization};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use serde_json::Value;

use crate::config::Config;
use crate::db::Database;
use crate::server;
use crate::session::UserId;
use crate::session_store::SessionStore;
use crate::signature::Secrets;

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
    pub organization_id: i64,
    pub admin: Session,
    pub guests: Vec<Guest>,
}

#[derive(Clone, Debug)]
pub struct Guest {
    pub id: i64,
    pub user: String,
    pub session: Session,
}

#[derive(Default)]
struct Created {
    sids: Vec<String>,
    users: Vec<String>,
    organizations: Vec<i64>,
    members: Vec<i64>,
    guests: Vec<i64>,
}

pub struct Fixtures {
    config: Config,
    db: Database,
    store: SessionStore,
    secrets: Secrets,
    /// A short random tag of this run.
    pub run: String,
    created: Mutex<Created>,
}

fn db_err(what: &str) -> impl Fn(sea_orm::DbErr) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Fixtures {
    /// Connects to the deployment's database (in the Node app's time zone
    /// on PostgreSQL, exactly as the server does) and checks that the
    /// session table is there. Creates nothing.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let db = crate::db::connect(config).await?;
        crate::db::verify_session_table(
            &db.conn,
            config.session_schema.as_deref(),
            &config.session_table,
        )
        .await?;
        let store = SessionStore::new(&db, config.session_schema.as_deref(), &config.session_table);
        let run = server::new_sid()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(10)
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(Self {
            secrets: config.secrets()?,
            config: config.clone(),
            db,
            store,
            run,
            created: Mutex::default(),
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

    /// A user id of this run: `conformance-<run>-<role>`.
    pub fn user(&self, role: &str) -> String {
        format!("{PREFIX}{}-{role}", self.run)
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
            server::cookie_value(signed)
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
    /// (`server::mint_session`).
    pub async fn logged_in(&self, user: &str, ttl: Duration) -> Result<Session, String> {
        let minted = server::mint_session(&self.store, &self.secrets, &UserId::new(user), ttl)
            .await
            .map_err(|e| format!("writing a session row: {e:#}"))?;
        self.created().sids.push(minted.sid.clone());
        Ok(self.session(minted.sid, minted.expires_at.timestamp()))
    }

    /// Any session row, written with connect-pg-simple's `set`.
    pub async fn raw(&self, sess: &Value, expire_secs: i64) -> Result<Session, String> {
        let sid = server::new_sid();
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

    async fn add_user(&self, id: &str) -> Result<(), String> {
        self.created().users.push(id.to_owned());
        app_user::Entity::insert(app_user::ActiveModel {
            id: Set(id.to_owned()),
            username: Set(id.to_owned()),
            created_at: Set(Utc::now()),
        })
        .exec_without_returning(self.conn())
        .await
        .map_err(db_err("inserting app_user"))?;
        Ok(())
    }

    /// An organization `conformance-<run>` with an admin member and
    /// `guests` guests, each user with a logged-in session.
    pub async fn guest_org(&self, guests: usize) -> Result<GuestOrg, String> {
        let now = Utc::now();
        let org = organization::Entity::insert(organization::ActiveModel {
            name: Set(format!("{PREFIX}{}", self.run)),
            created_at: Set(now),
            ..Default::default()
        })
        .exec(self.conn())
        .await
        .map_err(db_err("inserting organization"))?
        .last_insert_id;
        self.created().organizations.push(org);

        let admin_user = self.user("admin");
        self.add_user(&admin_user).await?;
        let member_id = member::Entity::insert(member::ActiveModel {
            organization_id: Set(org),
            user_id: Set(admin_user.clone()),
            role: Set(member::ROLE_ADMIN.to_owned()),
            ..Default::default()
        })
        .exec(self.conn())
        .await
        .map_err(db_err("inserting member"))?
        .last_insert_id;
        self.created().members.push(member_id);
        let admin = self
            .logged_in(&admin_user, Duration::from_secs(3600))
            .await?;

        let mut list = Vec::new();
        for n in 0..guests {
            let user = self.user(&format!("guest{n}"));
            self.add_user(&user).await?;
            let id = guest::Entity::insert(guest::ActiveModel {
                user_id: Set(user.clone()),
                organization_id: Set(org),
                soft_locked: Set(false),
                locked_at: Set(None),
                lock_reason: Set(None),
                created_at: Set(now),
                ..Default::default()
            })
            .exec(self.conn())
            .await
            .map_err(db_err("inserting guest"))?
            .last_insert_id;
            self.created().guests.push(id);
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
        let conn = self.conn();
        if !created.guests.is_empty()
            && let Err(e) = guest::Entity::delete_many()
                .filter(guest::Column::Id.is_in(created.guests.clone()))
                .exec(conn)
                .await
        {
            problems.push(format!("guest rows: {e}"));
        }
        if !created.members.is_empty()
            && let Err(e) = member::Entity::delete_many()
                .filter(member::Column::Id.is_in(created.members.clone()))
                .exec(conn)
                .await
        {
            problems.push(format!("member rows: {e}"));
        }
        if !created.users.is_empty()
            && let Err(e) = app_user::Entity::delete_many()
                .filter(app_user::Column::Id.is_in(created.users.clone()))
                .exec(conn)
                .await
        {
            problems.push(format!("app_user rows: {e}"));
        }
        if !created.organizations.is_empty()
            && let Err(e) = organization::Entity::delete_many()
                .filter(organization::Column::Id.is_in(created.organizations.clone()))
                .exec(conn)
                .await
        {
            problems.push(format!("organization rows: {e}"));
        }
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
