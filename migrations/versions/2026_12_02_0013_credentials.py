"""verifiable credentials (DCP): the credentials this node holds and the issuers it trusts

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 18:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "held_credential",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_held_credential_type", "held_credential", ["type"])
    op.create_table(
        "trusted_issuer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("did", sa.String(length=500), nullable=False),
        sa.Column("credential_type", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("did", "credential_type", name="uq_trusted_issuer"),
    )
    op.create_index("ix_trusted_issuer_did", "trusted_issuer", ["did"])


def downgrade() -> None:
    op.drop_index("ix_trusted_issuer_did", table_name="trusted_issuer")
    op.drop_table("trusted_issuer")
    op.drop_index("ix_held_credential_type", table_name="held_credential")
    op.drop_table("held_credential")
