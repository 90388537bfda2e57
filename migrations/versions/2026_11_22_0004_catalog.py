"""catalog: own and peers' offerings in one searchable table (FTS5 on SQLite, tsvector on PostgreSQL)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 00:30:36.470231
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "catalog_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("offering_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("local", sa.Boolean(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("license", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("media_type", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("access_modes", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("anchor_status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=True),
        sa.Column("search_text", sa.String(), nullable=False),
        sa.Column("filter_tags", sa.String(), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "offering_id", name="uq_catalog_entry"),
    )
    with op.batch_alter_table("catalog_entry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_catalog_entry_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_catalog_entry_license"), ["license"], unique=False)
        batch_op.create_index(batch_op.f("ix_catalog_entry_local"), ["local"], unique=False)
        batch_op.create_index("ix_catalog_entry_order", ["modified_at", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_catalog_entry_provider"), ["provider"], unique=False)

    op.create_table(
        "peer_catalog_state",
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("endpoint", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("modified_cursor", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("provider"),
    )
    _create_full_text_search()


# Full-text search is kept by the database itself, so every writer (the offering services,
# the crawler, a bulk import) gets it for free. Neither piece is part of the SQLModel
# metadata; node.db.SEARCH_OBJECTS keeps the drift check from reporting them.
def _create_full_text_search() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE catalog_fts USING fts5("
            "search_text, content='catalog_entry', content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
        )
        op.execute(
            "CREATE TRIGGER catalog_fts_insert AFTER INSERT ON catalog_entry BEGIN "
            "INSERT INTO catalog_fts(rowid, search_text) VALUES (new.id, new.search_text); END"
        )
        op.execute(
            "CREATE TRIGGER catalog_fts_delete AFTER DELETE ON catalog_entry BEGIN "
            "INSERT INTO catalog_fts(catalog_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text); END"
        )
        op.execute(
            "CREATE TRIGGER catalog_fts_update AFTER UPDATE OF search_text ON catalog_entry BEGIN "
            "INSERT INTO catalog_fts(catalog_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text); "
            "INSERT INTO catalog_fts(rowid, search_text) VALUES (new.id, new.search_text); END"
        )
    else:
        op.execute(
            "ALTER TABLE catalog_entry ADD COLUMN search_vector tsvector "
            "GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED"
        )
        op.execute("CREATE INDEX ix_catalog_entry_search ON catalog_entry USING GIN (search_vector)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("catalog_fts_insert", "catalog_fts_delete", "catalog_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS catalog_fts")
    else:
        op.execute("DROP INDEX IF EXISTS ix_catalog_entry_search")
    op.drop_table("peer_catalog_state")
    with op.batch_alter_table("catalog_entry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalog_entry_provider"))
        batch_op.drop_index("ix_catalog_entry_order")
        batch_op.drop_index(batch_op.f("ix_catalog_entry_local"))
        batch_op.drop_index(batch_op.f("ix_catalog_entry_license"))
        batch_op.drop_index(batch_op.f("ix_catalog_entry_kind"))

    op.drop_table("catalog_entry")
