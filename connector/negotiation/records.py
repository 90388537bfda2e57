"""How a negotiation, its log and its agreement are shown: plain dicts from their rows.

The management API and the agreement routes answer with these; a DSP peer never sees them
(it gets :mod:`connector.negotiation.messages`).
"""

from __future__ import annotations

from typing import Any

from connector.models import Agreement, Negotiation, NegotiationEvent
from connector.negotiation.terms import _asked
from kernel.db import as_utc


def negotiation_out(row: Negotiation) -> dict[str, Any]:
    return {
        "id": row.id,
        "role": row.role,
        "peer_pid": row.peer_pid,
        "counterparty": row.counterparty,
        "counterparty_endpoint": row.counterparty_endpoint,
        "state": row.state,
        "offering_id": row.offering_id,
        "purpose": row.purpose,
        "access_mode": row.access_mode,
        "asked": _asked(row),
        "agreement_id": row.agreement_id,
        "reason": row.reason,
        "created_at": as_utc(row.created_at).isoformat(),
        "updated_at": as_utc(row.updated_at).isoformat(),
    }


def event_out(e: NegotiationEvent) -> dict[str, Any]:
    return {
        "at": as_utc(e.at).isoformat(),
        "from": e.from_state,
        "to": e.to_state,
        "message": e.message_type,
        "signer": e.signer,
        "reason": e.reason,
        "accepted": e.accepted,
        "dsp_message": e.message,
    }


def agreement_out(a: Agreement) -> dict[str, Any]:
    return {
        "id": a.id,
        "negotiation_id": a.negotiation_id,
        "role": a.role,
        "provider": a.provider,
        "consumer": a.consumer,
        "offering_id": a.offering_id,
        "terms": a.terms,
        "terms_hash": a.terms_hash,
        "valid_until": a.valid_until,
        "uses": a.uses,
        "max_uses": a.max_uses,
        "chain_id": a.chain_id,
        "registry": a.registry_address,
        "tx_hash": a.tx_hash,
        "block_number": a.block_number,
        "provider_signature": a.provider_signature,
        "consumer_signature": a.consumer_signature,
        "created_at": as_utc(a.created_at).isoformat(),
    }
