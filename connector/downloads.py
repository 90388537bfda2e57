"""The consumer's side of a transfer: fetching an offering's bytes under an agreement.

The node requests the transfer, downloads into its own object store (resuming on a broken
connection), checks the bytes' sha256 against the agreed terms and, through the provenance
document, against the chain, then tells the provider it is complete. The file and its
provenance sidecar are then served to the node's own users (:meth:`DownloadService.received`).
The data address must be on the origin of the provider's verified endpoint, and no more than
the agreed size is taken from it (the download is cut off past it), through the node's
outbound client.

The provider's side, and the transfer records both sides read, are
:class:`connector.transfers.TransferService`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session

from connector.dsp.client import PeerClients
from connector.models import Agreement, Negotiation, TransferProcess
from connector.transfers import LIFECYCLE, TransferRefused, TransferService
from kernel.addresses import foreign_origin
from kernel.db import fetch, transaction
from kernel.errors import AgoraError, InvalidInput, NotFound, ServiceUnavailable
from kernel.limits import loads
from kernel.outbound import OutboundClient, OutboundRefused
from kernel.storage import ObjectStore

RESUME_ATTEMPTS = 5


class DownloadService:
    """The consumer's side of transfers; the records it writes are read through ``transfers``."""

    def __init__(
        self,
        engine: Engine,
        *,
        address: str,
        public_url: str,
        peers: PeerClients,
        outbound: OutboundClient,
        chain_rpc_url: str,
        store: ObjectStore,
        transfers: TransferService,
        verify: Callable[[dict[str, Any], str], str | None],
        start_timeout: float = 60.0,
    ) -> None:
        self.engine = engine
        self.address = address
        self.public_url = public_url.rstrip("/")
        self.peers = peers
        self.outbound = outbound
        self.chain_rpc_url = chain_rpc_url
        self.store = store
        self.transfers = transfers
        self._verify = verify
        self.start_timeout = start_timeout

    def start(self, agreement_id: str, actor: str) -> dict[str, Any]:
        """Request, wait for the provider's start, download, check against the terms (and, from
        an Agora node, the chain), complete; returns the transfer."""
        with Session(self.engine) as session:
            agreement = session.get(Agreement, agreement_id)
            negotiation = session.get(Negotiation, agreement.negotiation_id) if agreement else None
        if agreement is None or agreement.role != "consumer" or negotiation is None:
            raise NotFound(f"no agreement {agreement_id} with this node as consumer")
        if not (agreement.finalized or agreement.tx_hash):
            raise InvalidInput(f"agreement {agreement_id} is not finalized yet")
        cap = self._agreed_size(agreement)
        transfer_id = str(self.transfers.request(agreement_id, actor)["id"])
        sha256 = str(agreement.terms.get("sha256") or "")
        try:
            started = self._wait_started(transfer_id)
            url, token = _data_address(
                {"dataAddress": started.data_address}, negotiation.counterparty_endpoint, agreement.provider
            )
            received = self._download(started, url, token, cap)
            provenance: dict[str, Any] = {}
            if sha256:  # an Agora provider's terms name the bytes; its provenance names the chain
                provenance = self._fetch_provenance(url, token)
                refusal = chain_refusal(provenance, negotiation.counterparty_endpoint, self.chain_rpc_url)
                if refusal:
                    raise TransferRefused(refusal)
                problem = self._verify(provenance, sha256)
                if problem is not None:
                    raise TransferRefused(f"the bytes do not verify against the chain: {problem}")
        except AgoraError as exc:
            self._end(transfer_id, "TERMINATED", exc.detail)
            raise
        verified = "received and verified" if sha256 else "received (a DSP connector names no digest)"
        self._end(transfer_id, "COMPLETED", f"{verified} (requested by {actor})", received, provenance)
        return self.transfers.get(transfer_id)

    def _note_provider_pid(self, transfer_id: str, provider_pid: str) -> None:
        with transaction(self.engine) as session:
            row = session.get(TransferProcess, transfer_id, with_for_update=True)
            if row is not None and provider_pid and not row.peer_pid:
                row.peer_pid = provider_pid[:64]

    def _wait_started(self, transfer_id: str) -> TransferProcess:
        """The transfer once the provider's start message arrived (its data address with it)."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            with Session(self.engine) as session:
                row = session.get(TransferProcess, transfer_id)
            if row is None:
                raise NotFound(f"no transfer {transfer_id}")
            if row.state == "STARTED" and row.data_address:
                return row
            if row.state in LIFECYCLE.final:
                raise TransferRefused(f"the provider ended the transfer: {row.reason}")
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"the provider did not start the transfer within {self.start_timeout:.0f} s"
                )
            time.sleep(0.05)

    def _end(
        self,
        transfer_id: str,
        target: str,
        reason: str,
        received: tuple[str, int] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        """COMPLETED (the provider is told) or TERMINATED (told, unless it ended it)."""
        with transaction(self.engine) as session:
            row = session.get(TransferProcess, transfer_id, with_for_update=True)
            if row is None or row.state in LIFECYCLE.final:
                return
            if received is not None:
                row.sha256, row.size = received
            row.provenance = provenance or {}
            TransferService.move(session, row, target, reason)
            if row.peer_pid:
                kind = "completion" if target == "COMPLETED" else "termination"
                extra = (
                    {} if target == "COMPLETED" else {"code": "consumer-refused", "reason": [reason[:500]]}
                )
                self.transfers.send(session, row, kind, **extra)
        self.transfers.wake()

    def _agreed_size(self, agreement: Agreement) -> int:
        """The most bytes to take: the size in the agreed terms, within this node's cap."""
        limit = self.outbound.policy.max_download_bytes
        size = agreement.terms.get("size")
        if size is None:
            return limit  # terms agreed before sizes were part of them: the digest still decides
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TransferRefused(f"the agreed size {size!r} is not a byte count")
        if size > limit:
            raise TransferRefused(f"the agreed size {size} is over this node's download cap of {limit} bytes")
        return size

    def _download(self, row: TransferProcess, url: str, token: str, cap: int) -> tuple[str, int]:
        """Into a staging file, resuming with Range after a broken connection; never more
        than ``cap`` bytes."""
        with self.store.stage() as staged:
            for attempt in range(RESUME_ATTEMPTS):
                headers = {"Authorization": f"Bearer {token}"}
                if staged.size:
                    headers["Range"] = f"bytes={staged.size}-"
                try:
                    # cut off (and refused) past what is left of the agreed size
                    with self.outbound.stream(
                        "GET", url, headers=headers, max_bytes=cap - staged.size
                    ) as response:
                        if response.status_code >= 400:
                            raise TransferRefused(
                                f"the provider refused the data: HTTP {response.status_code}"
                            )
                        for chunk in response.iter_bytes(1024 * 1024):
                            staged.write(chunk)
                    break
                except OutboundRefused as exc:
                    raise TransferRefused(f"{exc.detail} (the agreed size is {cap} bytes)") from None
                except ServiceUnavailable as exc:
                    if attempt == RESUME_ATTEMPTS - 1:
                        raise ServiceUnavailable(
                            f"the download broke off {RESUME_ATTEMPTS} times: {exc.detail}"
                        ) from exc
            if row.sha256 and staged.sha256 != row.sha256:
                raise TransferRefused(
                    f"received bytes hash to {staged.sha256}, the agreement says {row.sha256}"
                )
            info = self.store.commit(staged)
            return staged.sha256, info.size

    def _fetch_provenance(self, data_url: str, token: str) -> dict[str, Any]:
        url = data_url.rsplit("/", 1)[0] + "/provenance"
        response = self.outbound.request("GET", url, headers={"Authorization": f"Bearer {token}"})
        try:
            response.raise_for_status()
            doc = loads(response.content, what="the transfer's provenance")
        except (httpx.HTTPError, InvalidInput) as exc:
            raise ServiceUnavailable(f"cannot fetch the provenance of the transfer: {exc}") from exc
        if not isinstance(doc, dict):
            raise TransferRefused("the transfer's provenance is not a JSON object")
        return doc

    def received(self, transfer_id: str) -> tuple[TransferProcess, Iterator[bytes]]:
        """A completed transfer's bytes on the consumer's node (for its own users)."""
        with Session(self.engine) as session:
            row = fetch(
                session,
                TransferProcess,
                transfer_id,
                f"no completed transfer {transfer_id} on this node",
                where=lambda t: t.role == "consumer" and t.state == "COMPLETED",
            )
        return row, self.store.read(row.sha256)


