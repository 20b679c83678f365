//! connect-pg-simple's `session` table: `sid varchar PK, sess json NOT NULL,
//! expire timestamp(6) NOT NULL`. The table name here is the default; the
//! store queries it under the configured schema and name.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "session")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub sid: String,
    /// `json` in connect-pg-simple's table.sql (`jsonb` also works).
    pub sess: Json,
    /// Wall-clock time WITHOUT time zone, written in the database's default
    /// zone by connect-pg-simple; never compare it as UTC.
    pub expire: DateTime,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
