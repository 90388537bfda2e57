"""the plain Dataspace Protocol binding: participants' DIDs, kinds and DSP bases; transfer
callbacks, formats, data addresses and transition logs; negotiation options

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 14:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("participant") as batch:
        batch.add_column(sa.Column("did", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(length=10), server_default="agora", nullable=False))
        batch.add_column(sa.Column("dsp_url", sa.String(length=500), server_default="", nullable=False))
        batch.add_column(sa.Column("keys", sa.JSON(), nullable=True))
        batch.create_unique_constraint("uq_participant_did", ["did"])
    _identify_known_peers()
    with op.batch_alter_table("participant") as batch:  # the default served the rows there were
        batch.alter_column("dsp_url", server_default=None)
    with op.batch_alter_table("transfer_process") as batch:
        batch.add_column(sa.Column("callback", sa.String(length=600), server_default="", nullable=False))
        batch.add_column(sa.Column("format", sa.String(length=60), server_default="", nullable=False))
        batch.add_column(sa.Column("data_address", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("history", sa.JSON(), nullable=True))
    with op.batch_alter_table("transfer_process") as batch:
        batch.alter_column("callback", server_default=None)
        batch.alter_column("format", server_default=None)
    with op.batch_alter_table("negotiation") as batch:
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))
    with op.batch_alter_table("agreement") as batch:
        batch.add_column(sa.Column("finalized", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(
            sa.Column("peer_agreement_id", sa.String(length=500), server_default="", nullable=False)
        )
    with op.batch_alter_table("agreement") as batch:
        batch.alter_column("peer_agreement_id", server_default=None)
    bind = op.get_bind()
    # agreements recorded on chain were final; negotiations in progress now name the peer's DSP base
    bind.execute(sa.text("UPDATE agreement SET finalized = :yes WHERE tx_hash IS NOT NULL"), {"yes": True})
    bind.execute(
        sa.text(
            "UPDATE negotiation SET counterparty_endpoint = counterparty_endpoint || '/dsp' "
            "WHERE state NOT IN ('FINALIZED', 'TERMINATED')"
        )
    )


def _identify_known_peers() -> None:
    """Participants added before DIDs were Agora nodes: each one's DID is the did:web of its
    endpoint and its DSP base is ``/dsp`` under it (its keys are read from its document on
    its first message)."""
    from urllib.parse import quote, urlsplit

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT address, endpoint FROM participant")).fetchall()
    for address, endpoint in rows:
        parts = urlsplit(str(endpoint).rstrip("/"))
        if not parts.hostname:
            continue
        authority = quote(parts.hostname + (f":{parts.port}" if parts.port else ""), safe="")
        did = ":".join(["did", "web", authority, *[quote(s, safe="") for s in parts.path.split("/") if s]])
        bind.execute(
            sa.text("UPDATE participant SET did = :did, dsp_url = :dsp WHERE address = :address"),
            {"did": did, "dsp": str(endpoint).rstrip("/") + "/dsp", "address": address},
        )


def downgrade() -> None:
    with op.batch_alter_table("agreement") as batch:
        batch.drop_column("peer_agreement_id")
        batch.drop_column("finalized")
    with op.batch_alter_table("negotiation") as batch:
        batch.drop_column("options")
    with op.batch_alter_table("transfer_process") as batch:
        for column in ("history", "data_address", "format", "callback"):
            batch.drop_column(column)
    with op.batch_alter_table("participant") as batch:
        batch.drop_constraint("uq_participant_did", type_="unique")
        for column in ("keys", "dsp_url", "kind", "did"):
            batch.drop_column(column)
