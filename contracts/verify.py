"""``agora verify``: check a file or an asset against the chain, trusting nothing else.

Every claim of a provenance document is recomputed or asked of the registry: the file's
sha256, the asset id, the metadata hash, the inclusion proof (checked by the registry's
own ``verifyBatchMember``) or the direct anchor, the owner's participant record, the
transaction, and — recursively — the parents the registry lists. The first failed check
of an asset is its reason; the file is VERIFIED only when every asset in the tree is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.chain import Chain
from contracts.errors import ChainReverted, ChainUnavailable, RegistryMissing
from contracts.provenance import FORMAT
from contracts.registry import KINDS, Registry, asset_id
from kernel.canonical import canonical_hash
from kernel.errors import AgoraError, InvalidInput
from kernel.sidecar import sidecar_of

if TYPE_CHECKING:
    from kernel.outbound import OutboundClient


class CannotCheck(AgoraError):
    """The check could not be carried out (exit 2): chain unreachable, no registry, …"""

    type_slug = "cannot-verify"
    status = 503
    title = "Could not verify"


@dataclass
class AssetCheck:
    """The verdict on one asset of the tree."""

    asset_id: str
    kind: str = "?"
    sha256: str = ""
    title: str = ""
    owner: str = ""
    owner_name: str = ""
    anchor: str = ""
    block_number: int | None = None
    tx_hash: str | None = None
    anchored_at: str | None = None
    result_hash: str | None = None
    result: dict[str, Any] | None = None
    reason: str | None = None
    facts: list[str] = field(default_factory=list)  # from the metadata its anchored hash covers
    parents: list[AssetCheck] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.reason is None and all(p.verified for p in self.parents)

    def first_failure(self) -> str | None:
        if self.reason is not None:
            return (
                f"{self.kind} {self.asset_id[:12]}…: {self.reason}"
                if self.parents or self.asset_id
                else self.reason
            )
        for parent in self.parents:
            found = parent.first_failure()
            if found:
                return found
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "asset_id": self.asset_id,
            "kind": self.kind,
            "sha256": self.sha256,
            "title": self.title,
            "owner": self.owner,
            "owner_name": self.owner_name,
            "anchor": self.anchor,
            "block_number": self.block_number,
            "tx_hash": self.tx_hash,
            "anchored_at": self.anchored_at,
            "result_hash": self.result_hash,
            "result": self.result,
            "verified": self.verified,
            "reason": self.reason,
            "facts": self.facts,
            "parents": [p.as_dict() for p in self.parents],
        }


@dataclass
class Report:
    subject: str
    chain_id: int | None
    registry: str | None
    root: AssetCheck

    @property
    def verified(self) -> bool:
        return self.root.verified

    @property
    def reason(self) -> str | None:
        return self.root.first_failure()

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "verified": self.verified,
            "reason": self.reason,
            "chain_id": self.chain_id,
            "registry": self.registry,
            "asset": self.root.as_dict(),
        }


def load_sidecar(path: Path) -> dict[str, Any] | None:
    sidecar = sidecar_of(path)
    if not sidecar.exists():
        return None
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{sidecar} is not a provenance document: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidInput(f"{sidecar} is not a provenance document ({FORMAT})")
    return doc


class Verifier:
    def __init__(self, chain: Chain, trusted_registry: str | None = None) -> None:
        self.chain = chain
        self.trusted_registry = trusted_registry
        self._registries: dict[str, Registry] = {}

    def registry(self, address: str) -> Registry:
        if address not in self._registries:
            try:
                self.chain.check_registry(address)
            except RegistryMissing as exc:
                raise CannotCheck(exc.detail) from exc
            self._registries[address] = Registry(self.chain, address)
        return self._registries[address]

    def verify(self, doc: dict[str, Any], subject: str, content_sha256: str | None = None) -> Report:
        try:
            chain_id = self.chain.chain_id
        except ChainUnavailable as exc:
            raise CannotCheck(exc.detail) from exc
        root = self._check(doc, content_sha256, chain_id, depth=0)
        registry = (doc.get("chain") or {}).get("registry")
        return Report(subject, chain_id, self.trusted_registry or registry, root)

    def find_by_content(self, sha256_hex: str, registry_address: str) -> dict[str, Any] | None:
        """A direct anchor of these bytes on the registry (no sidecar needed), from its events."""
        registry = self.registry(registry_address)
        with self.chain.guard():
            logs = registry.contract.events.AssetAnchored().get_logs(
                from_block=0, argument_filters={"contentHash": bytes.fromhex(sha256_hex)}
            )
        if not logs:
            return None
        args = logs[0]["args"]
        return {
            "format": FORMAT,
            "asset": {
                "id": "0x" + bytes(args["id"]).hex(),
                "kind": KINDS[args["kind"]],
                "sha256": sha256_hex,
                "owner": args["owner"],
                "metadata_hash": bytes(args["metadataHash"]).hex(),
            },
            "chain": {"chain_id": self.chain.chain_id, "registry": registry_address},
            "anchor": {
                "status": "ANCHORED",
                "mode": "direct",
                "tx_hash": "0x" + bytes(logs[0]["transactionHash"]).hex().removeprefix("0x"),
                "block_number": int(logs[0]["blockNumber"]),
            },
            "parents": [],
        }

    # One asset ------------------------------------------------------------------------

    def _check(
        self, doc: dict[str, Any], content_sha256: str | None, chain_id: int, depth: int
    ) -> AssetCheck:
        asset = doc.get("asset") or {}
        check = AssetCheck(
            asset_id=str(asset.get("id", "")),
            kind=str(asset.get("kind", "?")),
            sha256=str(asset.get("sha256", "")),
            owner=str(asset.get("owner", "")),
            title=str((asset.get("metadata") or {}).get("title", "")),
        )
        try:
            self._check_asset(check, doc, content_sha256, chain_id, depth)
        except _Fail as fail:
            check.reason = str(fail)
        except ChainReverted as exc:
            check.reason = exc.detail
        except ChainUnavailable as exc:
            raise CannotCheck(exc.detail) from exc
        return check

    def _check_asset(
        self, check: AssetCheck, doc: dict[str, Any], content_sha256: str | None, chain_id: int, depth: int
    ) -> None:
        asset, chain, anchor = doc.get("asset") or {}, doc.get("chain") or {}, doc.get("anchor") or {}
        status = anchor.get("status")
        if status != "ANCHORED":
            raise _Fail(f"not anchored on chain (status {status or 'unknown'})")
        if content_sha256 is not None and content_sha256 != check.sha256:
            raise _Fail(
                f"the file's sha256 {content_sha256} does not match the anchored sha256 {check.sha256}"
            )
        if check.kind not in KINDS:
            raise _Fail(f"unknown asset kind {check.kind!r}")
        if chain.get("chain_id") is not None and int(chain["chain_id"]) != chain_id:
            raise _Fail(f"anchored on chain {chain['chain_id']}, but the chain checked is {chain_id}")
        registry_address = str(chain.get("registry") or "")
        if self.trusted_registry and registry_address.lower() != self.trusted_registry.lower():
            raise _Fail(
                f"anchored in registry {registry_address or '(none)'}, not in the trusted registry "
                f"{self.trusted_registry}"
            )
        if not registry_address:
            raise _Fail("the provenance record names no registry")
        registry = self.registry(registry_address)
        try:
            content = bytes.fromhex(check.sha256)
            metadata_hash = bytes.fromhex(str(asset.get("metadata_hash", "")))
        except ValueError:
            raise _Fail("malformed hashes in the provenance record") from None
        if len(content) != 32 or len(metadata_hash) != 32:
            raise _Fail("malformed hashes in the provenance record")
        expected_id = "0x" + asset_id(check.owner, check.kind, content).hex()
        if check.asset_id.lower() != expected_id:
            raise _Fail(
                f"asset id {check.asset_id} is not the id of this owner, kind and content ({expected_id})"
            )
        metadata = asset.get("metadata")
        if metadata is not None and canonical_hash(metadata) != metadata_hash.hex():
            raise _Fail("the metadata in the provenance record does not match its anchored metadata hash")
        if anchor.get("mode") == "batch":
            root = self._check_batch(check, registry, anchor, content, metadata_hash)
            on_chain_parents: list[str] = []
            anchored_by = ("BatchAnchored", "root", root, f"batch 0x{root.hex()}")
        else:
            on_chain_parents = self._check_direct(check, registry, content, metadata_hash)
            self._check_attestation(check, doc)
            anchored_by = (
                "AssetAnchored",
                "id",
                bytes.fromhex(check.asset_id.removeprefix("0x")),
                f"asset {check.asset_id}",
            )
        participant = registry.participant(check.owner)
        if participant is None:
            raise _Fail(f"the owner {check.owner} is not a registered participant")
        if not registry.is_participant(check.owner):
            raise _Fail(f"the owner {check.owner} is no longer allowed in this registry")
        check.owner_name = participant.name
        self._check_tx(check, registry, anchor, *anchored_by)
        if isinstance(metadata, dict):  # its hash was checked above, and it is on chain
            check.facts = lineage_facts(check.kind, metadata)
        parent_docs = {str((p.get("asset") or {}).get("id", "")).lower(): p for p in doc.get("parents") or []}
        for parent_id in on_chain_parents:
            parent_doc = parent_docs.get(parent_id.lower())
            if parent_doc is None:
                check.parents.append(
                    AssetCheck(asset_id=parent_id, reason="no provenance record for this parent")
                )
            elif depth >= 16:
                check.parents.append(AssetCheck(asset_id=parent_id, reason="lineage deeper than 16 levels"))
            else:
                check.parents.append(self._check(parent_doc, None, chain_id, depth + 1))

    def _check_batch(
        self,
        check: AssetCheck,
        registry: Registry,
        anchor: dict[str, Any],
        content: bytes,
        metadata_hash: bytes,
    ) -> bytes:
        try:
            root = bytes.fromhex(str(anchor.get("batch_root", "")).removeprefix("0x"))
            proof = [bytes.fromhex(str(p).removeprefix("0x")) for p in anchor.get("proof") or []]
        except ValueError:
            raise _Fail("malformed batch root or proof") from None
        try:
            timestamp = registry.verify_batch_member(
                root, check.owner, check.kind, content, metadata_hash, proof
            )
        except ChainReverted as exc:
            reasons = {
                "InvalidProof": f"the inclusion proof does not lead to batch root 0x{root.hex()} "
                "(forged or truncated proof, or other bytes)",
                "UnknownBatch": f"batch root 0x{root.hex()} is not anchored in registry {registry.address}",
                "NotOwner": f"batch 0x{root.hex()} was not anchored by {check.owner}",
            }
            raise _Fail(reasons.get(exc.reason, exc.detail)) from None
        check.anchor = f"batch 0x{root.hex()[:16]}… ({len(proof)}-step proof)"
        check.anchored_at = _time(timestamp)
        return root

    def _check_direct(
        self, check: AssetCheck, registry: Registry, content: bytes, metadata_hash: bytes
    ) -> list[str]:
        record = registry.get_anchor(bytes.fromhex(check.asset_id.removeprefix("0x")))
        if record is None:
            raise _Fail(f"no anchor for asset {check.asset_id} in registry {registry.address}")
        if (
            record.content_hash != content
            or record.metadata_hash != metadata_hash
            or record.kind != check.kind
        ):
            raise _Fail("the on-chain anchor records other hashes than the provenance record")
        check.anchor = "direct anchor"
        check.anchored_at = _time(record.timestamp)
        check.result_hash = record.result_hash.hex() if record.result_hash else None
        return ["0x" + p.hex() for p in record.parents]

    @staticmethod
    def _check_attestation(check: AssetCheck, doc: dict[str, Any]) -> None:
        """A report the record says was attested must be the one whose hash is on chain."""
        attestation = doc.get("attestation")
        if not isinstance(attestation, dict):
            return
        report = attestation.get("report")
        if check.result_hash is None:
            if attestation.get("status") == "ATTESTED":
                raise _Fail("the record claims an attested result, but none is on chain")
            return
        if report is not None and canonical_hash(report) != check.result_hash:
            raise _Fail("the verification report does not match the result hash attested on chain")
        check.result = report if isinstance(report, dict) else None

    def _check_tx(
        self,
        check: AssetCheck,
        registry: Registry,
        anchor: dict[str, Any],
        event: str,
        key: str,
        value: bytes,
        what: str,
    ) -> None:
        """The transaction the record names succeeded, in that block, and emitted this anchor."""
        tx_hash = anchor.get("tx_hash")
        if not tx_hash:
            return
        with self.chain.guard():
            try:
                receipt = self.chain.w3.eth.get_transaction_receipt(tx_hash)
            except Exception as exc:
                if type(exc).__name__ == "TransactionNotFound":
                    raise _Fail(f"transaction {tx_hash} is not on this chain") from None
                raise
        if receipt["status"] != 1:
            raise _Fail(f"transaction {tx_hash} failed on chain")
        block = int(receipt["blockNumber"])
        if anchor.get("block_number") is not None and int(anchor["block_number"]) != block:
            raise _Fail(f"transaction {tx_hash} is in block {block}, not {anchor['block_number']}")
        if not _emitted(registry, receipt, event, key, value):
            raise _Fail(f"transaction {tx_hash} did not anchor {what} in registry {registry.address}")
        check.tx_hash, check.block_number = tx_hash, block


def lineage_facts(kind: str, metadata: dict[str, Any]) -> list[str]:
    """What an asset's checked metadata says of the dataset version behind it: a dataset's
    version number and DVC source, a validation result's outcome, and both for a job run."""
    facts = []
    if kind == "dataset" and metadata.get("version") is not None:
        facts.append(_version_line(metadata))
    elif kind == "validation":
        facts.append(_validation_line(metadata))
    elif kind == "job-result" and isinstance(metadata.get("dataset_version"), dict):
        used = metadata["dataset_version"]
        facts.append("trained on " + _version_line(used))
        if isinstance(used.get("validation"), dict):
            facts.append(_validation_line(used["validation"]))
    return facts


