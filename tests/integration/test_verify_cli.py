"""``agora verify`` as a user runs it: a subprocess against one live node on the embedded chain.

The node anchors three offerings in one batch (so every inclusion proof is non-empty); each
test copies a downloaded file and its ``.provenance.json`` sidecar, tampers with one thing,
and checks the exit code (0 verified, 1 not verified, 2 could not check) and the reason.
The chain is reached through the node's read-only ``/chain/rpc``, which the sidecar names.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel.canonical import canonical_hash
from tests import services

META = {"kind": "dataset", "media_type": "text/csv", "access_modes": ["download"]}
SIDECAR = ".provenance.json"
OTHER_REGISTRY = "0x" + "11" * 20


@dataclass
class Anchored:
    node: services.LiveNode
    token: str
    files: list[Path]
    offerings: list[dict[str, Any]]

    @property
    def rpc(self) -> str:
        return f"{self.node.url}/chain/rpc"

    def sidecar(self, index: int) -> dict[str, Any]:
        return dict(json.loads(sidecar_of(self.files[index]).read_text()))

    def copy(self, index: int, directory: Path) -> Path:
        """A copy of downloaded file ``index`` and its sidecar in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / self.files[index].name
        shutil.copyfile(self.files[index], target)
        shutil.copyfile(sidecar_of(self.files[index]), sidecar_of(target))
        return target


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def verify(node: services.LiveNode, *args: str) -> tuple[int, str]:
    """Run ``agora verify ARGS``; returns the exit code and stdout + stderr."""
    result = node.cli("verify", *args, check=False, timeout=60)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def anchored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anchored]:
    base = tmp_path_factory.mktemp("verify")
    # a batch is sent when three are queued: the three offerings share one Merkle root
    node = services.start_node(base / "home", AGORA_ANCHOR_BATCH_SIZE="3", AGORA_ANCHOR_MAX_DELAY="600")
    try:
        token = node.token("admin")
        headers = {"Authorization": f"Bearer {token}"}
        offerings = []
        for i in range(3):
            files: dict[str, Any] = {
                "metadata": (None, json.dumps({**META, "title": f"Asset {i}"}), "application/json"),
                "file": (f"asset{i}.csv", os.urandom(1000 + i), "text/csv"),
            }
            response = httpx.post(f"{node.url}/api/v1/offerings", files=files, headers=headers, timeout=30)
            assert response.status_code == 201, response.text
            offerings.append(response.json())
        deadline = time.monotonic() + 60
        while True:
            page = httpx.get(f"{node.url}/api/v1/offerings", headers=headers, timeout=30).json()
            if all(o["anchor"]["status"] == "ANCHORED" for o in page["items"]):
                break
            assert time.monotonic() < deadline, f"not anchored within 60 s: {page['items']}"
            time.sleep(0.2)
        assert len({o["anchor"]["batch_root"] for o in page["items"]}) == 1, "one batch of three"
        paths = []
        for i, offering in enumerate(offerings):
            out = base / "downloads" / f"asset{i}.csv"
            out.parent.mkdir(exist_ok=True)
            node.cli(
                "offerings", "download", offering["id"], "-o", str(out), "--url", node.url, "--token", token
            )
            assert sidecar_of(out).exists()
            paths.append(out)
        yield Anchored(node, token, paths, offerings)
    finally:
        node.stop()


def test_intact_file_is_verified(anchored: Anchored) -> None:
    code, out = verify(anchored.node, str(anchored.files[0]))
    assert code == 0, out
    assert "VERIFIED" in out and "NOT VERIFIED" not in out
    assert "Asset 0" in out  # the title, from the anchored metadata
    sidecar = anchored.sidecar(0)
    assert sidecar["chain"]["rpc_url"] == anchored.rpc
    assert sidecar["anchor"]["tx_hash"] in out


def test_one_changed_byte(anchored: Anchored, tmp_path: Path) -> None:
    target = anchored.copy(0, tmp_path)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert "NOT VERIFIED" in out
    assert "does not match the anchored sha256" in out


def _proof_index(anchored: Anchored, length: int) -> int:
    return next(i for i in range(3) if len(anchored.sidecar(i)["anchor"]["proof"]) == length)