def _data_address(start: dict[str, Any], provider_endpoint: str, provider: str) -> tuple[str, str]:
    """The data URL and its token from a ``TransferStartMessage``; the URL must be on the
    origin of the provider's verified endpoint."""
    try:
        address = start["dataAddress"]
        url = str(address["endpoint"])
        token = next(
            str(p["value"]) for p in address["endpointProperties"] if p.get("name") == "authorization"
        )
    except (KeyError, TypeError, AttributeError, StopIteration):
        raise TransferRefused(
            "the provider's TransferStartMessage lacks a data address with a token"
        ) from None
    refusal = foreign_origin(
        url, provider_endpoint, "the data address", f"the provider {provider}'s verified"
    )
    if refusal:
        raise TransferRefused(refusal)
    return url, token


def chain_refusal(doc: dict[str, Any], provider_endpoint: str, own_chain_rpc: str) -> str | None:
    """Why the chain a provider's provenance document names may not be asked, or None.

    Checking received bytes means asking the chain the document names; the consumer's node
    asks only its own chain or one on the provider's verified origin (the provider's
    embedded chain at ``/chain/rpc``), never an address the provider picked elsewhere."""
    rpc = (doc.get("chain") or {}).get("rpc_url") if isinstance(doc.get("chain"), dict) else None
    if isinstance(rpc, str) and own_chain_rpc and rpc.rstrip("/") == own_chain_rpc.rstrip("/"):
        return None
    return foreign_origin(rpc, provider_endpoint, "the chain the provenance names", "the provider's verified")
