"""trust boundaries: operator-trusted peers, an offering's compute terms

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 17:30:00

Participants learned only from the on-chain registry stop being peers: ``trusted`` marks
those an operator added (``agora peers add`` or a manifest, both audited as
``participant.add``), which the upgrade carries over from the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("participant", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trusted", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index(batch_op.f("ix_participant_trusted"), ["trusted"], unique=False)
    op.execute(
        "UPDATE participant SET trusted = true WHERE address IN "
        "(SELECT subject_id FROM audit_log WHERE subject_type = 'participant' AND action = 'participant.add')"
    )
    with op.batch_alter_table("offering", schema=None) as batch_op:
        batch_op.add_column(sa.Column("compute_terms", sa.JSON(), server_default="{}", nullable=False))
    # the default only fills existing rows: the application always writes the column
    with op.batch_alter_table("offering", schema=None) as batch_op:
        batch_op.alter_column("compute_terms", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("offering", schema=None) as batch_op:
        batch_op.drop_column("compute_terms")
    with op.batch_alter_table("participant", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_participant_trusted"))
        batch_op.drop_column("trusted")
