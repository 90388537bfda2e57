"""What both sides of a securely aggregated round share: the round's parameters and id map as
they travel in the round start, the round context, the signed adverts and the vector a provider
masks. The stages themselves are told in :mod:`federation.secagg_rounds` (the coordinator) and
:mod:`federation.secagg_local` (a provider)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import is_checksum_address

from federation.secagg import SecAggConfig, SecAggFailed, SecAggRejected, advert_statement
from federation.secagg.config import MAX_PARTICIPANTS, MAX_VECTOR
from federation.secagg.encoding import F64
from federation.secagg.wire import fields, participant
from federation.spec import FederationSpec
from federation.tensors import Weights
from kernel.errors import InvalidInput

CONFIG = "secure_aggregation"  # in a round's config: the parameters and the id map (sent to providers)
STATE = "secagg_state"  # in the coordinator's round config only: where its state is, who did what
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")


def is_secure(config: Mapping[str, Any]) -> bool:
    """Whether a round (its config, or a contribution's copy of it) is securely aggregated."""
    return isinstance(config.get(CONFIG), dict)


def round_context(federation_id: str, number: int) -> bytes:
    """What binds every key, share and mask to one round of one federation."""
    return f"agora-fl {federation_id} round {number}".encode()


def stage_seconds(round_deadline: float) -> float:
    return max(5.0, min(60.0, round_deadline / 4))


@dataclass(frozen=True)
class Parameters:
    """The secure-aggregation part of a round's config, checked."""

    config: SecAggConfig
    participants: dict[str, int]  # checksummed provider address -> id
    vector_length: int
    stage_seconds: float

    def address_of(self, pid: int) -> str | None:
        return next((a for a, i in self.participants.items() if i == pid), None)

    def id_of(self, address: str) -> int | None:
        return next((i for a, i in self.participants.items() if a.lower() == address.lower()), None)


def read_parameters(raw: object) -> Parameters:
    """The round's parameters as another node sent them, held to the library's rules."""
    what = "the round's secure-aggregation parameters"
    data = fields(raw, ("config", "participants", "vector_length", "stage_seconds"), what)
    config = SecAggConfig.from_wire(data["config"])
    given = data["participants"]
    if not isinstance(given, Mapping) or not 2 <= len(given) <= MAX_PARTICIPANTS:
        raise SecAggRejected(f"{what}: participants must map 2 to {MAX_PARTICIPANTS} addresses to ids")
    participants: dict[str, int] = {}
    for address, pid in given.items():
        if not (isinstance(address, str) and is_checksum_address(address)):
            raise SecAggRejected(f"{what}: {str(address)[:44]!r} is not a checksummed address")
        participants[address] = participant(pid, f"{what}: the id of {address}")
    if len({a.lower() for a in participants}) != len(participants):
        raise SecAggRejected(f"{what}: an address is named twice")
    config.check_participants(participants.values())
    length, seconds = data["vector_length"], data["stage_seconds"]
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_VECTOR:
        raise SecAggRejected(f"{what}: vector_length must be an integer from 1 to {MAX_VECTOR}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 1 <= seconds <= 3600:
        raise SecAggRejected(f"{what}: stage_seconds must be a number from 1 to 3600")
    return Parameters(config, participants, length, float(seconds))


def sign_advert(private_key: bytes, context: bytes, pid: int, advert: Mapping[str, str]) -> str:
    """The provider's organisation signature over its keys for this round (EIP-191)."""
    signed = Account.sign_message(
        encode_defunct(primitive=advert_statement(context, pid, advert)), private_key
    )
    return "0x" + bytes(signed.signature).hex()


def check_advert(context: bytes, pid: int, advert: object, signature: object, address: str) -> None:
    """Refuse keys for participant ``pid`` unless ``address`` (the id map's) signed them."""
    what = f"the keys of participant {pid}"
    statement = advert_statement(context, pid, advert)
    if not (isinstance(signature, str) and _SIGNATURE.fullmatch(signature)):
        raise SecAggRejected(f"{what} carry no well-formed signature (0x and 130 hex digits)")
    try:
        signer = Account.recover_message(encode_defunct(primitive=statement), signature=signature)
    except Exception:  # any malformed signature is just a bad signature
        raise SecAggRejected(f"{what} carry a malformed signature") from None
    if signer.lower() != address.lower():
        raise SecAggRejected(f"{what} are signed by {signer}, not by {address}")


def vector_length(layout: Mapping[str, Any]) -> int:
    return sum(int(np.prod(shape, dtype=np.int64)) for shape, _ in layout.values())


def update_vector(global_weights: Weights, update: Weights, names: list[str]) -> F64:
    """What a provider masks: its update minus the global weights, flat, in the model's order.
    The change of a round is small and centred, so the clipping range bounds it and not the
    weights themselves."""
    return np.concatenate(
        [
            (np.asarray(update[n], np.float64) - np.asarray(global_weights[n], np.float64)).ravel()
            for n in names
        ]
    )


def round_parameters(
    spec: FederationSpec, num_train: Mapping[str, int], layout: Mapping[str, Any]
) -> dict[str, Any]:
    """The round config's secure-aggregation part for the round's providers (address → rows)."""
    chosen = sorted(num_train)
    n, threshold = len(chosen), spec.threshold()
    if n < 2:
        raise SecAggFailed(f"secure aggregation needs two providers in a round; {n} still contribute")
    if threshold > n:
        raise SecAggFailed(
            f"the reconstruction threshold {threshold} exceeds the {n} providers that still contribute"
        )
    options = spec.secure_aggregation
    config = SecAggConfig.fitted(
        n,
        threshold,
        num_shares=n if n < 2 * threshold else 2 * threshold - 1,  # SecAgg+'s ring past that
        clipping_range=options.clipping_range,
        quantization_range=options.quantization_range,
        max_examples=max(1, *num_train.values()),
    )
    return {
        "config": config.wire(),
        "participants": {address: index for index, address in enumerate(chosen)},
        "vector_length": vector_length(layout),
        "stage_seconds": stage_seconds(spec.round_deadline),
    }


def secure_view(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """A round's secure aggregation as the rounds API shows it: parameters, progress by address."""
    if not is_secure(config):
        return None
    params = config[CONFIG]
    names = {i: a for a, i in params["participants"].items()}
    state = config.get(STATE) or {}

    def who(key: str) -> list[str]:
        return [names.get(i, str(i)) for i in state.get(key) or []]

    return {
        "enabled": True,
        "threshold": params["config"]["reconstruction_threshold"],
        "participants": params["participants"],
        "stage": state.get("stage", "keys"),
        "advertised": who("advertised"),
        "shared": who("shared"),
        "masked": who("inputs"),
        "unmasked": who("unmasked"),
        "survivors": who("survivors") if state.get("survivors") is not None else None,
    }


def message_round(body: Mapping[str, Any], kind: str) -> int:
    if body.get("type") != kind:
        raise InvalidInput(f"expected a {kind} message, not {str(body.get('type'))[:40]!r}")
    number = body.get("round")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise InvalidInput("a secure-aggregation message names its round (1, 2, …)")
    return number
