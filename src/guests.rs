//! Soft-locked guests: the rules (who may lock whom, what the client is
//! told) and the rows behind them. The HTTP route in `admin` and the session
//! watcher both end a guest's sockets through [`disconnect_user`].

use chrono::{DateTime, Utc};
use entity::{guest, member};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use serde_json::json;

use crate::fleet::{FleetCell, FleetError, Notice, Scope};
use crate::session::UserId;

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

pub async fn find(db: &DatabaseConnection, id: i64) -> Result<Option<guest::Model>, DbErr> {
    guest::Entity::find_by_id(id).one(db).await
}

/// Whether `user` is an `admin` member of `organization`.
/// Whether `user` is an admin of any organization: who is not cannot learn
/// which guest ids exist.
pub async fn is_admin_anywhere(db: &DatabaseConnection, user: &UserId) -> Result<bool, DbErr> {
    Ok(member::Entity::find()
        .filter(member::Column::UserId.eq(user.as_str()))
        .filter(member::Column::Role.eq(member::ROLE_ADMIN))
        .one(db)
        .await?
        .is_some())
}

pub async fn is_admin_of(
    db: &DatabaseConnection,
    user: &UserId,
    organization: i64,
) -> Result<bool, DbErr> {
    Ok(member::Entity::find()
        .filter(member::Column::OrganizationId.eq(organization))
        .filter(member::Column::UserId.eq(user.as_str()))
        .filter(member::Column::Role.eq(member::ROLE_ADMIN))
        .one(db)
        .await?
        .is_some())
}

/// Marks the guest soft-locked. Idempotent: a guest already locked keeps
/// the time and reason of the first lock. Returns whether this call locked it.
pub async fn lock(
    db: &DatabaseConnection,
    guest: &guest::Model,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    if guest.soft_locked {
        return Ok(false);
    }
    // Conditional update, so two admins locking at once record one lock.
    let result = guest::Entity::update_many()
        .col_expr(guest::Column::SoftLocked, true.into())
        .col_expr(guest::Column::LockedAt, Some(now).into())
        .col_expr(guest::Column::LockReason, Some(reason.to_owned()).into())
        .filter(guest::Column::Id.eq(guest.id))
        .filter(guest::Column::SoftLocked.eq(false))
        .exec(db)
        .await?;
    Ok(result.rows_affected > 0)
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
