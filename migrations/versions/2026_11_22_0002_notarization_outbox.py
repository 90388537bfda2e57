"""notarization outbox: every registered version is queued for anchoring on chain

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:10:49.775947
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notarization",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("content_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("metadata_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("parents", sa.JSON(), nullable=False),
        sa.Column("mode", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("batch_root", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("proof", sa.JSON(), nullable=False),
        sa.Column("tx_hash", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=True),
        sa.Column("block_number", sa.Integer(), nullable=True),
        sa.Column("chain_id", sa.Integer(), nullable=True),
        sa.Column("registry_address", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("metadata_doc", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("anchored_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("asset_id"),
    )
    with op.batch_alter_table("notarization", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notarization_batch_root"), ["batch_root"], unique=False)
        batch_op.create_index(batch_op.f("ix_notarization_content_hash"), ["content_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_notarization_status"), ["status"], unique=False)

    with op.batch_alter_table("offering_version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notarization_id", sa.Integer(), nullable=True))
        batch_op.drop_index(batch_op.f("ix_offering_version_anchor_status"))
        batch_op.create_index(
            batch_op.f("ix_offering_version_notarization_id"), ["notarization_id"], unique=False
        )
        batch_op.create_foreign_key(
            "fk_offering_version_notarization", "notarization", ["notarization_id"], ["id"]
        )
        batch_op.drop_column("anchor_status")


def downgrade() -> None:
    with op.batch_alter_table("offering_version", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("anchor_status", sa.VARCHAR(length=20), nullable=False, server_default="PENDING")
        )
        batch_op.drop_constraint("fk_offering_version_notarization", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_offering_version_notarization_id"))
        batch_op.create_index(
            batch_op.f("ix_offering_version_anchor_status"), ["anchor_status"], unique=False
        )
        batch_op.drop_column("notarization_id")

    with op.batch_alter_table("notarization", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notarization_status"))
        batch_op.drop_index(batch_op.f("ix_notarization_content_hash"))
        batch_op.drop_index(batch_op.f("ix_notarization_batch_root"))

    op.drop_table("notarization")
