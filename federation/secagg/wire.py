"""Reading secure-aggregation messages that another organisation's node sent.

Every message is JSON: objects keyed by participant ids (decimal strings, as JSON keys must be
strings), base64 strings of a fixed decoded size, lists of ids. Each reader names what it
refuses in one line; none of them trusts a size, a type or an id it did not check.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from federation.secagg.config import MAX_ID, MAX_PARTICIPANTS, SecAggRejected, framed
from federation.secagg.crypto import KEY_BYTES, is_low_order

ADVERT_FIELDS = ("mask_key", "share_key", "seed_commitment")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: object, size: int, what: str) -> bytes:
    """Exactly ``size`` bytes from canonical base64, or a refusal naming ``what``."""
    if not isinstance(value, str) or len(value) != 4 * ((size + 2) // 3):
        raise SecAggRejected(f"{what} must be base64 of {size} bytes")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SecAggRejected(f"{what} is not base64") from None
    if len(raw) != size or b64(raw) != value:
        raise SecAggRejected(f"{what} must be base64 of {size} bytes")
    return raw


def participant(value: object, what: str) -> int:
    """An id given as an int or as its decimal string (a JSON key)."""
    if (
        isinstance(value, str)
        and value.isascii()
        and value.isdigit()
        and len(value) <= 5
        and str(int(value)) == value
    ):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise SecAggRejected(f"{what}: {str(value)[:20]!r} is not a participant id")
    return value


def by_participant(value: object, what: str) -> dict[int, Any]:
    """An object keyed by participant ids (at most as many as a round can have)."""
    if not isinstance(value, Mapping):
        raise SecAggRejected(f"{what} must be an object keyed by participant id")
    if len(value) > MAX_PARTICIPANTS:
        raise SecAggRejected(
            f"{what} names {len(value)} participants; a round has at most {MAX_PARTICIPANTS}"
        )
    out: dict[int, Any] = {}
    for key, item in value.items():
        pid = participant(key, what)
        if pid in out:
            raise SecAggRejected(f"{what} names participant {pid} twice")
        out[pid] = item
    return out


def exactly(found: Collection[int], expected: Collection[int], what: str) -> None:
    """Refuse unless ``found`` names exactly the participants ``expected``."""
    extra = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    if extra:
        raise SecAggRejected(f"{what} names participants it may not: {extra[:8]}")
    if missing:
        raise SecAggRejected(f"{what} lacks participants {missing[:8]}")


def ids(value: object, what: str) -> list[int]:
    """A list of distinct participant ids."""
    if not isinstance(value, list | tuple) or len(value) > MAX_PARTICIPANTS:
        raise SecAggRejected(f"{what} must be a list of at most {MAX_PARTICIPANTS} participant ids")
    out = [participant(v, what) for v in value]
    if len(set(out)) != len(out):
        raise SecAggRejected(f"{what} names a participant twice")
    return out


def fields(value: object, names: tuple[str, ...], what: str) -> Mapping[str, Any]:
    """An object with exactly the fields ``names``."""
    if not isinstance(value, Mapping):
        raise SecAggRejected(f"{what} must be an object")
    keys = set(value)
    if keys != set(names):
        unknown = sorted(str(k)[:40] for k in keys - set(names))
        missing = sorted(set(names) - keys)
        raise SecAggRejected(f"{what}: unknown fields {unknown or '-'}, missing {missing or '-'}")
    return value


@dataclass(frozen=True)
class Advert:
    """A participant's public keys for one round and its commitment to its self-mask seed."""

    mask_key: bytes
    share_key: bytes
    seed_commitment: bytes

    def wire(self) -> dict[str, str]:
        return {
            "mask_key": b64(self.mask_key),
            "share_key": b64(self.share_key),
            "seed_commitment": b64(self.seed_commitment),
        }

    @classmethod
    def read(cls, value: object, what: str) -> Advert:
        data = fields(value, ADVERT_FIELDS, what)
        advert = cls(*(unb64(data[name], KEY_BYTES, f"{what}.{name}") for name in ADVERT_FIELDS))
        if advert.mask_key == advert.share_key:
            raise SecAggRejected(f"{what} uses one public key for both purposes")
        for name, key in (("mask_key", advert.mask_key), ("share_key", advert.share_key)):
            if is_low_order(key):
                raise SecAggRejected(f"{what}.{name} is a low-order point")
        return advert


def distinct_keys(adverts: Mapping[int, Advert], what: str) -> None:
    """Refuse a public key that two participants, or both purposes of one, share (a copied key)."""
    seen: dict[bytes, int] = {}
    for pid, advert in adverts.items():
        for key in (advert.mask_key, advert.share_key):
            if key in seen:
                raise SecAggRejected(
                    f"{what}: participant {pid} sends a public key participant {seen[key]} sent"
                )
            seen[key] = pid


def advert_statement(round_context: bytes, pid: int, advert: object) -> bytes:
    """The bytes a provider signs with its organisation key so that its peers, not only the
    coordinator, can check that the keys they are given for ``pid`` this round are its own.

    Secure aggregation cannot tell a substituted key from a real one by itself: the coordinator
    routes the adverts. A round protocol that carries each advert with its provider's signature
    over this statement, checked by every receiving provider before :meth:`SecAggClient.share_keys`,
    closes that gap."""
    keys = Advert.read(advert, f"the keys of participant {pid}")
    return (
        b"agora-secagg advert v1"
        + framed(round_context, pid)
        + keys.mask_key
        + keys.share_key
        + keys.seed_commitment
    )
