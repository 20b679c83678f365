//! Soft-locked guests: the rules (who may lock whom, what the client is
//! told), the rows behind them, in the app's tables through the mapping or in
//! sockgate's own ([`crate::db::tables`]), and the admin's use case
//! ([`authorize`], then [`lock_and_disconnect`]); the HTTP route in `admin`
//! only parses and answers. The route and the session watcher both end a
//! guest's sockets through [`disconnect_user`]. Knows nothing of HTTP or
//! Socket.IO: sockets end through `live::fleet`.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr};
use serde_json::json;

use crate::db::catalog::Kind;
use crate::db::sql::{Sql, as_id};
use crate::db::tables::{Col, Tables};

use crate::audit::event::{Client, Event, Events, GuestLockOutcome};
use crate::live::fleet::{FleetCell, FleetError, Notice, Scope};
use crate::session::rules::UserId;

pub const GUEST_LOCKED_EVENT: &str = "guest:locked";
pub const DEFAULT_REASON: &str = "Your guest access has been revoked by an admin";
/// Longer reasons are refused: the message is shown to the guest and kept
/// in the guest row and the audit log.
pub const MAX_REASON_CHARS: usize = 500;

/// `guest:locked`'s payload: a stable code and the words the guest is shown.
pub fn locked_notice(message: &str) -> Notice {
    Notice {
        event: GUEST_LOCKED_EVENT,
        payload: json!({ "reason": "soft_locked", "message": message }),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReasonError {
    #[error("reason must be at most {MAX_REASON_CHARS} characters")]
    TooLong,
    #[error("reason must not contain control characters")]
    ControlCharacters,
}

/// The message a locked guest is shown: the admin's reason, trimmed, or the
/// default when none (or only whitespace) was given.
pub fn lock_message(reason: Option<&str>) -> Result<String, ReasonError> {
    let Some(reason) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(DEFAULT_REASON.to_owned());
    };
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ReasonError::TooLong);
    }
    if reason.chars().any(char::is_control) {
        return Err(ReasonError::ControlCharacters);
    }
    Ok(reason.to_owned())
}

/// A guest row as the admin route needs it, ids as text whatever their
/// column types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRow {
    pub id: String,
    pub user_id: String,
    pub organization_id: String,
    pub soft_locked: bool,
}

/// The guest with id `id` (the route's path text, compared in the id
/// column's own type: a text that is no id of that type finds nothing).
pub async fn find(
    db: &DatabaseConnection,
    tables: &Tables,
    id: &str,
) -> Result<Option<GuestRow>, DbErr> {
    let g = &tables.guests;
    let mut sql = Sql::new(tables.backend);
    let id_param = sql.bind(id);
    let text = |c: &str| format!("CAST({c} AS TEXT)");
    sql.text = format!(
        "SELECT {id} AS id, {user} AS user_id, {org} AS organization_id, \
                CASE WHEN {locked} IS TRUE THEN 1 ELSE 0 END AS soft_locked \
         FROM {table} WHERE {id_col} = {param} LIMIT 1",
        id = text(&g.id.q),
        user = text(&g.user_id.q),
        org = text(&g.organization_id.q),
        locked = g.soft_locked.q,
        table = g.table,
        id_col = g.id.q,
        param = as_id(tables.backend, g.id.id_kind(), &id_param),
    );
    let Some(row) = db.query_one_raw(sql.build()).await? else {
        return Ok(None);
    };
    Ok(Some(GuestRow {
        id: row.try_get("", "id")?,
        user_id: row.try_get("", "user_id")?,
        organization_id: row.try_get("", "organization_id")?,
        soft_locked: row.try_get::<i32>("", "soft_locked")? != 0,
    }))
}

/// `m.role` among the admin roles, with the roles bound.
fn admin_role_filter(sql: &mut Sql, tables: &Tables, alias: &str) -> String {
    let m = &tables.members;
    let roles: Vec<String> = m.admin_roles.iter().map(|r| sql.bind(r.as_str())).collect();
    format!(
        "CAST({alias}.{} AS TEXT) IN ({})",
        m.role.q,
        roles.join(", ")
    )
}

