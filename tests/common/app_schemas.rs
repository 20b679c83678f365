//! Two Node app schemas sockgate must live beside, as fixtures: their
//! tables, rows and the mapping that declares them to sockgate.
//!
//! (a) drizzle / better-auth style: text ids, quoted camelCase columns,
//!     `member.role` among owner / admin / member, its own `auditLog`;
//! (b) snake_case with integer ids and an `audit_log` of its own, in tables
//!     named exactly as sockgate's own once were (`organization`, `member`,
//!     `guest`, `audit_log`), sessions holding `passport.user` as a number.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use sockgate::Config;

use super::{Backend, TestDb};

pub struct AppSchema {
    pub pg_ddl: &'static str,
    pub sqlite_ddl: &'static str,
    pub seed: &'static str,
    pub mapping: &'static str,
    /// User ids as the app stores them.
    pub admin: &'static str,
    pub member: &'static str,
    pub outsider: &'static str,
    pub guest_user: &'static str,
    pub guest2_user: &'static str,
    pub guest: &'static str,
    pub guest2: &'static str,
    /// The session's `passport.user`: the id as a JSON number or string.
    pub numeric_users: bool,
    /// SQL reading the guest's lock flag (1/0), reason and whether a lock
    /// time is set, `{id}` the guest id.
    pub lock_query: &'static str,
    /// SQL with which the app locks guest `{id}` itself.
    pub app_lock: &'static str,
    /// SQL reading the app's audit rows of action `{action}`: user id,
    /// details as text.
    pub audit_query: &'static str,
}

pub const DRIZZLE: AppSchema = AppSchema {
    pg_ddl: r#"
        CREATE TABLE "user" (id text PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE,
            "emailVerified" boolean NOT NULL, "createdAt" timestamp NOT NULL, "updatedAt" timestamp NOT NULL);
        CREATE TABLE organization (id text PRIMARY KEY, name text NOT NULL, slug text UNIQUE,
            "createdAt" timestamp NOT NULL);
        CREATE TABLE member (id text PRIMARY KEY,
            "organizationId" text NOT NULL REFERENCES organization(id) ON DELETE CASCADE,
            "userId" text NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
            role text NOT NULL DEFAULT 'member', "createdAt" timestamp NOT NULL);
        CREATE TABLE guest (id text PRIMARY KEY,
            "userId" text NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
            "organizationId" text NOT NULL REFERENCES organization(id) ON DELETE CASCADE,
            "softLocked" boolean NOT NULL DEFAULT false, "lockReason" text, "lockedAt" timestamp,
            "createdAt" timestamp NOT NULL DEFAULT now());
        CREATE INDEX "guest_userId_idx" ON guest ("userId");
        CREATE TABLE "auditLog" (id text PRIMARY KEY, action text NOT NULL, severity text NOT NULL,
            "userId" text, details jsonb, "ipAddress" text, "createdAt" timestamp NOT NULL DEFAULT now());
        CREATE INDEX "auditLog_createdAt_idx" ON "auditLog" ("createdAt");
    "#,
    sqlite_ddl: r#"
        CREATE TABLE "user" (id text PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE,
            "emailVerified" integer NOT NULL, "createdAt" integer NOT NULL, "updatedAt" integer NOT NULL);
        CREATE TABLE organization (id text PRIMARY KEY, name text NOT NULL, slug text UNIQUE,
            "createdAt" integer NOT NULL);
        CREATE TABLE member (id text PRIMARY KEY,
            "organizationId" text NOT NULL REFERENCES organization(id) ON DELETE CASCADE,
            "userId" text NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
            role text NOT NULL DEFAULT 'member', "createdAt" integer NOT NULL);
        CREATE TABLE guest (id text PRIMARY KEY,
            "userId" text NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
            "organizationId" text NOT NULL REFERENCES organization(id) ON DELETE CASCADE,
            "softLocked" integer NOT NULL DEFAULT 0, "lockReason" text, "lockedAt" integer,
            "createdAt" integer NOT NULL DEFAULT (unixepoch()));
        CREATE INDEX "guest_userId_idx" ON guest ("userId");
        CREATE TABLE "auditLog" (id text PRIMARY KEY, action text NOT NULL, severity text NOT NULL,
            "userId" text, details text, "ipAddress" text, "createdAt" integer NOT NULL DEFAULT (unixepoch()));
        CREATE INDEX "auditLog_createdAt_idx" ON "auditLog" ("createdAt");
    "#,
    seed: r#"
        INSERT INTO "user" (id, name, email, "emailVerified", "createdAt", "updatedAt") VALUES
            ('u-admin', 'Ada', 'ada@example.com', TRUE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP),
            ('u-member', 'Mel', 'mel@example.com', TRUE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP),
            ('u-outsider', 'Oz', 'oz@example.com', TRUE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP),
            ('u-guest', 'Gus', 'gus@example.com', TRUE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP),
            ('u-guest2', 'Gia', 'gia@example.com', TRUE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP);
        INSERT INTO organization (id, name, slug, "createdAt") VALUES
            ('org-acme', 'Acme', 'acme', CURRENT_TIMESTAMP), ('org-other', 'Other', 'other', CURRENT_TIMESTAMP);
        INSERT INTO member (id, "organizationId", "userId", role, "createdAt") VALUES
            ('m-1', 'org-acme', 'u-admin', 'owner', CURRENT_TIMESTAMP),
            ('m-2', 'org-acme', 'u-member', 'member', CURRENT_TIMESTAMP),
            ('m-3', 'org-other', 'u-outsider', 'admin', CURRENT_TIMESTAMP);
        INSERT INTO guest (id, "userId", "organizationId") VALUES
            ('g-1', 'u-guest', 'org-acme'), ('g-2', 'u-guest2', 'org-acme');
    "#,
    mapping: r#"
        [guests]
        table = "guest"
        id = "id"
        user_id = "userId"
        organization_id = "organizationId"
        soft_locked = "softLocked"
        lock_reason = "lockReason"
        locked_at = "lockedAt"

        [members]
        table = "member"
        user_id = "userId"
        organization_id = "organizationId"
        role = "role"
        admin_roles = ["owner", "admin"]

        [audit]
        table = "auditLog"
        id = "id"
        action = "action"
        severity = "severity"
        user_id = "userId"
        details = "details"
        created_at = "createdAt"
        ip = "ipAddress"
    "#,
    admin: "u-admin",
    member: "u-member",
    outsider: "u-outsider",
    guest_user: "u-guest",
    guest2_user: "u-guest2",
    guest: "g-1",
    guest2: "g-2",
    numeric_users: false,
    lock_query: r#"SELECT CASE WHEN "softLocked" THEN 1 ELSE 0 END AS locked, "lockReason" AS reason,
        CASE WHEN "lockedAt" IS NULL THEN 0 ELSE 1 END AS has_time FROM guest WHERE id = '{id}'"#,
    app_lock: r#"UPDATE guest SET "softLocked" = TRUE, "lockReason" = 'locked by the app' WHERE id = '{id}'"#,
    audit_query: r#"SELECT "userId" AS user_id, CAST(details AS TEXT) AS details FROM "auditLog"
        WHERE action = '{action}' ORDER BY "createdAt""#,
};

