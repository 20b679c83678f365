use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    CreatedAt,
    Action,
    Severity,
    UserId,
    SocketId,
    SessionRef,
    Reason,
    ClientIp,
    Headers,
    Details,
}

#[derive(DeriveIden)]
enum AppUser {
    Table,
    Id,
    Username,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Organization {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Member {
    Table,
    Id,
    OrganizationId,
    UserId,
    Role,
}

#[derive(DeriveIden)]
enum Guest {
    Table,
    Id,
    UserId,
    OrganizationId,
    SoftLocked,
    LockedAt,
    LockReason,
    CreatedAt,
}

/// One of sockgate's own tables. On PostgreSQL the migrations run with
/// `search_path` set to sockgate's schema alone, so an unqualified name
/// lands there; SQLite has no schemas, so the name carries a prefix.
fn own(manager: &SchemaManager, table: impl Iden) -> Alias {
    let name = table.to_string();
    match manager.get_database_backend() {
        sea_orm::DbBackend::Postgres => Alias::new(name),
        _ => Alias::new(format!("{}{name}", crate::SQLITE_PREFIX)),
    }
}

/// Index names are per schema on PostgreSQL and global on SQLite.
fn own_index(manager: &SchemaManager, name: &str) -> String {
    match manager.get_database_backend() {
        sea_orm::DbBackend::Postgres => name.to_owned(),
        _ => format!("{}{name}", crate::SQLITE_PREFIX),
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(own(manager, AuditLog::Table))
                    .if_not_exists()
                    .col(big_pk_auto(AuditLog::Id))
                    .col(timestamp_with_time_zone(AuditLog::CreatedAt))
                    .col(string(AuditLog::Action))
                    .col(string(AuditLog::Severity))
                    .col(string_null(AuditLog::UserId))
                    .col(string_null(AuditLog::SocketId))
                    .col(string_null(AuditLog::SessionRef))
                    .col(text_null(AuditLog::Reason))
                    .col(string_null(AuditLog::ClientIp))
                    .col(json_null(AuditLog::Headers))
                    .col(json_null(AuditLog::Details))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(own_index(manager, "idx_audit_log_action_created_at"))
                    .table(own(manager, AuditLog::Table))
                    .col(AuditLog::Action)
                    .col(AuditLog::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(own(manager, AppUser::Table))
                    .if_not_exists()
                    .col(string(AppUser::Id).primary_key())
                    .col(string(AppUser::Username))
                    .col(timestamp_with_time_zone(AppUser::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(own(manager, Organization::Table))
                    .if_not_exists()
                    .col(big_pk_auto(Organization::Id))
                    .col(string(Organization::Name))
                    .col(timestamp_with_time_zone(Organization::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(own(manager, Member::Table))
                    .if_not_exists()
                    .col(big_pk_auto(Member::Id))
                    .col(big_integer(Member::OrganizationId))
                    .col(string(Member::UserId))
                    .col(string(Member::Role))
                    .foreign_key(
                        ForeignKey::create()
                            .from(own(manager, Member::Table), Member::OrganizationId)
                            .to(own(manager, Organization::Table), Organization::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(own(manager, Member::Table), Member::UserId)
                            .to(own(manager, AppUser::Table), AppUser::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(own_index(manager, "idx_member_org_user"))
                    .table(own(manager, Member::Table))
                    .col(Member::OrganizationId)
                    .col(Member::UserId)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(own(manager, Guest::Table))
                    .if_not_exists()
                    .col(big_pk_auto(Guest::Id))
                    .col(string(Guest::UserId))
                    .col(big_integer(Guest::OrganizationId))
                    .col(boolean(Guest::SoftLocked).default(false))
                    .col(timestamp_with_time_zone_null(Guest::LockedAt))
                    .col(text_null(Guest::LockReason))
                    .col(timestamp_with_time_zone(Guest::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(own(manager, Guest::Table), Guest::OrganizationId)
                            .to(own(manager, Organization::Table), Organization::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(own(manager, Guest::Table), Guest::UserId)
                            .to(own(manager, AppUser::Table), AppUser::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(own_index(manager, "idx_guest_user"))
                    .table(own(manager, Guest::Table))
                    .col(Guest::UserId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            own(manager, Guest::Table),
            own(manager, Member::Table),
            own(manager, Organization::Table),
            own(manager, AppUser::Table),
            own(manager, AuditLog::Table),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