/// Whether `user` is an admin of any organization: who is not cannot learn
/// which guest ids exist.
pub async fn is_admin_anywhere(
    db: &DatabaseConnection,
    tables: &Tables,
    user: &UserId,
) -> Result<bool, DbErr> {
    let m = &tables.members;
    let mut sql = Sql::new(tables.backend);
    let user_param = sql.bind(user.as_str());
    let roles = admin_role_filter(&mut sql, tables, "m");
    sql.text = format!(
        "SELECT 1 AS one FROM {table} m WHERE m.{user_col} = {user} AND {roles} LIMIT 1",
        table = m.table,
        user_col = m.user_id.q,
        user = as_id(tables.backend, m.user_id.id_kind(), &user_param),
    );
    Ok(db.query_one_raw(sql.build()).await?.is_some())
}

/// Whether `user` is an admin member of the organization of guest `guest`.
pub async fn is_admin_of(
    db: &DatabaseConnection,
    tables: &Tables,
    user: &UserId,
    guest: &GuestRow,
) -> Result<bool, DbErr> {
    let (g, m) = (&tables.guests, &tables.members);
    let mut sql = Sql::new(tables.backend);
    let guest_param = sql.bind(guest.id.as_str());
    let user_param = sql.bind(user.as_str());
    let roles = admin_role_filter(&mut sql, tables, "m");
    sql.text = format!(
        "SELECT 1 AS one FROM {members} m JOIN {guests} g ON m.{m_org} = g.{g_org} \
         WHERE g.{g_id} = {guest} AND m.{m_user} = {user} AND {roles} LIMIT 1",
        members = m.table,
        guests = g.table,
        m_org = m.organization_id.q,
        g_org = g.organization_id.q,
        g_id = g.id.q,
        guest = as_id(tables.backend, g.id.id_kind(), &guest_param),
        m_user = m.user_id.q,
        user = as_id(tables.backend, m.user_id.id_kind(), &user_param),
    );
    Ok(db.query_one_raw(sql.build()).await?.is_some())
}

/// Sets the guest's soft-lock flag (and reason and time where mapped).
/// Idempotent: a guest already locked (by an earlier call, or by the app
/// itself) keeps the time and reason of that lock. Returns whether this
/// call locked it.
pub async fn lock(
    db: &DatabaseConnection,
    tables: &Tables,
    guest: &GuestRow,
    reason: &str,
) -> Result<bool, DbErr> {
    if guest.soft_locked {
        return Ok(false);
    }
    let g = &tables.guests;
    let mut sql = Sql::new(tables.backend);
    let mut sets = vec![format!("{} = TRUE", g.soft_locked.q)];
    if let Some(col) = &g.lock_reason {
        let reason = sql.bind(reason);
        sets.push(format!("{} = {reason}", col.q));
    }
    if let Some(col) = &g.locked_at {
        sets.push(format!("{} = {}", col.q, now_for(tables, col, &mut sql)));
    }
    let id_param = sql.bind(guest.id.as_str());
    // Conditional, so two admins locking at once record one lock.
    sql.text = format!(
        "UPDATE {table} SET {sets} WHERE {id} = {param} AND {locked} IS NOT TRUE",
        table = g.table,
        sets = sets.join(", "),
        id = g.id.q,
        param = as_id(tables.backend, g.id.id_kind(), &id_param),
        locked = g.soft_locked.q,
    );
    Ok(db.execute_raw(sql.build()).await?.rows_affected() > 0)
}

/// The current time as a value for `col`: a `timestamp without time zone`
/// holds the Node app's zone (as connect-pg-simple's `expire` does), an
/// SQLite integer column Unix seconds, SQLite text ISO 8601 UTC.
pub fn now_for(tables: &Tables, col: &Col, sql: &mut Sql) -> String {
    match (tables.backend, col.kind) {
        (DbBackend::Postgres, Kind::Timestamp) => {
            let zone = sql.bind(tables.zone.as_str());
            format!("(now() AT TIME ZONE {zone})")
        }
        (DbBackend::Postgres, _) => "now()".to_owned(),
        (_, Kind::Integer) => "CAST(strftime('%s', 'now') AS INTEGER)".to_owned(),
        _ => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')".to_owned(),
    }
}

