"""The coordinator's state of each securely aggregated round, kept across messages and restarts.

A round's state is its :class:`SecAggServer` (public keys, sealed shares, the masked sum, unmask
shares: never one provider's update) with the adverts' signatures and the masked updates'
hashes. It lives as one JSON object in the object store, named by its sha256 and referenced
from the round's config (``secagg_state``, with a summary of who has done what, which the round
driver and the rounds API read without opening the object). Every change runs under one lock per
round and one transaction that locks the round's row: the state is read, changed, written as a
new object and referenced, and the object it replaced is deleted after the commit. A failed
change leaves the previous object referenced and the cached copy is dropped, so nothing half-done
is kept in memory either.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session, select

from federation.models import FederationRound
from federation.secagg import SecAggServer
from federation.secagg_protocol import CONFIG, STATE, Parameters, is_secure, read_parameters, round_context
from federation.tensors import sha256_bytes
from kernel.db import transaction
from kernel.errors import AgoraError, InvalidInput
from kernel.storage import ObjectStore

log = logging.getLogger("agora.federation")
T = TypeVar("T")


@dataclass
class RoundState:
    """One secure round as the coordinator holds it: the server and what it routes beside it."""

    params: Parameters
    server: SecAggServer
    signatures: dict[int, str]  # id -> its organisation's signature over its keys
    masked: dict[int, str]  # id -> sha256 of its masked update
    blob: str  # the object this state was read from ("" before the first change)
    until: str | None  # when the current stage (after the keys) ends
    summary: dict[str, Any]

    @property
    def stage(self) -> str:
        return str(self.summary["stage"])


def summary_of(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """Who has done what, from the server's snapshot (kept in the round's config)."""
    if snapshot["advertised"] is None:
        stage = "keys"
    elif snapshot["shared"] is None:
        stage = "shares"
    elif snapshot["survivors"] is None:
        stage = "inputs"
    else:
        stage = "unmask"
    return {
        "stage": stage,
        "advertised": sorted(int(k) for k in snapshot["adverts"]),
        "shared": sorted(int(k) for k in snapshot["sealed"]),
        "inputs": list(snapshot["inputs"]),
        "unmasked": sorted(int(k) for k in snapshot["answers"]),
        "survivors": snapshot["survivors"],
    }


Change = Callable[[RoundState, FederationRound, Session], T]


class RoundStates:
    """Every secure round's state on this coordinator: read, changed and kept one at a time."""

    def __init__(self, engine: Engine, store: ObjectStore) -> None:
        self.engine = engine
        self.store = store
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._cache: dict[tuple[str, int], RoundState] = {}

    def forget(self, federation_id: str, number: int) -> None:
        """Drop what this process holds of a round that ended (its record stays)."""
        with self._guard:
            self._cache.pop((federation_id, number), None)
            self._locks.pop((federation_id, number), None)

    def lock(self, key: tuple[str, int]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def row(self, session: Session, federation_id: str, number: int, *, lock: bool) -> FederationRound:
        query = select(FederationRound).where(
            FederationRound.federation_id == federation_id, FederationRound.number == number
        )
        rnd = session.exec(query.with_for_update() if lock else query).first()
        if rnd is None or not is_secure(rnd.config):
            raise InvalidInput(
                f"round {number} of federation {federation_id} is not securely aggregated here"
            )
        return rnd

    def current(self, federation_id: str, number: int) -> RoundState:
        key = (federation_id, number)
        with self.lock(key):
            with Session(self.engine) as session:
                rnd = self.row(session, federation_id, number, lock=False)
            state = self._state(federation_id, rnd)
            self._cache[key] = state
            return state

    def change(self, federation_id: str, number: int, change: Change[T]) -> T:
        """Run ``change`` on the round's state and its row in one transaction, then keep the
        new state (in the object store, referenced from the row) and delete the one it replaced."""
        key = (federation_id, number)
        with self.lock(key):
            try:
                with transaction(self.engine) as session:
                    rnd = self.row(session, federation_id, number, lock=True)
                    state = self._state(federation_id, rnd)
                    replaced = state.blob
                    result = change(state, rnd, session)
                    self._save(federation_id, rnd, state)
                    session.add(rnd)
            except BaseException:
                self._cache.pop(key, None)  # whatever ``change`` did to it was not kept
                raise
            self._cache[key] = state
        if replaced and replaced != state.blob:
            try:
                self.store.delete(replaced)
            except (AgoraError, OSError) as exc:
                log.warning(
                    "federation %s round %s: a superseded state stays: %s", federation_id, number, exc
                )
        return result

    def _state(self, federation_id: str, rnd: FederationRound) -> RoundState:
        pointer = rnd.config.get(STATE) or {}
        blob = str(pointer.get("blob") or "")
        cached = self._cache.get((federation_id, rnd.number))
        if cached is not None and cached.blob == blob:
            return cached
        params = read_parameters(rnd.config[CONFIG])
        context = round_context(federation_id, rnd.number)
        ids = list(params.participants.values())
        if not blob:
            server = SecAggServer(params.config, ids, context, params.vector_length)
            return RoundState(params, server, {}, {}, "", None, summary_of(server.snapshot()))
        data = json.loads(b"".join(self.store.read(blob)))
        server = SecAggServer.restore(params.config, ids, context, params.vector_length, data["server"])
        return RoundState(
            params,
            server,
            {int(k): str(v) for k, v in data["signatures"].items()},
            {int(k): str(v) for k, v in data["masked"].items()},
            blob,
            pointer.get("until"),
            summary_of(data["server"]),
        )

    def _save(self, federation_id: str, rnd: FederationRound, state: RoundState) -> None:
        snapshot = state.server.snapshot()
        data = {
            "federation": federation_id,  # names the round, so no two rounds share an object
            "round": rnd.number,
            "server": snapshot,
            "signatures": {str(k): v for k, v in state.signatures.items()},
            "masked": {str(k): v for k, v in state.masked.items()},
        }
        raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        digest = sha256_bytes(raw)
        if digest != state.blob:
            self.store.put_bytes(raw, "application/json")
        state.blob, state.summary = digest, summary_of(snapshot)
        rnd.config = {**rnd.config, STATE: {"blob": digest, "until": state.until, **state.summary}}