pub const SNAKE: AppSchema = AppSchema {
    pg_ddl: r#"
        CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);
        CREATE TABLE organization (id serial PRIMARY KEY, name text NOT NULL);
        CREATE TABLE member (id serial PRIMARY KEY,
            organization_id integer NOT NULL REFERENCES organization(id),
            user_id integer NOT NULL REFERENCES users(id), role varchar(20) NOT NULL);
        CREATE TABLE guest (id serial PRIMARY KEY,
            user_id integer NOT NULL REFERENCES users(id),
            organization_id integer NOT NULL REFERENCES organization(id),
            soft_locked boolean NOT NULL DEFAULT false, created_at timestamptz NOT NULL DEFAULT now());
        CREATE TABLE audit_log (id bigserial PRIMARY KEY, action text NOT NULL, severity text NOT NULL,
            user_id integer, socket_id text, reason text, ip inet, details json,
            created_at timestamptz NOT NULL DEFAULT now());
        CREATE INDEX audit_log_created_at ON audit_log (created_at);
        CREATE FUNCTION guest_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
        CREATE TRIGGER guest_touch BEFORE UPDATE ON guest FOR EACH ROW EXECUTE FUNCTION guest_touch();
    "#,
    sqlite_ddl: r#"
        CREATE TABLE users (id integer PRIMARY KEY, email text NOT NULL);
        CREATE TABLE organization (id integer PRIMARY KEY, name text NOT NULL);
        CREATE TABLE member (id integer PRIMARY KEY,
            organization_id integer NOT NULL REFERENCES organization(id),
            user_id integer NOT NULL REFERENCES users(id), role varchar(20) NOT NULL);
        CREATE TABLE guest (id integer PRIMARY KEY,
            user_id integer NOT NULL REFERENCES users(id),
            organization_id integer NOT NULL REFERENCES organization(id),
            soft_locked boolean NOT NULL DEFAULT 0, created_at timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP);
        CREATE TABLE audit_log (id integer PRIMARY KEY, action text NOT NULL, severity text NOT NULL,
            user_id integer, socket_id text, reason text, ip text, details json,
            created_at timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP);
        CREATE INDEX audit_log_created_at ON audit_log (created_at);
        CREATE TRIGGER guest_touch BEFORE UPDATE ON guest BEGIN SELECT 1; END;
    "#,
    seed: r#"
        INSERT INTO users (id, email) VALUES (1, 'ada@example.com'), (2, 'mel@example.com'),
            (5, 'oz@example.com'), (3, 'gus@example.com'), (4, 'gia@example.com');
        INSERT INTO organization (id, name) VALUES (10, 'Acme'), (11, 'Other');
        INSERT INTO member (organization_id, user_id, role) VALUES (10, 1, 'admin'), (10, 2, 'member'), (11, 5, 'admin');
        INSERT INTO guest (id, user_id, organization_id) VALUES (100, 3, 10), (101, 4, 10);
    "#,
    mapping: r#"
        [guests]
        table = "guest"
        id = "id"
        user_id = "user_id"
        organization_id = "organization_id"
        soft_locked = "soft_locked"

        [members]
        table = "member"
        user_id = "user_id"
        organization_id = "organization_id"
        role = "role"

        [audit]
        table = "audit_log"
        action = "action"
        severity = "severity"
        user_id = "user_id"
        details = "details"
        created_at = "created_at"
        socket_id = "socket_id"
        reason = "reason"
        ip = "ip"
    "#,
    admin: "1",
    member: "2",
    outsider: "5",
    guest_user: "3",
    guest2_user: "4",
    guest: "100",
    guest2: "101",
    numeric_users: true,
    lock_query: "SELECT CASE WHEN soft_locked THEN 1 ELSE 0 END AS locked, NULL AS reason, 0 AS has_time FROM guest WHERE id = {id}",
    app_lock: "UPDATE guest SET soft_locked = TRUE WHERE id = {id}",
    audit_query: "SELECT CAST(user_id AS TEXT) AS user_id, CAST(details AS TEXT) AS details FROM audit_log \
        WHERE action = '{action}' ORDER BY created_at",
};

