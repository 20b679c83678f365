use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub created_at: DateTimeUtc,
    /// e.g. `socket.authenticated`, `socket.auth_failed`.
    pub action: String,
    /// `INFO`, `WARN` or `ERROR`.
    pub severity: String,
    pub user_id: Option<String>,
    pub socket_id: Option<String>,
    /// A short one-way fingerprint of the session id, never the id itself.
    pub session_ref: Option<String>,
    pub reason: Option<String>,
    pub client_ip: Option<String>,
    /// Request headers with Cookie, Authorization and other secret-bearing
    /// headers redacted.
    pub headers: Option<Json>,
    pub details: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