def test_forged_proof(anchored: Anchored, tmp_path: Path) -> None:
    index = _proof_index(anchored, 2)
    target = anchored.copy(index, tmp_path)
    doc = anchored.sidecar(index)
    element = doc["anchor"]["proof"][0]
    doc["anchor"]["proof"][0] = element[:-2] + ("00" if element[-2:] != "00" else "01")
    sidecar_of(target).write_text(json.dumps(doc))
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert "inclusion proof does not lead to batch root" in out


def test_truncated_proof(anchored: Anchored, tmp_path: Path) -> None:
    index = _proof_index(anchored, 2)
    target = anchored.copy(index, tmp_path)
    doc = anchored.sidecar(index)
    doc["anchor"]["proof"] = doc["anchor"]["proof"][:-1]
    sidecar_of(target).write_text(json.dumps(doc))
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert "inclusion proof does not lead to batch root" in out


def test_sidecar_of_another_asset(anchored: Anchored, tmp_path: Path) -> None:
    target = anchored.copy(0, tmp_path)
    shutil.copyfile(sidecar_of(anchored.files[1]), sidecar_of(target))
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert "does not match the anchored sha256" in out


def test_tampered_metadata(anchored: Anchored, tmp_path: Path) -> None:
    target = anchored.copy(0, tmp_path)
    doc = anchored.sidecar(0)
    doc["asset"]["metadata"]["title"] = "Something else entirely"
    sidecar_of(target).write_text(json.dumps(doc))
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert "metadata" in out
    assert "does not match its anchored metadata hash" in out


def test_tampered_metadata_with_a_matching_hash(anchored: Anchored, tmp_path: Path) -> None:
    """Recomputing the metadata hash moves the leaf: the proof no longer leads to the root."""
    target = anchored.copy(0, tmp_path)
    doc = anchored.sidecar(0)
    doc["asset"]["metadata"]["license"] = "all rights mine"
    doc["asset"]["metadata_hash"] = canonical_hash(doc["asset"]["metadata"])
    sidecar_of(target).write_text(json.dumps(doc))
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert "inclusion proof does not lead to batch root" in out


def test_untrusted_registry(anchored: Anchored) -> None:
    code, out = verify(anchored.node, str(anchored.files[0]), "--registry", OTHER_REGISTRY)
    assert code == 1, out
    assert "not in the trusted registry" in out


def test_trusted_registry_that_matches(anchored: Anchored) -> None:
    registry = anchored.sidecar(0)["chain"]["registry"]
    code, out = verify(anchored.node, str(anchored.files[0]), "--registry", registry.lower())
    assert code == 0, out
    assert "VERIFIED" in out


