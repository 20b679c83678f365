//! Where sockgate reads guests and members and writes its audit rows: its own
//! tables in its own namespace (the default), or the Node app's tables
//! through a declared mapping (README › Beside your app). It says which table
//! and column play each part, never what a row means: the guest rules are
//! `guests`'s and the audit rows `audit`'s.
//!
//! Both go through the same statements: sockgate's own tables are simply
//! the default mapping. Every mapped table and column is checked against
//! the catalog at start, and a missing one, or one of a type the statements
//! cannot serve, refuses the start with a message naming it.

use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use sea_orm::{DatabaseConnection, DbBackend};
use serde::{Deserialize, Serialize};

use crate::db::catalog::{self, CatalogColumn, Kind};
use crate::db::sql::{IdKind, ident, qualified};

/// Prefix of sockgate's own tables on SQLite, which has no schemas.
pub const SQLITE_PREFIX: &str = "sockgate_";
/// The role that counts as admin in sockgate's own member table.
pub const OWN_ADMIN_ROLE: &str = "admin";

/// The mapping as declared in the config file (`[guests]`, `[members]`,
/// `[audit]`), each section overridable by env
/// (`SOCKGATE_GUESTS__TABLE=guest`, `SOCKGATE_MEMBERS__ADMIN_ROLES=[owner,admin]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Mapping {
    pub guests: Option<GuestMap>,
    pub members: Option<MemberMap>,
    pub audit: Option<AuditMap>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestMap {
    pub schema: Option<String>,
    pub table: String,
    pub id: String,
    pub user_id: String,
    pub organization_id: String,
    /// A boolean: true while the guest is soft-locked.
    pub soft_locked: String,
    pub lock_reason: Option<String>,
    pub locked_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberMap {
    pub schema: Option<String>,
    pub table: String,
    pub user_id: String,
    pub organization_id: String,
    pub role: String,
    /// Role values that may lock the organization's guests.
    #[serde(default = "default_admin_roles")]
    pub admin_roles: Vec<String>,
}

fn default_admin_roles() -> Vec<String> {
    vec![OWN_ADMIN_ROLE.to_owned()]
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditMap {
    pub schema: Option<String>,
    pub table: String,
    /// A text or uuid id without a default: sockgate writes a new UUID.
    pub id: Option<String>,
    pub action: String,
    pub severity: String,
    pub user_id: String,
    /// JSON (or text): sockgate's details, plus every field below that has
    /// no column of its own.
    pub details: String,
    pub created_at: String,
    pub socket_id: Option<String>,
    pub reason: Option<String>,
    pub ip: Option<String>,
    pub session_ref: Option<String>,
    pub headers: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("config file {path}: {error}")]
    File { path: String, error: String },
    #[error("table mapping: {0}")]
    Invalid(String),
}

impl Mapping {
    /// The declared mapping of the app's tables (empty: sockgate's own),
    /// from the configured file and the environment.
    pub fn of(config: &crate::config::Config) -> Result<Self, MappingError> {
        Self::load(config.config_file.as_deref())
    }

    /// The config file (if any), then `SOCKGATE_GUESTS__*`,
    /// `SOCKGATE_MEMBERS__*` and `SOCKGATE_AUDIT__*` over it.
    pub fn load(file: Option<&Path>) -> Result<Self, MappingError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(MappingError::File {
                    path: path.display().to_string(),
                    error: "no such file".into(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(
            Env::prefixed("SOCKGATE_")
                .filter(|key| {
                    let key = key.as_str().to_ascii_lowercase();
                    ["guests__", "members__", "audit__"]
                        .iter()
                        .any(|section| key.starts_with(section))
                })
                .split("__"),
        );
        let mapping: Mapping = figment.extract().map_err(|e| MappingError::File {
            path: file.map_or_else(|| "(env)".into(), |p| p.display().to_string()),
            error: e.to_string(),
        })?;
        mapping.validate()?;
        Ok(mapping)
    }

    fn validate(&self) -> Result<(), MappingError> {
        if self.guests.is_some() != self.members.is_some() {
            return Err(MappingError::Invalid(
                "[guests] and [members] are mapped together: the admin route joins them on the organization".into(),
            ));
        }
        if let Some(members) = &self.members
            && members.admin_roles.iter().all(|r| r.trim().is_empty())
        {
            return Err(MappingError::Invalid(
                "[members] admin_roles names no role".into(),
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        if let Some(g) = &self.guests {
            names.extend([
                g.table.as_str(),
                &g.id,
                &g.user_id,
                &g.organization_id,
                &g.soft_locked,
            ]);
            names.extend(g.schema.as_deref());
            names.extend(g.lock_reason.as_deref());
            names.extend(g.locked_at.as_deref());
        }
        if let Some(m) = &self.members {
            names.extend([m.table.as_str(), &m.user_id, &m.organization_id, &m.role]);
            names.extend(m.schema.as_deref());
        }
        if let Some(a) = &self.audit {
            names.extend([
                a.table.as_str(),
                &a.action,
                &a.severity,
                &a.user_id,
                &a.details,
                &a.created_at,
            ]);
            for optional in [
                &a.schema,
                &a.id,
                &a.socket_id,
                &a.reason,
                &a.ip,
                &a.session_ref,
                &a.headers,
            ] {
                names.extend(optional.as_deref());
            }
        }
        if let Some(bad) = names.iter().find(|n| n.is_empty() || n.contains('\0')) {
            return Err(MappingError::Invalid(format!(
                "{bad:?} is not a table or column name"
            )));
        }
        Ok(())
    }
}

/// Where sockgate's own tables live: a PostgreSQL schema, or a name prefix
/// on SQLite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub backend: DbBackend,
    /// The PostgreSQL schema (unused on SQLite).
    pub schema: String,
}

impl Namespace {
    pub fn new(backend: DbBackend, schema: &str) -> Self {
        Self {
            backend,
            schema: schema.to_owned(),
        }
    }

    /// `(schema, table)` of one of sockgate's own tables.
    pub fn locate(&self, table: &str) -> (Option<String>, String) {
        match self.backend {
            DbBackend::Postgres => (Some(self.schema.clone()), table.to_owned()),
            _ => (None, format!("{SQLITE_PREFIX}{table}")),
        }
    }

    /// The quoted, qualified name of one of sockgate's own tables.
    pub fn table(&self, table: &str) -> String {
        let (schema, table) = self.locate(table);
        qualified(schema.as_deref(), &table)
    }

    /// sockgate's own tables as a mapping.
    pub fn own_mapping(&self) -> Mapping {
        let locate = |t: &str| self.locate(t);
        let (gs, gt) = locate("guest");
        let (ms, mt) = locate("member");
        let (aus, aut) = locate("audit_log");
        Mapping {
            guests: Some(GuestMap {
                schema: gs,
                table: gt,
                id: "id".into(),
                user_id: "user_id".into(),
                organization_id: "organization_id".into(),
                soft_locked: "soft_locked".into(),
                lock_reason: Some("lock_reason".into()),
                locked_at: Some("locked_at".into()),
            }),
            members: Some(MemberMap {
                schema: ms,
                table: mt,
                user_id: "user_id".into(),
                organization_id: "organization_id".into(),
                role: "role".into(),
                admin_roles: default_admin_roles(),
            }),
            audit: Some(AuditMap {
                schema: aus,
                table: aut,
                id: None,
                action: "action".into(),
                severity: "severity".into(),
                user_id: "user_id".into(),
                details: "details".into(),
                created_at: "created_at".into(),
                socket_id: Some("socket_id".into()),
                reason: Some("reason".into()),
                ip: Some("client_ip".into()),
                session_ref: Some("session_ref".into()),
                headers: Some("headers".into()),
            }),
        }
    }
}

/// A column sockgate reads or writes, checked against the catalog.
#[derive(Debug, Clone)]
pub struct Col {
    /// The quoted identifier.
    pub q: String,
    pub name: String,
    pub kind: Kind,
    pub sql_type: String,
}

impl Col {
    /// The id kind of a column checked to be an id.
    pub fn id_kind(&self) -> IdKind {
        self.kind.id().unwrap_or(IdKind::Text)
    }
}

#[derive(Debug, Clone)]
pub struct GuestTable {
    /// The quoted, qualified name.
    pub table: String,
    /// The schema and name as configured (no schema on SQLite).
    pub table_schema: Option<String>,
    pub table_name: String,
    pub id: Col,
    pub user_id: Col,
    pub organization_id: Col,
    pub soft_locked: Col,
    pub lock_reason: Option<Col>,
    pub locked_at: Option<Col>,
}

#[derive(Debug, Clone)]
pub struct MemberTable {
    /// The quoted, qualified name.
    pub table: String,
    /// The schema and name as configured (no schema on SQLite).
    pub table_schema: Option<String>,
    pub table_name: String,
    pub user_id: Col,
    pub organization_id: Col,
    pub role: Col,
    pub admin_roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AuditTable {
    /// The quoted, qualified name.
    pub table: String,
    /// The schema and name as configured (no schema on SQLite).
    pub table_schema: Option<String>,
    pub table_name: String,
    /// sockgate's own table (not the app's).
    pub own: bool,
    pub id: Option<Col>,
    pub action: Col,
    pub severity: Col,
    pub user_id: Col,
    pub details: Col,
    pub created_at: Col,
    pub socket_id: Option<Col>,
    pub reason: Option<Col>,
    pub ip: Option<Col>,
    pub session_ref: Option<Col>,
    pub headers: Option<Col>,
}

/// The tables as checked at start.
#[derive(Debug, Clone)]
pub struct Tables {
    pub backend: DbBackend,
    pub namespace: Namespace,
    /// The zone the Node app's connections write timestamps without time
    /// zone in (the session zone); UTC on SQLite.
    pub zone: String,
    pub guests: GuestTable,
    pub members: MemberTable,
    pub audit: AuditTable,
    /// Whether guests and members are the app's (mapped) tables.
    pub mapped_guests: bool,
}

/// A problem with a mapped or own table, naming it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SchemaError(pub String);

impl From<sea_orm::DbErr> for SchemaError {
    fn from(e: sea_orm::DbErr) -> Self {
        SchemaError(format!("reading the catalog: {e}"))
    }
}

/// What a column must be, for the message when it is not.
#[derive(Clone, Copy)]
enum Want {
    Id,
    Boolean,
    Text,
    /// Text, or a PostgreSQL enum (read as text).
    Label,
    Json,
    Time,
    Ip,
}

impl Want {
    fn accepts(self, backend: DbBackend, kind: Kind) -> bool {
        let sqlite = backend != DbBackend::Postgres;
        match self {
            Want::Id => matches!(kind, Kind::Integer | Kind::Text | Kind::Uuid),
            Want::Boolean => kind == Kind::Boolean || (sqlite && kind == Kind::Integer),
            Want::Text => kind == Kind::Text,
            Want::Label => matches!(kind, Kind::Text | Kind::Enum),
            Want::Json => matches!(kind, Kind::Json | Kind::Text),
            Want::Time => {
                matches!(kind, Kind::Timestamp | Kind::TimestampTz)
                    || (sqlite && matches!(kind, Kind::Text | Kind::Integer))
            }
            Want::Ip => matches!(kind, Kind::Text | Kind::Inet),
        }
    }
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Want::Id => "integer, bigint, text or uuid",
            Want::Boolean => "boolean",
            Want::Text => "text or varchar",
            Want::Label => "text, varchar or an enum",
            Want::Json => "json, jsonb or text",
            Want::Time => "timestamp or timestamptz",
            Want::Ip => "text, varchar or inet",
        })
    }
}

struct Found {
    display: String,
    schema: Option<String>,
    name: String,
    columns: Vec<CatalogColumn>,
    backend: DbBackend,
    used: Vec<String>,
}

impl Found {
    async fn read(
        db: &DatabaseConnection,
        what: &str,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Self, SchemaError> {
        let backend = db.get_database_backend();
        let schema = if backend == DbBackend::Postgres {
            schema
        } else {
            None
        };
        let display = qualified(schema, table);
        let columns = catalog::columns(db, schema, table)
            .await?
            .ok_or_else(|| SchemaError(format!("{what} table {display} does not exist")))?;
        Ok(Self {
            display,
            schema: schema.map(str::to_owned),
            name: table.to_owned(),
            columns,
            backend,
            used: Vec::new(),
        })
    }

    fn col(&mut self, role: &str, name: &str, want: Want) -> Result<Col, SchemaError> {
        let column = self
            .columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                SchemaError(format!(
                    "{}: no column {} (mapped as {role})",
                    self.display,
                    ident(name)
                ))
            })?;
        if !want.accepts(self.backend, column.kind) {
            return Err(SchemaError(format!(
                "{}: column {} ({role}) is {}, expected {want}",
                self.display,
                ident(name),
                column.sql_type
            )));
        }
        self.used.push(name.to_owned());
        Ok(Col {
            q: ident(name),
            name: name.to_owned(),
            kind: column.kind,
            sql_type: column.sql_type.clone(),
        })
    }

    fn opt(
        &mut self,
        role: &str,
        name: Option<&String>,
        want: Want,
    ) -> Result<Option<Col>, SchemaError> {
        name.map(|n| self.col(role, n, want)).transpose()
    }

    /// Rows sockgate inserts name only the mapped columns: any other
    /// required column must fill itself.
    fn insertable(&self) -> Result<(), SchemaError> {
        match self
            .columns
            .iter()
            .find(|c| c.not_null && !c.has_default && !self.used.contains(&c.name))
        {
            Some(c) => Err(SchemaError(format!(
                "{}: column {} is NOT NULL without a default and not mapped, so sockgate cannot insert rows (map it, or give it a default)",
                self.display,
                ident(&c.name)
            ))),
            None => Ok(()),
        }
    }
}

impl Tables {
    /// Checks the mapping (or sockgate's own tables) against the catalog.
    /// `session_zone` is the zone session expiry is written in (PostgreSQL;
    /// UTC when `None`), which the statements on these tables state too.
    pub async fn resolve(
        db: &DatabaseConnection,
        session_zone: Option<&str>,
        namespace: &Namespace,
        mapping: &Mapping,
    ) -> Result<Self, SchemaError> {
        let backend = db.get_database_backend();
        let own = namespace.own_mapping();
        if backend == DbBackend::Postgres
            && (mapping.guests.is_none() || mapping.audit.is_none())
            && !catalog::schema_exists(db, &namespace.schema).await?
        {
            return Err(SchemaError(format!(
                "schema {} (SOCKGATE_SCHEMA) does not exist: run `sockgate migrate`",
                ident(&namespace.schema)
            )));
        }
        let mapped_guests = mapping.guests.is_some();
        let (g, m) = match (&mapping.guests, &mapping.members) {
            (Some(g), Some(m)) => (g.clone(), m.clone()),
            _ => (own.guests.clone().unwrap(), own.members.clone().unwrap()),
        };
        let audit_map = mapping
            .audit
            .clone()
            .unwrap_or_else(|| own.audit.clone().unwrap());
        let audit_own = mapping.audit.is_none();

        let mut found = Found::read(db, "guest", g.schema.as_deref(), &g.table).await?;
        let guests = GuestTable {
            id: found.col("id", &g.id, Want::Id)?,
            user_id: found.col("user_id", &g.user_id, Want::Id)?,
            organization_id: found.col("organization_id", &g.organization_id, Want::Id)?,
            soft_locked: found.col("soft_locked", &g.soft_locked, Want::Boolean)?,
            lock_reason: found.opt("lock_reason", g.lock_reason.as_ref(), Want::Text)?,
            locked_at: found.opt("locked_at", g.locked_at.as_ref(), Want::Time)?,
            table: found.display.clone(),
            table_schema: found.schema.clone(),
            table_name: found.name.clone(),
        };

        let mut found = Found::read(db, "member", m.schema.as_deref(), &m.table).await?;
        let members = MemberTable {
            user_id: found.col("user_id", &m.user_id, Want::Id)?,
            organization_id: found.col("organization_id", &m.organization_id, Want::Id)?,
            role: found.col("role", &m.role, Want::Label)?,
            admin_roles: m
                .admin_roles
                .iter()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect(),
            table: found.display.clone(),
            table_schema: found.schema.clone(),
            table_name: found.name.clone(),
        };
        if (backend == DbBackend::Postgres)
            && (guests.organization_id.kind != members.organization_id.kind
                || guests.user_id.kind != members.user_id.kind)
        {
            return Err(SchemaError(format!(
                "{}.{} is {} and {}.{} is {}; {}.{} is {} and {}.{} is {}: guests and members must use the same id types",
                guests.table,
                guests.organization_id.q,
                guests.organization_id.sql_type,
                members.table,
                members.organization_id.q,
                members.organization_id.sql_type,
                guests.table,
                guests.user_id.q,
                guests.user_id.sql_type,
                members.table,
                members.user_id.q,
                members.user_id.sql_type,
            )));
        }

        let a = audit_map;
        let mut found = Found::read(db, "audit", a.schema.as_deref(), &a.table).await?;
        let id = found.opt("id", a.id.as_ref(), Want::Id)?;
        if let Some(id) = &id
            && id.kind == Kind::Integer
        {
            return Err(SchemaError(format!(
                "{}: the mapped id column {} is {}; sockgate only fills text or uuid ids (leave an integer id unmapped with a default)",
                found.display, id.q, id.sql_type
            )));
        }
        let audit = AuditTable {
            own: audit_own,
            id,
            action: found.col("action", &a.action, Want::Label)?,
            severity: found.col("severity", &a.severity, Want::Label)?,
            user_id: found.col("user_id", &a.user_id, Want::Id)?,
            details: found.col("details", &a.details, Want::Json)?,
            created_at: found.col("created_at", &a.created_at, Want::Time)?,
            socket_id: found.opt("socket_id", a.socket_id.as_ref(), Want::Text)?,
            reason: found.opt("reason", a.reason.as_ref(), Want::Text)?,
            ip: found.opt("ip", a.ip.as_ref(), Want::Ip)?,
            session_ref: found.opt("session_ref", a.session_ref.as_ref(), Want::Text)?,
            headers: found.opt("headers", a.headers.as_ref(), Want::Json)?,
            table: found.display.clone(),
            table_schema: found.schema.clone(),
            table_name: found.name.clone(),
        };
        found.insertable()?;

        Ok(Tables {
            backend,
            namespace: namespace.clone(),
            zone: session_zone.unwrap_or("UTC").to_owned(),
            guests,
            members,
            audit,
            mapped_guests,
        })
    }
}

/// The shape of sockgate's own tables, from the entities.
fn own_shapes() -> Vec<(&'static str, Vec<(String, Kind)>)> {
    use sea_orm::{ColumnTrait, ColumnType, EntityName, IdenStatic, Iterable};
    fn kind(ty: &ColumnType) -> Kind {
        match ty {
            ColumnType::BigInteger | ColumnType::Integer | ColumnType::SmallInteger => {
                Kind::Integer
            }
            ColumnType::String(_) | ColumnType::Text | ColumnType::Char(_) => Kind::Text,
            ColumnType::Boolean => Kind::Boolean,
            ColumnType::Json | ColumnType::JsonBinary => Kind::Json,
            ColumnType::TimestampWithTimeZone => Kind::TimestampTz,
            ColumnType::Timestamp | ColumnType::DateTime => Kind::Timestamp,
            _ => Kind::Other,
        }
    }
    macro_rules! shape {
        ($entity:ident) => {{
            use entity::$entity::{Column, Entity};
            (
                Entity.table_name(),
                Column::iter()
                    .map(|c| (c.as_str().to_owned(), kind(c.def().get_column_type())))
                    .collect::<Vec<_>>(),
            )
        }};
    }
    vec![
        shape!(audit_log),
        shape!(app_user),
        shape!(organization),
        shape!(member),
        shape!(guest),
    ]
}

/// Every table of sockgate's own that exists has the columns (names and
/// kinds) its entity declares; one that differs is named with the
/// difference. A table that does not exist yet is fine (the migrations
/// create it).
pub async fn verify_own_tables(
    db: &DatabaseConnection,
    namespace: &Namespace,
) -> Result<(), SchemaError> {
    let sqlite = namespace.backend != DbBackend::Postgres;
    for (table, expected) in own_shapes() {
        let (schema, name) = namespace.locate(table);
        let Some(found) = catalog::columns(db, schema.as_deref(), &name).await? else {
            continue;
        };
        let shown = qualified(schema.as_deref(), &name);
        let mut differences = Vec::new();
        for (col, kind) in &expected {
            match found.iter().find(|c| &c.name == col) {
                None => differences.push(format!("column {} is missing", ident(col))),
                // SQLite's declared types are loose; names are what can clash.
                Some(c) if !sqlite && c.kind != *kind => differences.push(format!(
                    "column {} is {}, expected {kind:?}",
                    ident(col),
                    c.sql_type
                )),
                Some(_) => {}
            }
        }
        for c in &found {
            if !expected.iter().any(|(col, _)| col == &c.name) {
                differences.push(format!("unexpected column {}", ident(&c.name)));
            }
        }
        if !differences.is_empty() {
            return Err(SchemaError(format!(
                "{shown} exists with another shape than sockgate's ({}); sockgate never adopts a table it did not create: rename it, or set SOCKGATE_SCHEMA to a schema of sockgate's own",
                differences.join("; ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_without_members_is_refused() {
        let mapping = Mapping {
            guests: Some(GuestMap {
                schema: None,
                table: "guest".into(),
                id: "id".into(),
                user_id: "userId".into(),
                organization_id: "organizationId".into(),
                soft_locked: "softLocked".into(),
                lock_reason: None,
                locked_at: None,
            }),
            ..Mapping::default()
        };
        assert!(matches!(mapping.validate(), Err(MappingError::Invalid(_))));
    }

    #[test]
    fn the_own_namespace_never_shares_a_name_with_an_unqualified_table() {
        let pg = Namespace::new(DbBackend::Postgres, "sockgate");
        assert_eq!(pg.table("guest"), "\"sockgate\".\"guest\"");
        let sqlite = Namespace::new(DbBackend::Sqlite, "ignored");
        assert_eq!(sqlite.table("guest"), "\"sockgate_guest\"");
    }
}
