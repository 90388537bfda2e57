"""foundation: participants, assets, offerings, audit log

Revision ID: 0001
Revises:
Create Date: 2026-11-21 23:59:54.322936
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "asset",
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("media_type", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("subject_type", sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
        sa.Column("subject_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_subject_id"), ["subject_id"], unique=False)

    op.create_table(
        "participant",
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("endpoint", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("is_self", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address"),
    )
    with op.batch_alter_table("participant", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_participant_is_self"), ["is_self"], unique=False)

    op.create_table(
        "offering",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("license", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("media_type", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("access_modes", sa.JSON(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider"],
            ["participant.address"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "name", name="uq_offering_provider_name"),
    )
    with op.batch_alter_table("offering", schema=None) as batch_op:
        batch_op.create_index("ix_offering_created_id", ["created_at", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_offering_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_offering_provider"), ["provider"], unique=False)
        batch_op.create_index(batch_op.f("ix_offering_status"), ["status"], unique=False)

    op.create_table(
        "offering_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("offering_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("asset_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("anchor_status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_sha256"],
            ["asset.sha256"],
        ),
        sa.ForeignKeyConstraint(["offering_id"], ["offering.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("offering_id", "version", name="uq_offering_version"),
    )
    with op.batch_alter_table("offering_version", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_offering_version_anchor_status"), ["anchor_status"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_offering_version_asset_sha256"), ["asset_sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_offering_version_offering_id"), ["offering_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("offering_version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_offering_version_offering_id"))
        batch_op.drop_index(batch_op.f("ix_offering_version_asset_sha256"))
        batch_op.drop_index(batch_op.f("ix_offering_version_anchor_status"))

    op.drop_table("offering_version")
    with op.batch_alter_table("offering", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_offering_status"))
        batch_op.drop_index(batch_op.f("ix_offering_provider"))
        batch_op.drop_index(batch_op.f("ix_offering_kind"))
        batch_op.drop_index("ix_offering_created_id")

    op.drop_table("offering")
    with op.batch_alter_table("participant", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_participant_is_self"))

    op.drop_table("participant")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_subject_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))
        batch_op.drop_index(batch_op.f("ix_audit_log_action"))

    op.drop_table("audit_log")
    op.drop_table("asset")