def test_unknown_hash_searched_on_chain(anchored: Anchored, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.bin"
    stranger.write_bytes(os.urandom(4096))
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    registry = anchored.sidecar(0)["chain"]["registry"]
    args = [str(stranger), "--registry", registry, "--chain", anchored.rpc, "--home", str(empty_home)]
    code, out = verify(anchored.node, *args)
    assert code == 1, out
    assert "no anchor for sha256" in out

    code, out = verify(anchored.node, *args, "--json")
    assert code == 1, out
    doc = json.loads(out)
    assert doc["verified"] is False
    assert "no anchor for sha256" in doc["reason"]


def test_json_report(anchored: Anchored, tmp_path: Path) -> None:
    code, out = verify(anchored.node, str(anchored.files[1]), "--json")
    assert code == 0, out
    doc = json.loads(out)
    sidecar = anchored.sidecar(1)
    assert doc["verified"] is True
    assert doc["reason"] is None
    assert doc["registry"] == sidecar["chain"]["registry"]
    assert doc["chain_id"] == sidecar["chain"]["chain_id"]
    assert doc["asset"]["asset_id"] == sidecar["asset"]["id"]
    assert doc["asset"]["tx_hash"] == sidecar["anchor"]["tx_hash"]
    assert doc["asset"]["owner_name"]

    target = anchored.copy(1, tmp_path)
    target.write_bytes(target.read_bytes() + b"\n")
    code, out = verify(anchored.node, str(target), "--json")
    assert code == 1, out
    doc = json.loads(out)
    assert doc["verified"] is False
    assert "does not match the anchored sha256" in doc["reason"]
    assert doc["asset"]["verified"] is False


def test_unreachable_chain_could_not_check(anchored: Anchored) -> None:
    chain = f"http://127.0.0.1:{services.free_port()}"
    code, out = verify(anchored.node, str(anchored.files[0]), "--chain", chain)
    assert code == 2, out
    assert "COULD NOT CHECK" in out
    assert "NOT VERIFIED" not in out

    result = anchored.node.cli("verify", str(anchored.files[0]), "--chain", chain, "--json", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert (doc["verified"], doc["checked"]) == (False, False)
    assert "COULD NOT CHECK" in result.stderr


def test_by_asset_id_through_the_node(anchored: Anchored) -> None:
    asset_id = anchored.offerings[2]["anchor"]["asset_id"]
    code, out = verify(anchored.node, asset_id, "--url", anchored.node.url, "--token", anchored.token)
    assert code == 0, out
    assert "VERIFIED" in out and "NOT VERIFIED" not in out


def test_by_sha256_through_the_node(anchored: Anchored) -> None:
    digest = anchored.offerings[2]["sha256"]
    assert digest.startswith("sha256:")
    code, out = verify(anchored.node, digest, "--url", anchored.node.url, "--token", anchored.token)
    assert code == 0, out
    assert "VERIFIED" in out and "NOT VERIFIED" not in out


def test_file_without_sidecar_through_the_node(anchored: Anchored, tmp_path: Path) -> None:
    target = tmp_path / "bare.csv"
    shutil.copyfile(anchored.files[2], target)
    code, out = verify(anchored.node, str(target), "--url", anchored.node.url, "--token", anchored.token)
    assert code == 0, out
    assert "VERIFIED" in out and "NOT VERIFIED" not in out


def test_unknown_asset_id_through_the_node(anchored: Anchored) -> None:
    code, out = verify(anchored.node, "0x" + "ab" * 32, "--url", anchored.node.url, "--token", anchored.token)
    assert code == 1, out
    assert "no provenance record" in out


def test_sidecar_naming_another_transaction(anchored: Anchored, tmp_path: Path) -> None:
    """A real, successful transaction of the registry that did not anchor this batch."""
    from contracts.chain import RpcChain
    from contracts.registry import Registry

    doc = anchored.sidecar(0)
    registry = Registry(RpcChain(anchored.rpc, None, registry=doc["chain"]["registry"]))
    other = registry.contract.events.ParticipantRegistered().get_logs(from_block=0)[0]
    doc["anchor"]["tx_hash"] = "0x" + bytes(other["transactionHash"]).hex().removeprefix("0x")
    doc["anchor"]["block_number"] = int(other["blockNumber"])
    assert doc["anchor"]["tx_hash"] != anchored.sidecar(0)["anchor"]["tx_hash"]
    target = anchored.copy(0, tmp_path)
    sidecar_of(target).write_text(json.dumps(doc))
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert "did not anchor" in out


def test_sidecar_naming_a_transaction_that_does_not_exist(anchored: Anchored, tmp_path: Path) -> None:
    doc = anchored.sidecar(0)
    doc["anchor"]["tx_hash"] = "0x" + "77" * 32
    target = anchored.copy(0, tmp_path)
    sidecar_of(target).write_text(json.dumps(doc))
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert "is not on this chain" in out


def test_sidecar_naming_another_block(anchored: Anchored, tmp_path: Path) -> None:
    doc = anchored.sidecar(0)
    doc["anchor"]["block_number"] = int(doc["anchor"]["block_number"]) + 1
    target = anchored.copy(0, tmp_path)
    sidecar_of(target).write_text(json.dumps(doc))
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert f"not {doc['anchor']['block_number']}" in out


def test_malformed_sidecar(anchored: Anchored, tmp_path: Path) -> None:
    target = anchored.copy(0, tmp_path)
    sidecar_of(target).write_text("{not json")
    code, out = verify(anchored.node, str(target))
    assert code == 1, out
    assert "is not a provenance document" in out
