"""negotiations, agreements, usage log, transfers and the outbound message queue

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 00:48:44.350148
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agreement",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=False),
        sa.Column("negotiation_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("consumer", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("offering_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("terms_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("valid_until", sa.Integer(), nullable=False),
        sa.Column("provider_signature", sqlmodel.sql.sqltypes.AutoString(length=140), nullable=False),
        sa.Column("consumer_signature", sqlmodel.sql.sqltypes.AutoString(length=140), nullable=False),
        sa.Column("chain_id", sa.Integer(), nullable=False),
        sa.Column("registry_address", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("tx_hash", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=True),
        sa.Column("block_number", sa.Integer(), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("agreement", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_agreement_consumer"), ["consumer"], unique=False)
        batch_op.create_index(batch_op.f("ix_agreement_negotiation_id"), ["negotiation_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_agreement_provider"), ["provider"], unique=False)

    op.create_table(
        "negotiation",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("peer_pid", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("counterparty", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("counterparty_endpoint", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("offering_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("access_mode", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("offer", sa.JSON(), nullable=False),
        sa.Column("agreement_id", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=True),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("negotiation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_negotiation_counterparty"), ["counterparty"], unique=False)
        batch_op.create_index(batch_op.f("ix_negotiation_peer_pid"), ["peer_pid"], unique=False)
        batch_op.create_index(batch_op.f("ix_negotiation_state"), ["state"], unique=False)

    op.create_table(
        "outbound_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("negotiation_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("recipient", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=600), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbound_message", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_outbound_message_negotiation_id"), ["negotiation_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_outbound_message_status"), ["status"], unique=False)

    op.create_table(
        "transfer_process",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("peer_pid", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("counterparty", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("agreement_id", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("transfer_process", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transfer_process_agreement_id"), ["agreement_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_transfer_process_state"), ["state"], unique=False)

    op.create_table(
        "usage_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("agreement_id", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mode", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_record_agreement_id"), ["agreement_id"], unique=False)

    op.create_table(
        "negotiation_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("negotiation_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_state", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=True),
        sa.Column("to_state", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("message_type", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
        sa.Column("signer", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("message", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["negotiation_id"],
            ["negotiation.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("negotiation_event", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_negotiation_event_negotiation_id"), ["negotiation_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("negotiation_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_negotiation_event_negotiation_id"))

    op.drop_table("negotiation_event")
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_record_agreement_id"))

    op.drop_table("usage_record")
    with op.batch_alter_table("transfer_process", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfer_process_state"))
        batch_op.drop_index(batch_op.f("ix_transfer_process_agreement_id"))

    op.drop_table("transfer_process")
    with op.batch_alter_table("outbound_message", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbound_message_status"))
        batch_op.drop_index(batch_op.f("ix_outbound_message_negotiation_id"))

    op.drop_table("outbound_message")
    with op.batch_alter_table("negotiation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_negotiation_state"))
        batch_op.drop_index(batch_op.f("ix_negotiation_peer_pid"))
        batch_op.drop_index(batch_op.f("ix_negotiation_counterparty"))

    op.drop_table("negotiation")
    with op.batch_alter_table("agreement", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agreement_provider"))
        batch_op.drop_index(batch_op.f("ix_agreement_negotiation_id"))
        batch_op.drop_index(batch_op.f("ix_agreement_consumer"))

    op.drop_table("agreement")