/// Ends every socket of `user` in `scope`: `guest:locked` with `message`
/// first, then the close. Returns how many sockets there were.
pub async fn disconnect_user(
    fleet: &FleetCell,
    user: &UserId,
    message: &str,
    scope: Scope,
) -> Result<usize, FleetError> {
    let fleet = fleet.get().ok_or(FleetError::NotStarted)?;
    fleet
        .disconnect_user(user, &locked_notice(message), scope)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_and_trimmed_reasons() {
        assert_eq!(lock_message(None).unwrap(), DEFAULT_REASON);
        assert_eq!(lock_message(Some("   ")).unwrap(), DEFAULT_REASON);
        assert_eq!(
            lock_message(Some("  Contract ended ")).unwrap(),
            "Contract ended"
        );
        assert_eq!(
            lock_message(Some("a\u{0}b")),
            Err(ReasonError::ControlCharacters)
        );
        assert_eq!(
            lock_message(Some(&"x".repeat(501))),
            Err(ReasonError::TooLong)
        );
        assert_eq!(
            lock_message(Some(&"é".repeat(500)))
                .unwrap()
                .chars()
                .count(),
            500
        );
    }

    proptest! {
        #[test]
        fn a_lock_message_is_never_empty_and_never_carries_control_characters(reason in any::<Option<String>>()) {
            if let Ok(message) = lock_message(reason.as_deref()) {
                prop_assert!(!message.is_empty());
                prop_assert!(!message.chars().any(char::is_control));
                prop_assert!(message.chars().count() <= MAX_REASON_CHARS.max(DEFAULT_REASON.len()));
            }
        }
    }
}

/// Why the admin's lock was refused or could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the caller administers no organization, or not the guest's")]
    NotAdmin,
    #[error("no such guest")]
    UnknownGuest,
    #[error(transparent)]
    Database(#[from] DbErr),
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// The guest `guest_id` names, if `admin` may lock it. A caller who
/// administers nothing is refused before any guest lookup, whatever the id,
/// so guest ids cannot be enumerated; an id that is not of the id column's
/// type names no guest.
pub async fn authorize(
    db: &DatabaseConnection,
    tables: &Tables,
    admin: &UserId,
    guest_id: &str,
) -> Result<GuestRow, LockError> {
    if !is_admin_anywhere(db, tables, admin).await? {
        tracing::warn!(admin = %admin, "admin route: caller is an admin of no organization");
        return Err(LockError::NotAdmin);
    }
    let guest = find(db, tables, guest_id)
        .await?
        .ok_or(LockError::UnknownGuest)?;
    if !is_admin_of(db, tables, admin, &guest).await? {
        tracing::warn!(admin = %admin, guest = %guest.id, "admin route: caller is not an admin of the guest's organization");
        return Err(LockError::NotAdmin);
    }
    Ok(guest)
}

/// Soft-locks `guest`, tells each of their sockets on every node why
/// (`guest:locked`) and closes it, and audits the whole of it, a failed
/// disconnect included. Returns how many sockets were closed.
pub async fn lock_and_disconnect(
    db: &DatabaseConnection,
    tables: &Tables,
    fleet: &FleetCell,
    events: &Events,
    admin: &UserId,
    guest: &GuestRow,
    message: &str,
) -> Result<usize, LockError> {
    let newly_locked = lock(db, tables, guest, message).await?;
    let user = UserId::new(guest.user_id.clone());
    let result = disconnect_user(fleet, &user, message, Scope::Cluster).await;

    events.report(
        Client::default(),
        Event::GuestLocked(GuestLockOutcome {
            admin,
            guest_id: &json!(guest.id),
            guest_user: &guest.user_id,
            organization_id: &json!(guest.organization_id),
            message,
            newly_locked,
            disconnected: result.as_ref().copied().map_err(ToString::to_string),
        }),
    );
    let disconnected = result?;
    Ok(disconnected)
}