def _version_line(record: dict[str, Any]) -> str:
    line = f"version {_clean(record.get('version'))}"
    source = record.get("source")
    if isinstance(source, dict) and source.get("commit"):
        detail = ", ".join(
            part
            for part in (
                _clean(source.get("path") or ""),
                f"md5 {_clean(source['md5'])}" if source.get("md5") else "",
            )
            if part
        )
        line += f" · {_clean(source.get('kind') or 'dvc')} commit {_clean(source['commit'])[:7]}"
        line += f" ({detail})" if detail else ""
    return line


def _validation_line(record: dict[str, Any]) -> str:
    """``validation passed 10/10 expectations`` (or failed, with its failing columns)."""
    stats: dict[str, Any] = record["statistics"] if isinstance(record.get("statistics"), dict) else record
    passed, evaluated = stats.get("passed"), stats.get("evaluated")
    status = record.get("status") or (
        "passed" if record.get("success") is True else "failed" if record.get("success") is False else "?"
    )
    line = f"validation {_clean(status)}"
    if passed is not None and evaluated is not None:
        line += f" {_clean(passed)}/{_clean(evaluated)} expectations"
    failing = record.get("failing_columns")
    if isinstance(failing, list) and failing:
        line += " · failing columns " + ", ".join(_clean(c, 100) for c in failing[:20])
    return line


