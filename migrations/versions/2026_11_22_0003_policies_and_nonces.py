"""usage policies on offerings, protocol nonces

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 00:21:21.978897
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "seen_nonce",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sender", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("nonce", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sender", "nonce", name="uq_seen_nonce"),
    )
    with op.batch_alter_table("seen_nonce", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_seen_nonce_seen_at"), ["seen_at"], unique=False)

    with op.batch_alter_table("offering", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("approval", sa.String(length=10), server_default="auto", nullable=False)
        )
        batch_op.add_column(sa.Column("managed", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index(batch_op.f("ix_offering_updated_at"), ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("offering", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_offering_updated_at"))
        batch_op.drop_column("managed")
        batch_op.drop_column("approval")
        batch_op.drop_column("policy")

    with op.batch_alter_table("seen_nonce", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_seen_nonce_seen_at"))

    op.drop_table("seen_nonce")
