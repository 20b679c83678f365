//! The development database (SQLite): a user to log in as, an organization it
//! administers and a guest to lock, in sockgate's own tables. Never run
//! against a deployment's database. Writes rows only; knows nothing of
//! sessions, which the development sign-in mints.

use chrono::Utc;

use crate::db::tables::Namespace;

/// The development user a fresh SQLite database starts with.
pub const DEV_USER_ID: &str = "1";
pub const DEV_USERNAME: &str = "dev";
/// A guest of the development organization, to try the admin route on.
pub const DEV_GUEST_USER_ID: &str = "2";
pub const DEV_GUEST_USERNAME: &str = "guest";
pub const DEV_GUEST_ID: i64 = 1;
pub const DEV_ORGANIZATION_ID: i64 = 1;

/// The development organization: user "1" (dev) is its admin, user "2" is
/// guest 1 in it, in sockgate's own tables. Only missing rows are written,
/// so a lock survives restarts.
pub async fn seed_dev_data(
    conn: &sea_orm::DatabaseConnection,
    ns: &Namespace,
) -> anyhow::Result<()> {
    use sea_orm::{ConnectionTrait, Value};
    let now = Value::from(Utc::now());
    let backend = conn.get_database_backend();
    let insert = |table: &str, columns: &str, values: Vec<Value>| {
        let mut sql = crate::db::sql::Sql::new(backend);
        let placeholders: Vec<String> = values.into_iter().map(|v| sql.bind(v)).collect();
        sql.text = format!(
            "INSERT INTO {} ({columns}) VALUES ({}) ON CONFLICT DO NOTHING",
            ns.table(table),
            placeholders.join(", ")
        );
        sql.build()
    };
    for (id, name) in [
        (DEV_USER_ID, DEV_USERNAME),
        (DEV_GUEST_USER_ID, DEV_GUEST_USERNAME),
    ] {
        conn.execute_raw(insert(
            "app_user",
            "id, username, created_at",
            vec![id.into(), name.into(), now.clone()],
        ))
        .await?;
    }
    conn.execute_raw(insert(
        "organization",
        "id, name, created_at",
        vec![
            DEV_ORGANIZATION_ID.into(),
            "Dev organization".into(),
            now.clone(),
        ],
    ))
    .await?;
    conn.execute_raw(insert(
        "member",
        "id, organization_id, user_id, role",
        vec![
            1i64.into(),
            DEV_ORGANIZATION_ID.into(),
            DEV_USER_ID.into(),
            crate::db::tables::OWN_ADMIN_ROLE.into(),
        ],
    ))
    .await?;
    conn.execute_raw(insert(
        "guest",
        "id, user_id, organization_id, soft_locked, created_at",
        vec![
            DEV_GUEST_ID.into(),
            DEV_GUEST_USER_ID.into(),
            DEV_ORGANIZATION_ID.into(),
            false.into(),
            now,
        ],
    ))
    .await?;
    Ok(())
}
