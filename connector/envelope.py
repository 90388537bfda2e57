"""Signed envelopes: how every protocol message between nodes travels.

An envelope carries the message (``body``) with the sender's address, the recipient's
address, a random nonce and a timestamp, signed with the sender's organisation key
(EIP-191 ``personal_sign`` over the RFC 8785 canonical JSON of everything but the
signature). A receiver accepts it only when

* the signature recovers to the named sender,
* the sender is a peer the operator added (or, when the operator opted in, a participant
  in the on-chain registry),
* the recipient is itself (an envelope for another node cannot be replayed here),
* the timestamp is within the allowed clock skew, and
* the nonce has not been seen from that sender before (replays are refused).

Each refusal is an :class:`EnvelopeRejected` naming the reason.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import is_address, to_checksum_address

from kernel.canonical import canonical_json
from kernel.errors import AgoraError

VERSION = "agora-envelope/1"
MAX_SKEW_SECONDS = 300
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")


class EnvelopeRejected(AgoraError):
    type_slug = "envelope-rejected"
    status = 401
    title = "Protocol message rejected"


class UnknownSender(EnvelopeRejected):
    type_slug = "unknown-sender"
    status = 403
    title = "Unknown participant"


class NotAPeer(UnknownSender):
    type_slug = "not-a-peer"
    title = "Not a peer of this node"


class ReplayedMessage(EnvelopeRejected):
    type_slug = "replayed-message"
    status = 409
    title = "Replayed protocol message"


@dataclass(frozen=True)
class Opened:
    """A verified envelope: who sent it and what it says."""

    sender: str
    recipient: str
    nonce: str
    timestamp: int
    body: dict[str, Any]
    sender_name: str = ""  # filled in by the protocol gate from the peer list or the registry
    sender_endpoint: str = ""  # the endpoint of the sender's verified identity
    sender_trusted: bool = False  # a peer the operator added (not only registered on chain)


def _signed_part(envelope: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in envelope.items() if k != "signature"})


def seal(
    body: dict[str, Any], *, private_key: bytes, recipient: str, now: float | None = None
) -> dict[str, Any]:
    """Wrap and sign ``body`` for ``recipient`` (a checksummed address)."""
    account = Account.from_key(private_key)
    envelope: dict[str, Any] = {
        "format": VERSION,
        "sender": account.address,
        "recipient": to_checksum_address(recipient),
        "nonce": secrets.token_hex(16),
        "timestamp": int(now if now is not None else time.time()),
        "body": body,
    }
    signed = Account.sign_message(encode_defunct(primitive=_signed_part(envelope)), private_key)
    envelope["signature"] = "0x" + bytes(signed.signature).hex()
    return envelope


def open_envelope(envelope: Any, *, recipient: str, now: float | None = None) -> Opened:
    """Check form, signature, recipient and timestamp; the caller checks sender and nonce."""
    if not isinstance(envelope, dict) or envelope.get("format") != VERSION:
        raise EnvelopeRejected(f"not a signed protocol envelope ({VERSION})")
    missing = [
        k for k in ("sender", "recipient", "nonce", "timestamp", "body", "signature") if k not in envelope
    ]
    if missing:
        raise EnvelopeRejected(f"the envelope lacks {', '.join(missing)}")
    sender, to = envelope["sender"], envelope["recipient"]
    if not (isinstance(sender, str) and is_address(sender) and isinstance(to, str) and is_address(to)):
        raise EnvelopeRejected("sender and recipient must be Ethereum addresses")
    if not isinstance(envelope["body"], dict):
        raise EnvelopeRejected("the envelope body must be a JSON object")
    nonce, timestamp = envelope["nonce"], envelope["timestamp"]
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
        raise EnvelopeRejected("the nonce must be a string of 16 to 128 characters")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise EnvelopeRejected("the timestamp must be an integer (unix seconds)")
    # the cheap checks before the costly one: canonicalising the whole message and
    # recovering the signer is done only for a well-formed, current message meant for us
    if to.lower() != recipient.lower():
        raise EnvelopeRejected(f"the message is addressed to {to}, not to this node ({recipient})")
    skew = abs((now if now is not None else time.time()) - timestamp)
    if skew > MAX_SKEW_SECONDS:
        raise EnvelopeRejected(
            f"the timestamp is {int(skew)} s away from this node's clock (limit {MAX_SKEW_SECONDS} s)"
        )
    signature = envelope["signature"]
    if not (isinstance(signature, str) and _SIGNATURE.fullmatch(signature)):
        raise EnvelopeRejected("the signature is malformed (expected 0x and 130 hex digits)")
    try:
        recovered = Account.recover_message(
            encode_defunct(primitive=_signed_part(envelope)), signature=signature
        )
    except Exception:  # any malformed signature is just a bad signature
        raise EnvelopeRejected("the signature is malformed") from None
    if recovered.lower() != sender.lower():
        raise EnvelopeRejected(f"bad signature: it was made by {recovered}, not by the sender {sender}")
    return Opened(to_checksum_address(sender), to_checksum_address(to), nonce, timestamp, envelope["body"])
