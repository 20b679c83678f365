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

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
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
                    .name("idx_audit_log_action_created_at")
                    .table(AuditLog::Table)
                    .col(AuditLog::Action)
                    .col(AuditLog::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AppUser::Table)
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
                    .table(Organization::Table)
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
                    .table(Member::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Member::Id))
                    .col(big_integer(Member::OrganizationId))
                    .col(string(Member::UserId))
                    .col(string(Member::Role))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Member::Table, Member::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Member::Table, Member::UserId)
                            .to(AppUser::Table, AppUser::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_member_org_user")
                    .table(Member::Table)
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
                    .table(Guest::Table)
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
                            .from(Guest::Table, Guest::OrganizationId)
                            .to(Organization::Table, Organization::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Guest::Table, Guest::UserId)
                            .to(AppUser::Table, AppUser::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_guest_user")
                    .table(Guest::Table)
                    .col(Guest::UserId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Guest::Table.into_iden(),
            Member::Table.into_iden(),
            Organization::Table.into_iden(),
            AppUser::Table.into_iden(),
            AuditLog::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
