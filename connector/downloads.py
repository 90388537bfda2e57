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

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session

from connector.dsp import DSP_CONTEXT
from connector.dsp.client import PeerClients
from connector.models import Agreement, Negotiation, TransferProcess
from connector.transfers import TransferRefused, TransferService
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

    def start(self, agreement_id: str, actor: str) -> dict[str, Any]:
        """Request, download, check against terms and chain, confirm; returns the transfer."""
        with Session(self.engine) as session:
            agreement = session.get(Agreement, agreement_id)
            negotiation = session.get(Negotiation, agreement.negotiation_id) if agreement else None
        if agreement is None or agreement.role != "consumer" or negotiation is None:
            raise NotFound(f"no agreement {agreement_id} with this node as consumer")
        if not (agreement.finalized or agreement.tx_hash):
            raise InvalidInput(f"agreement {agreement_id} is not finalized yet")
        row = TransferProcess(
            id=f"urn:uuid:{uuid.uuid4()}",
            role="consumer",
            counterparty=agreement.provider,
            agreement_id=agreement_id,
            state="REQUESTED",
            sha256=str(agreement.terms["sha256"]),
        )
        client = self.peers.to(agreement.provider)
        try:
            cap = self._agreed_size(agreement)
            start, _ = client.post(
                "/transfers/request",
                {
                    "@context": DSP_CONTEXT,
                    "@type": "TransferRequestMessage",
                    "consumerPid": row.id,
                    "agreementId": agreement_id,
                    "format": "HttpData-PULL",
                    "callbackAddress": f"{self.public_url}/dsp",
                },
            )
            row.peer_pid = str(start.get("providerPid") or "")
            row.state = "STARTED"
            url, token = _data_address(start, negotiation.counterparty_endpoint, agreement.provider)
            self._download(row, url, token, cap)
            doc = self._fetch_provenance(url, token)
            refusal = chain_refusal(doc, negotiation.counterparty_endpoint, self.chain_rpc_url)
            if refusal:
                raise TransferRefused(refusal)
            problem = self._verify(doc, row.sha256)
            if problem is not None:
                raise TransferRefused(f"the bytes do not verify against the chain: {problem}")
            row.provenance = doc
            client.post(
                f"/transfers/{row.peer_pid}/completion",
                {
                    "@context": DSP_CONTEXT,
                    "@type": "TransferCompletionMessage",
                    "providerPid": row.peer_pid,
                    "consumerPid": row.id,
                },
            )
            row.state, row.reason = "COMPLETED", f"received and verified (requested by {actor})"
        except AgoraError as exc:
            row.state, row.reason = "TERMINATED", exc.detail
            raise
        finally:
            with transaction(self.engine) as session:
                session.merge(row)
        return self.transfers.get(row.id)

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

    def _download(self, row: TransferProcess, url: str, token: str, cap: int) -> None:
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
            if staged.sha256 != row.sha256:
                raise TransferRefused(
                    f"received bytes hash to {staged.sha256}, the agreement says {row.sha256}"
                )
            info = self.store.commit(staged)
            row.size = info.size

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