def _clean(value: Any, cap: int = 200) -> str:
    """A value of an owner's metadata as printable text: one line, bounded (its hash is on
    chain, but its owner chose it: no terminal control sequences)."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:cap])


def _emitted(registry: Registry, receipt: Any, event: str, key: str, value: bytes) -> bool:
    """Whether the receipt holds the registry's ``event`` with ``args[key] == value``."""
    contract_event = getattr(registry.contract.events, event)()
    for log in receipt["logs"]:
        if str(log["address"]).lower() != registry.address.lower():
            continue
        try:
            decoded = contract_event.process_log(log)
        except Exception:  # another event of the registry
            continue
        if bytes(decoded["args"][key]) == value:
            return True
    return False


class _Fail(Exception):
    """A check that failed; its message is the reason shown to the user."""


def _time(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def verify_document(
    doc: dict[str, Any],
    sha256: str,
    trusted_registry: str | None = None,
    *,
    outbound: OutboundClient | None = None,
) -> str | None:
    """Check a provenance document for bytes with ``sha256`` against the chain it names;
    None when verified, else the reason (a node checking what it received: it passes its
    ``outbound`` client, since the chain's URL came from a peer)."""
    from contracts.chain import RpcChain

    rpc_url = str((doc.get("chain") or {}).get("rpc_url") or "")
    if not rpc_url:
        return "the provenance document names no chain"
    try:
        chain = RpcChain(rpc_url, None, registry=None, retries=2, outbound=outbound)
        report = Verifier(chain, trusted_registry).verify(doc, "transfer", sha256)
    except AgoraError as exc:
        return exc.detail
    return None if report.verified else report.reason
