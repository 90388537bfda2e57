"""catalog sha256 index: the notary updates own entries' anchor status by content hash

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 01:13:57.290761
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_entry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_catalog_entry_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("catalog_entry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalog_entry_sha256"))
