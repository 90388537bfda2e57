"""data quality and versions: quality declarations, per-version schema, trainability,
validation, profile and source; model aliases

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 04:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("offering") as batch:
        batch.add_column(sa.Column("quality_declared", sa.JSON(), nullable=True))
    with op.batch_alter_table("offering_version") as batch:
        batch.add_column(sa.Column("published", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.add_column(sa.Column("source", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("schema_doc", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("trainable", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("quality_status", sa.String(length=20), server_default="none", nullable=False)
        )
        batch.add_column(sa.Column("quality", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("profile", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("validation_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch.add_column(sa.Column("validation_notarization_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_offering_version_validation_notarization",
            "notarization",
            ["validation_notarization_id"],
            ["id"],
        )
    op.create_table(
        "offering_alias",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("offering_id", sa.String(length=36), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("notarization_id", sa.Integer(), nullable=True),
        sa.Column("moved_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["offering_id"], ["offering.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["notarization_id"], ["notarization.id"], name="fk_offering_alias_notarization"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("offering_id", "name", name="uq_offering_alias"),
    )
    op.create_index(op.f("ix_offering_alias_offering_id"), "offering_alias", ["offering_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_offering_alias_offering_id"), table_name="offering_alias")
    op.drop_table("offering_alias")
    with op.batch_alter_table("offering_version") as batch:
        batch.drop_constraint("fk_offering_version_validation_notarization", type_="foreignkey")
        for column in (
            "validation_notarization_id",
            "validation_sha256",
            "profile",
            "quality",
            "quality_status",
            "trainable",
            "schema_doc",
            "source",
            "published",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("offering") as batch:
        batch.drop_column("quality_declared")
