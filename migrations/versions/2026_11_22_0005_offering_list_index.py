"""offering list index: (status, created_at, id) serves the newest-first page without a sort

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 00:39:16.475705
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("offering", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_offering_created_id"))
        batch_op.drop_index(batch_op.f("ix_offering_status"))
        batch_op.create_index("ix_offering_status_created_id", ["status", "created_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("offering", schema=None) as batch_op:
        batch_op.drop_index("ix_offering_status_created_id")
        batch_op.create_index(batch_op.f("ix_offering_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_offering_created_id"), ["created_at", "id"], unique=False)
