"""The notarization outbox end to end: batching on the embedded chain in-process, idempotent
resends, a node that keeps registering while its chain (anvil) is down, a restart on the
embedded chain, and several nodes sharing one ``agora devchain``.

Nothing here is mocked: the chains are py-evm (in-process or behind JSON-RPC) and anvil, the
nodes real processes where the scenario needs one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from contracts import merkle
from contracts.models import ANCHORED, PENDING, SUBMITTED, Notarization
from contracts.registry import Registry, kind_code
from tests import services

META = {
    "title": "Turbine vibration",
    "kind": "dataset",
    "media_type": "text/csv",
    "access_modes": ["download"],
}


# helpers ------------------------------------------------------------------------------------


def upload(client: Any, headers: dict[str, str], data: bytes, title: str = "t") -> dict[str, Any]:
    files: dict[str, Any] = {
        "metadata": (None, json.dumps({**META, "title": title}), "application/json"),
        "file": ("data.csv", data, "text/csv"),
    }
    response = client.post("/api/v1/offerings", files=files, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def rows(engine: Any) -> list[Notarization]:
    with Session(engine) as session:
        return list(session.exec(select(Notarization).order_by(Notarization.id)).all())  # type: ignore[arg-type]


def batch_events(registry: Registry) -> list[Any]:
    """Every BatchAnchored event of the registry (filtered here, not by the node's own query)."""
    return list(registry.contract.events.BatchAnchored().get_logs(from_block=0))


def events_for(registry: Registry, root_hex: str) -> list[Any]:
    root = bytes.fromhex(root_hex.removeprefix("0x"))
    return [e for e in batch_events(registry) if bytes(e["args"]["root"]) == root]


def tx_hex(value: Any) -> str:
    return "0x" + bytes(value).hex().removeprefix("0x")


@contextmanager
def in_process_node(settings_factory: Any, **overrides: Any) -> Iterator[tuple[Any, Any, dict[str, str]]]:
    """A runtime and test client with the notary thread stopped: the test drives ``run_once``."""
    from litestar.testing import TestClient

    from node import db
    from node.app import create_app
    from node.runtime import build_runtime

    settings = settings_factory(**overrides)
    db.upgrade(settings.effective_database_url)
    runtime = build_runtime(settings)
    # the app's on_shutdown closes the runtime (Runtime.close is not idempotent once the chain is open)
    with TestClient(app=create_app(runtime)) as client:
        runtime.notary.stop()  # on_startup started it; this test is the only worker
        headers = {"Authorization": f"Bearer {runtime.issuer.issue(['admin'], 600)}"}
        yield runtime, client, headers


# 1. the outbox on the embedded chain --------------------------------------------------------


def test_batch_of_three_is_one_transaction(settings_factory: Any) -> None:
    with in_process_node(settings_factory, anchor_max_delay=0, anchor_batch_size=100) as (rt, client, auth):
        registry = rt.registry()
        block_before = registry.chain.w3.eth.block_number
        offerings = [upload(client, auth, f"row,{i}\n".encode() * (i + 1), f"o{i}") for i in range(3)]

        # registration returned without touching the chain
        assert [o["anchor"]["status"] for o in offerings] == [PENDING] * 3
        assert [r.status for r in rows(rt.engine)] == [PENDING] * 3
        assert registry.chain.w3.eth.block_number == block_before
        assert batch_events(registry) == []
        assert rt.notary.pending_count() == 3

        assert rt.notary.run_once(force=True) == 3

        stored = rows(rt.engine)
        assert {r.status for r in stored} == {ANCHORED}
        assert len({r.batch_root for r in stored}) == 1
        assert len({r.tx_hash for r in stored}) == 1
        assert {r.batch_size for r in stored} == {3}
        root = stored[0].batch_root
        assert root is not None and stored[0].tx_hash is not None
        events = batch_events(registry)
        assert len(events) == 1, "three rows, one transaction"
        assert tx_hex(events[0]["transactionHash"]) == stored[0].tx_hash
        assert int(events[0]["blockNumber"]) == stored[0].block_number
        assert events[0]["args"]["count"] == 3
        assert events[0]["args"]["owner"] == rt.address
        assert rt.notary.pending_count() == 0

        # each stored proof leads from the row's leaf to the anchored root
        root_bytes = bytes.fromhex(root[2:])
        for row in stored:
            lf = merkle.leaf(
                row.owner,
                kind_code(row.kind),
                bytes.fromhex(row.content_hash),
                bytes.fromhex(row.metadata_hash),
            )
            proof = [bytes.fromhex(p[2:]) for p in row.proof]
            assert merkle.verify(root_bytes, lf, proof)
            assert proof, "a batch of three gives every leaf a non-empty proof"
            assert not merkle.verify(root_bytes, lf, proof[:-1])

        # the API shows where each version is anchored
        for offering in offerings:
            detail = client.get(f"/api/v1/offerings/{offering['id']}", headers=auth).json()
            anchor = detail["anchor"]
            assert anchor["status"] == ANCHORED
            assert anchor["tx_hash"] == stored[0].tx_hash
            assert anchor["block_number"] == stored[0].block_number
            assert anchor["batch_root"] == root
            assert anchor["registry"] == registry.address
            assert anchor["chain_id"] == registry.chain.chain_id
            assert detail["versions"][0]["anchor"]["status"] == ANCHORED

        # the node registered its own organisation on the way
        me = registry.participant(rt.address)
        assert me is not None
        assert (me.name, me.endpoint) == (rt.settings.name, rt.settings.public_url)
        assert registry.is_participant(rt.address)


def test_batch_size_splits_the_outbox(settings_factory: Any) -> None:
    with in_process_node(settings_factory, anchor_max_delay=0, anchor_batch_size=2) as (rt, client, auth):
        for i in range(5):
            upload(client, auth, f"split {i}".encode(), f"s{i}")
        assert rt.notary.run_once() == 5  # max_delay 0: everything is due without force

        stored = rows(rt.engine)
        assert {r.status for r in stored} == {ANCHORED}
        roots = [r.batch_root for r in stored]
        assert sorted(roots.count(root) for root in set(roots)) == [1, 2, 2]
        assert len({r.tx_hash for r in stored}) == 3
        registry = rt.registry()
        events = batch_events(registry)
        assert len(events) == 3
        assert {"0x" + bytes(e["args"]["root"]).hex() for e in events} == set(roots)
        assert sorted(e["args"]["count"] for e in events) == [1, 2, 2]


def test_max_delay_holds_a_small_batch_back(settings_factory: Any) -> None:
    with in_process_node(settings_factory, anchor_max_delay=3600, anchor_batch_size=3) as (rt, client, auth):
        upload(client, auth, b"early 1", "e1")
        upload(client, auth, b"early 2", "e2")
        assert rt.notary.run_once() == 0, "two rows, batch size three, an hour to wait: not due"
        assert [r.status for r in rows(rt.engine)] == [PENDING, PENDING]
        assert batch_events(rt.registry()) == []

        upload(client, auth, b"early 3", "e3")
        assert rt.notary.run_once() == 3, "a full batch is due at once"
        assert {r.status for r in rows(rt.engine)} == {ANCHORED}

        upload(client, auth, b"late", "late")
        assert rt.notary.run_once() == 0
        assert rt.notary.run_once(force=True) == 1, "force ignores max_delay"
        assert len(batch_events(rt.registry())) == 2


# 2. idempotent resends ----------------------------------------------------------------------


def test_resend_of_a_batch_already_on_chain(settings_factory: Any) -> None:
    with in_process_node(settings_factory, anchor_max_delay=0, anchor_batch_size=100) as (rt, client, auth):
        for i in range(3):
            upload(client, auth, f"crash {i}".encode(), f"c{i}")
        # fix the batch exactly as the worker does, then send it as if the worker crashed after
        # the transaction went out but before it marked the rows
        submitted = rt.notary._take_batch(force=True)
        assert [r.status for r in submitted] == [SUBMITTED] * 3
        root = submitted[0].batch_root
        assert root is not None and all(r.batch_root == root and r.proof for r in submitted)
        registry = rt.registry()
        sent = registry.anchor_batch(bytes.fromhex(root[2:]), 3)
        assert [r.status for r in rows(rt.engine)] == [SUBMITTED] * 3

        assert rt.notary.run_once() == 3

        stored = rows(rt.engine)
        assert {r.status for r in stored} == {ANCHORED}
        assert {r.tx_hash for r in stored} == {sent.tx_hash}, "the tx hash is found from the chain's event"
        assert {r.block_number for r in stored} == {sent.block_number}
        assert len(events_for(registry, root)) == 1
        assert len(batch_events(registry)) == 1
        assert rt.notary.run_once(force=True) == 0


def test_direct_row_already_on_chain_is_anchored_not_failed(settings_factory: Any) -> None:
    from contracts.notary import enqueue
    from kernel.db import transaction

    with in_process_node(settings_factory, anchor_max_delay=0) as (rt, _client, _auth):
        registry = rt.registry()
        parent_content = os.urandom(32)
        child_content = os.urandom(32)
        with transaction(rt.engine) as session:
            parent = enqueue(
                session,
                kind="dataset",
                content_hash=parent_content.hex(),
                owner=rt.address,
                metadata={"p": 1},
            )
            parent_id = parent.asset_id
        assert rt.notary.run_once(force=True) == 1  # the parent goes in a batch of one
        parent_aid = bytes.fromhex(parent_id[2:])
        with transaction(rt.engine) as session:
            child = enqueue(
                session,
                kind="model",
                content_hash=child_content.hex(),
                owner=rt.address,
                metadata={"c": 1},
                parents=[parent_id],
            )
            assert child.mode == "direct"
            child_id, child_metadata = child.asset_id, child.metadata_hash
        # the worker "crashed" after its anchor transaction went out
        aid, sent = registry.anchor("model", child_content, bytes.fromhex(child_metadata), [parent_aid])
        assert "0x" + aid.hex() == child_id

        assert rt.notary.run_once() == 1

        with Session(rt.engine) as session:
            row = session.exec(select(Notarization).where(Notarization.asset_id == child_id)).one()
        assert row.status == ANCHORED, row.last_error
        assert row.last_error == ""
        assert (row.tx_hash, row.block_number) == (sent.tx_hash, sent.block_number)
        logs = registry.contract.events.AssetAnchored().get_logs(from_block=0)
        assert [tx_hex(e["args"]["id"]) for e in logs].count(child_id) == 1
        record = registry.get_anchor(aid)
        assert record is not None and record.parents == [parent_aid]


def test_direct_rows_carry_their_lineage_and_verify(settings_factory: Any) -> None:
    from contracts.notary import enqueue
    from contracts.verify import Verifier
    from kernel.db import transaction

    with in_process_node(settings_factory, anchor_max_delay=0) as (rt, _client, _auth):
        parent_content, child_content = os.urandom(32), os.urandom(32)
        with transaction(rt.engine) as session:
            parent_id = enqueue(
                session,
                kind="dataset",
                content_hash=parent_content.hex(),
                owner=rt.address,
                metadata={"p": 2},
            ).asset_id
            child_id = enqueue(
                session,
                kind="model",
                content_hash=child_content.hex(),
                owner=rt.address,
                metadata={"title": "child"},
                parents=[parent_id],
            ).asset_id
        assert rt.notary.run_once(force=True) == 2
        registry = rt.registry()
        record = registry.get_anchor(bytes.fromhex(child_id[2:]))
        assert record is not None
        assert record.parents == [bytes.fromhex(parent_id[2:])]
        assert registry.get_anchor(bytes.fromhex(parent_id[2:])) is None, "the parent went in a batch"

        doc = rt.provenance.document(child_id)
        assert doc["anchor"]["mode"] == "direct"
        assert [p["asset"]["id"] for p in doc["parents"]] == [parent_id]
        report = Verifier(rt.chain()).verify(doc, "child", child_content.hex())
        assert report.verified, report.reason
        assert [p.verified for p in report.root.parents] == [True]

        # a lineage that lies about its parent's bytes fails on the parent
        doc["parents"][0]["asset"]["sha256"] = os.urandom(32).hex()
        report = Verifier(rt.chain()).verify(doc, "child", child_content.hex())
        assert not report.verified
        assert report.root.reason is None and report.root.parents[0].reason is not None


# 3. a node whose chain goes away ------------------------------------------------------------


def register_http(
    node: services.LiveNode, token: str, data: bytes, title: str
) -> tuple[dict[str, Any], float]:
    """Register through the node's API; returns the offering and how long the call took."""
    files: dict[str, Any] = {
        "metadata": (None, json.dumps({**META, "title": title}), "application/json"),
        "file": ("data.csv", data, "text/csv"),
    }
    started = time.monotonic()
    response = httpx.post(
        f"{node.url}/api/v1/offerings", files=files, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text
    return dict(response.json()), elapsed


def anchors(node: services.LiveNode, token: str) -> dict[str, dict[str, Any]]:
    """Offering id → anchor, as the node's API shows it."""
    page = httpx.get(
        f"{node.url}/api/v1/offerings",
        params={"limit": 500},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    return {o["id"]: o["anchor"] for o in page["items"]}


def all_anchored(node: services.LiveNode, token: str, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    found = anchors(node, token)
    return found if all(found[i]["status"] == ANCHORED for i in ids) else None


def health(node: services.LiveNode) -> dict[str, Any]:
    return dict(httpx.get(f"{node.url}/health", timeout=30).json())


def test_outbox_survives_an_unreachable_chain(tmp_path: Path) -> None:
    from eth_account import Account

    from contracts.chain import RpcChain

    state = tmp_path / "anvil-state.json"
    anvil = services.start_anvil(state=state)
    node: services.LiveNode | None = None
    try:
        deployer = Account.create()
        chain = RpcChain(anvil.url, deployer, registry=None)
        chain.fund(deployer.address)
        address, _ = chain.deploy("AgoraRegistry", False)
        node = services.start_node(
            tmp_path / "home",
            AGORA_CHAIN_URL=anvil.url,
            AGORA_CHAIN_REGISTRY=address,
            AGORA_ANCHOR_MAX_DELAY="0.2",
        )
        participant = health(node)["participant"]
        chain.fund(participant)  # anvil charges gas; the node's key starts empty
        token = node.token("admin")

        first, _ = register_http(node, token, b"before the outage\n", "before")
        services.wait_until(
            lambda: all_anchored(node, token, [first["id"]]), "the first offering to be anchored", 60
        )

        anvil.stop()
        later = []
        for i in range(2):
            # registration answers 201 with the chain down: it never calls the chain itself
            offering, _ = register_http(node, token, f"during the outage {i}\n".encode(), f"down{i}")
            later.append(offering)
        down = anchors(node, token)
        assert down[first["id"]]["status"] == ANCHORED
        assert {down[o["id"]]["status"] for o in later} <= {PENDING, SUBMITTED}

        def backlog_with_error() -> dict[str, Any] | None:
            notary = health(node)["notary"]
            return notary if notary["backlog"] == 2 and notary["last_error"] else None

        notary = services.wait_until(
            backlog_with_error, "/health to show the backlog and the chain error", 30
        )
        assert "chain" in notary["last_error"].lower()
        assert {anchors(node, token)[o["id"]]["status"] for o in later} <= {PENDING, SUBMITTED}

        anvil = services.start_anvil(state=state, port=anvil.port)
        ids = [first["id"], *(o["id"] for o in later)]
        final = services.wait_until(
            lambda: all_anchored(node, token, ids), "the outbox to drain", 60, interval=0.5
        )
        assert health(node)["notary"]["backlog"] == 0

        reader = Registry(RpcChain(anvil.url, None, registry=address))
        roots = {a["batch_root"] for a in final.values()}
        for root in roots:
            assert len(events_for(reader, root)) == 1, f"root {root} anchored more than once"
        events = batch_events(reader)
        assert len(events) == len(roots), "nothing anchored twice"
        by_root = {"0x" + bytes(e["args"]["root"]).hex(): e for e in events}
        for anchor in final.values():
            event = by_root[anchor["batch_root"]]
            assert anchor["tx_hash"] == tx_hex(event["transactionHash"])
            assert anchor["block_number"] == int(event["blockNumber"])
            assert anchor["registry"] == address
        me = reader.participant(participant)
        assert me is not None and me.endpoint == node.url
    finally:
        if node is not None:
            node.stop()
        anvil.stop()


# 4. a node restarted on the embedded chain --------------------------------------------------


def test_embedded_chain_survives_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    node = services.start_node(home, AGORA_ANCHOR_MAX_DELAY="0.2")
    try:
        token = node.token("admin")
        offering, _ = register_http(node, token, b"kept across restarts\n" * 100, "kept")
        anchored = services.wait_until(lambda: all_anchored(node, token, [offering["id"]]), "the anchor", 60)
        out = tmp_path / "downloads" / "kept.csv"
        out.parent.mkdir()
        result = node.cli(
            "offerings", "download", offering["id"], "-o", str(out), "--url", node.url, "--token", token
        )
        assert "provenance in" in result.stdout
        sidecar = json.loads(out.with_name(out.name + ".provenance.json").read_text())
        assert sidecar["chain"]["rpc_url"] == f"{node.url}/chain/rpc"
        assert sidecar["anchor"]["tx_hash"] == anchored[offering["id"]]["tx_hash"]
    finally:
        node.stop()
    assert node.proc.returncode is not None

    # the same home on the same address (the public URL the sidecar names)
    monkeypatch.setattr(services, "free_port", lambda: node.port)
    node = services.start_node(home, AGORA_ANCHOR_MAX_DELAY="0.2")
    try:
        verified = node.cli("verify", str(out), check=False)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "VERIFIED" in verified.stdout
        assert "NOT VERIFIED" not in verified.stdout
        # nothing was queued or anchored again on start
        assert health(node)["notary"]["backlog"] == 0
        assert anchors(node, token)[offering["id"]] == anchored[offering["id"]]
    finally:
        node.stop()


# 6. several nodes on one `agora devchain` ---------------------------------------------------


def test_two_nodes_share_a_devchain(tmp_path: Path) -> None:
    from contracts.chain import RpcChain
    from contracts.devchain import DevChainServer

    server = DevChainServer(tmp_path / "devchain", port=services.free_port())
    server.start()
    nodes: list[services.LiveNode] = []
    try:
        env = {
            "AGORA_CHAIN_URL": server.url,
            "AGORA_CHAIN_REGISTRY": server.registry,
            "AGORA_ANCHOR_MAX_DELAY": "0.2",
        }
        for name in ("Org A", "Org B"):
            nodes.append(services.start_node(tmp_path / name.replace(" ", "-"), name=name, **env))
        tokens = [node.token("admin") for node in nodes]
        offerings = [
            register_http(node, token, f"{node.port} shares\n".encode() * 50, f"from {node.port}")[0]
            for node, token in zip(nodes, tokens, strict=True)
        ]
        finals = [
            services.wait_until(
                functools.partial(all_anchored, node, token, [offering["id"]]), "the anchors", 60
            )
            for node, token, offering in zip(nodes, tokens, offerings, strict=True)
        ]
        reader = Registry(RpcChain(server.url, None, registry=server.registry))
        for node, offering, final in zip(nodes, offerings, finals, strict=True):
            anchor = final[offering["id"]]
            assert anchor["registry"] == server.registry
            assert anchor["chain_id"] == server.chain.chain_id
            assert len(events_for(reader, anchor["batch_root"])) == 1
            participant = health(node)["participant"]
            me = reader.participant(participant)
            assert me is not None
            assert (me.name, me.endpoint) == (health(node)["name"], node.url)
            assert offering["provider"] == participant
        owners = {e["args"]["owner"] for e in batch_events(reader)}
        assert owners == {health(node)["participant"] for node in nodes}

        node_a, token_a = nodes[0], tokens[0]
        out = tmp_path / "from-a.csv"
        node_a.cli(
            "offerings",
            "download",
            offerings[0]["id"],
            "-o",
            str(out),
            "--url",
            node_a.url,
            "--token",
            token_a,
        )
        sidecar = json.loads(out.with_name(out.name + ".provenance.json").read_text())
        assert sidecar["chain"]["rpc_url"] == server.url
        verified = node_a.cli(
            "verify", str(out), "--chain", server.url, "--registry", server.registry, check=False
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "VERIFIED" in verified.stdout and "Org A" in verified.stdout

        # a third organisation anchoring directly: its bytes are found on chain alone
        from eth_account import Account

        third = RpcChain(server.url, Account.create(), registry=server.registry)
        third.fund(third.sender)  # anvil_setBalance, as `agora devchain` offers
        registry_c = Registry(third)
        registry_c.register_participant("Org C", "https://c.example")
        direct = []
        for i in range(2):
            path = tmp_path / f"direct{i}.bin"
            path.write_bytes(os.urandom(512))
            registry_c.anchor("dataset", hashlib.sha256(path.read_bytes()).digest(), b"\x02" * 32)
            direct.append(path)
        empty_home = tmp_path / "empty-home"
        empty_home.mkdir()
        args = ["--chain", server.url, "--registry", server.registry, "--home", str(empty_home)]
        for path in direct:
            verified = node_a.cli("verify", str(path), *args, check=False)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert "Org C" in verified.stdout and "direct anchor" in verified.stdout
        stranger = tmp_path / "stranger.bin"
        stranger.write_bytes(os.urandom(512))
        verified = node_a.cli("verify", str(stranger), *args, check=False)
        assert verified.returncode == 1, verified.stdout + verified.stderr
        assert "no anchor for sha256" in verified.stdout
    finally:
        for node in nodes:
            node.stop()
        server.stop()


def _devchain(port: int, state: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """``agora devchain`` as a process; returns it and the first two lines it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    proc = subprocess.Popen(
        [services.AGORA, "devchain", "--port", str(port), "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    return proc, [proc.stdout.readline().strip() for _ in range(2)]


def _terminate(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_devchain_command_prints_the_settings_to_export(tmp_path: Path) -> None:
    from contracts.chain import RpcChain

    port = services.free_port()
    proc, lines = _devchain(port, tmp_path / "state")
    try:
        assert lines[0] == f"AGORA_CHAIN_URL=http://127.0.0.1:{port}", lines
        prefix = "AGORA_CHAIN_REGISTRY="
        assert lines[1].startswith(prefix + "0x") and len(lines[1]) == len(prefix) + 42, lines
        services.wait_for_port(port, timeout=30)  # bound before the lines were printed
        registry = lines[1].removeprefix(prefix)
        chain = RpcChain(f"http://127.0.0.1:{port}", None, registry=registry)  # refuses a non-registry
        assert chain.chain_id == 1337
    finally:
        _terminate(proc)

    # the state directory keeps the chain: the same registry on the next start
    port = services.free_port()
    proc, lines = _devchain(port, tmp_path / "state")
    try:
        assert lines[1] == prefix + registry
    finally:
        _terminate(proc)
