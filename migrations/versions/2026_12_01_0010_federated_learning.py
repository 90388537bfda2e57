"""federated learning: federations, their members, rounds and each provider's contribution

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 20:40:12.183701
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "federation",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("coordinator", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("coordinator_endpoint", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("code_digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("layout", sa.JSON(), nullable=False),
        sa.Column("initial_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("global_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("agreement_id", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=False),
        sa.Column("offering_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("dataset_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("privacy", sa.JSON(), nullable=False),
        sa.Column("strategy_state_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("worker", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("federation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_federation_coordinator"), ["coordinator"], unique=False)
        batch_op.create_index(batch_op.f("ix_federation_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_federation_state"), ["state"], unique=False)

    op.create_table(
        "federation_contribution",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("global_in", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("update_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("num_examples", sa.Integer(), nullable=False),
        sa.Column("fit_metrics", sa.JSON(), nullable=False),
        sa.Column("eval_metrics", sa.JSON(), nullable=False),
        sa.Column("privacy", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("bytes_in", sa.Integer(), nullable=False),
        sa.Column("bytes_out", sa.Integer(), nullable=False),
        sa.Column("train_seconds", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("federation_contribution", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_federation_contribution_federation_id"), ["federation_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_federation_contribution_next_try_at"), ["next_try_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_federation_contribution_state"), ["state"], unique=False)

    op.create_table(
        "federation_member",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("provider_name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("endpoint", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("agreement_id", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=False),
        sa.Column("offering_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("dataset_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("num_train", sa.Integer(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("federation_member", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_federation_member_federation_id"), ["federation_id"], unique=False
        )

    op.create_table(
        "federation_round",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("global_in", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("global_out", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("merkle_root", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("asset_id", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("federation_round", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_federation_round_federation_id"), ["federation_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("federation_round", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_federation_round_federation_id"))

    op.drop_table("federation_round")
    with op.batch_alter_table("federation_member", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_federation_member_federation_id"))

    op.drop_table("federation_member")
    with op.batch_alter_table("federation_contribution", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_federation_contribution_state"))
        batch_op.drop_index(batch_op.f("ix_federation_contribution_next_try_at"))
        batch_op.drop_index(batch_op.f("ix_federation_contribution_federation_id"))

    op.drop_table("federation_contribution")
    with op.batch_alter_table("federation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_federation_state"))
        batch_op.drop_index(batch_op.f("ix_federation_created_at"))
        batch_op.drop_index(batch_op.f("ix_federation_coordinator"))

    op.drop_table("federation")