pub async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub async fn raw_connection(url: &str) -> DatabaseConnection {
    sea_orm::Database::connect(url).await.unwrap()
}

/// Everything the app owns, as the catalog describes it: tables, columns,
/// indexes, constraints and triggers outside sockgate's namespace. (SQLite's
/// own `sqlite_sequence` appears with the first AUTOINCREMENT table of
/// anyone's; it is SQLite's, not the app's.)
pub async fn app_catalog(db: &DatabaseConnection) -> String {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => {
            "WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'sockgate') \
                           AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%') \
             SELECT string_agg(line, E'\\n' ORDER BY line) AS snap FROM ( \
               SELECT 'rel ' || c.oid::regclass::text || ' ' || c.relkind::text AS line FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns) \
               UNION ALL SELECT 'col ' || a.attrelid::regclass::text || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) \
                 || ' ' || a.attnotnull || ' ' || COALESCE(pg_get_expr(d.adbin, d.adrelid), '') \
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE c.relnamespace IN (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped \
               UNION ALL SELECT 'idx ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
                 WHERE c.relnamespace IN (SELECT oid FROM ns) \
               UNION ALL SELECT 'con ' || k.conrelid::regclass::text || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid) \
                 FROM pg_constraint k WHERE k.connamespace IN (SELECT oid FROM ns) \
               UNION ALL SELECT 'trg ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                 WHERE c.relnamespace IN (SELECT oid FROM ns) AND NOT t.tgisinternal \
               UNION ALL SELECT 'fn ' || p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace IN (SELECT oid FROM ns) \
             ) s"
        }
        _ => {
            "SELECT group_concat(line, char(10)) AS snap FROM (SELECT type || ' ' || name || ' ' || COALESCE(sql, '') AS line \
             FROM sqlite_master WHERE tbl_name NOT LIKE 'sockgate\\_%' ESCAPE '\\' \
             AND name <> 'sqlite_sequence' ORDER BY type, name)"
        }
    };
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "snap")
        .unwrap()
}

/// A database holding the app's tables, rows and session table, nothing
/// of sockgate's yet.
pub async fn app_database(backend: Backend, schema: &AppSchema) -> Option<TestDb> {
    let db = TestDb::create(backend).await?;
    let conn = raw_connection(&db.url).await;
    let ddl = if db.is_postgres() {
        schema.pg_ddl
    } else {
        schema.sqlite_ddl
    };
    exec(&conn, ddl).await;
    exec(&conn, schema.seed).await;
    sockgate::db::create_session_table(&conn, None, "session")
        .await
        .unwrap();
    conn.close().await.unwrap();
    Some(db)
}

pub fn with_mapping(dir: &tempfile::TempDir, schema: &AppSchema) -> impl FnOnce(&mut Config) {
    let path = dir.path().join("sockgate.toml");
    std::fs::write(&path, schema.mapping).unwrap();
    move |c: &mut Config| c.config_file = Some(path)
}
