"""The federated catalog crawler: keeps a copy of every peer's catalog, in the background.

Each pass asks every peer for what changed since the last successful crawl (a signed DSP
``CatalogRequestMessage`` whose filter carries ``agora:modifiedSince``), follows the pages
(``Link: <…>; rel="next"``), and stores the datasets and removals. A peer that is down keeps
its last copy, marked stale with its age; user requests only ever read the copy. Every
``full_every`` passes a full crawl drops entries a peer no longer lists to this node (its
policy may have changed).

Only peers the operator added are crawled; a pass first drops any copy of a provider that
is not (or no longer) a peer, so nothing a registry-only participant serves is ever listed.
Requests go through the node's outbound client: a peer that redirects, answers too much or
too slowly fails its crawl with that reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from connector.dsp import DSP_CONTEXT
from connector.dsp.client import PeerClients
from connector.models import Participant
from kernel.db import as_utc
from kernel.errors import AgoraError
from kernel.outbound import OutboundClient
from kernel.worker import BackgroundWorker
from marketplace.catalog import CatalogService

log = logging.getLogger("agora.crawler")
MAX_PAGES = 1000
PAGE = 500  # datasets per catalog page asked of a peer


class CatalogCrawler(BackgroundWorker):
    name = "agora-crawler"

    def __init__(
        self,
        catalog: CatalogService,
        *,
        peers: Callable[[], list[Participant]],
        outbound: OutboundClient,
        clients: PeerClients,
        interval: float = 30.0,
        full_every: int = 10,
    ) -> None:
        self.catalog = catalog
        self._peers = peers
        self.outbound = outbound
        self.clients = clients
        super().__init__(interval)
        self.full_every = full_every
        self._passes = 0

    def tick(self) -> None:
        self.crawl_all()

    def crawl_all(self, *, full: bool | None = None) -> dict[str, str]:
        """One pass over every peer; returns each peer's outcome."""
        self._passes += 1
        full_pass = full if full is not None else self._passes % self.full_every == 1
        outcome = {}
        peers = self._peers()
        dropped = self.catalog.keep_only_providers({p.address for p in peers})
        if dropped:
            log.info("dropped %d catalog entries of providers that are not peers", dropped)
        for peer in peers:
            outcome[peer.address] = self.crawl_recorded(peer, full=full_pass)
        return outcome

    def crawl_recorded(self, peer: Participant, *, full: bool = False) -> str:
        """Crawl one peer; a bad answer is recorded as that peer's failed crawl, never raised."""
        try:
            return f"ok: {self.crawl(peer, full=full)} dataset(s)"
        except (AgoraError, ValueError, TypeError, KeyError, httpx.InvalidURL) as exc:
            detail = exc.detail if isinstance(exc, AgoraError) else f"malformed catalog: {exc!r}"[:500]
            self.catalog.record_crawl(peer.address, peer.endpoint, ok=False, error=detail)
            log.warning("crawl of %s (%s) failed: %s", peer.name, peer.endpoint, detail)
            return f"failed: {detail}"

    def crawl(self, peer: Participant, *, full: bool = False) -> int:
        """Fetch one peer's catalog (changes since the last crawl unless ``full``)."""
        state = self.catalog.crawl_state(peer.address)
        since = (
            None if full or state is None or state.modified_cursor is None else as_utc(state.modified_cursor)
        )
        client = self.clients.to(peer.address)
        message: dict[str, Any] = {"@context": DSP_CONTEXT, "@type": "CatalogRequestMessage", "filter": []}
        plain = peer.kind != "agora"  # another connector: the DSP message alone, every crawl in full
        if since is not None and not plain:
            message["filter"] = [{"agora:modifiedSince": since.isoformat()}]
        seen: set[str] = set()
        cursor, newest = None, since
        for _ in range(MAX_PAGES):
            params = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
            body, response = client.post("/catalog/request", message, params=params)
            if str(body.get("participantId", "")).lower() not in (
                peer.address.lower(),
                (peer.did or "").lower(),
            ):
                raise AgoraError(f"{peer.endpoint} served the catalog of {body.get('participantId')}")
            seen |= self.catalog.store_peer_page(peer.address, body)
            until = body.get("agora:modifiedUntil")
            if until:
                stamp = as_utc(datetime.fromisoformat(until))
                newest = stamp if newest is None or stamp > newest else newest
            nxt = response.links.get("next", {}).get("url")
            if not nxt:
                break
            cursor = httpx.URL(nxt).params.get("cursor")
        if full:
            self.catalog.retain_only(peer.address, seen)
        self.catalog.record_crawl(peer.address, peer.endpoint, ok=True, cursor=newest)
        return len(seen)
