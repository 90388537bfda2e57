"""Hostile bundles against the coordinator's ONNX translation of a federated model.

The bundle is code the coordinator's node runs in its sandbox to export the final model; it
may try to reach outside ``/out`` (the node's disk by its host path, the node's exporter, the
weights and probe inputs it was given, the bundle itself), export another graph than the
model it runs, or ignore the global weights and export its own. Each is counted or refused
with a reason the coordinator can act on.
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation import tensors
from federation.onnx_export import TranslationFailed, translator
from tests.fl_onnx import TOLERANCE, Digits, Host, federation, load_digits, make_host, train


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    return make_host(tmp_path_factory.mktemp("coordinator"))


@pytest.fixture(scope="module")
def digits() -> Digits:
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits: Digits) -> tensors.Weights:
    """The CNN after three epochs on the digits: weights that mean something."""
    return train(digits)


HOSTILE_PREAMBLE = """
import os

from torch import nn

EXAMPLE_MODEL = nn.Sequential(
    nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(),
    nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(),
    nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
)
"""


def hostile_bundle(directory: Path, body: str) -> Path:
    """A bundle whose ``model.py`` is the example's CNN plus ``body``."""
    directory.mkdir(parents=True)
    (directory / "model.py").write_text(HOSTILE_PREAMBLE + textwrap.dedent(body))
    return directory


@pytest.fixture
def node_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="agora.federation"):
        yield caplog


def escape_targets(host: Host, tmp_path: Path) -> list[str]:
    """Places outside ``/out`` a factory might write to: the host's own paths (the node's home,
    its store, the test's directory), the sandbox's read-only mounts (the node's exporter, the
    weights, the probe inputs, the bundle) and its root."""
    return [
        str(tmp_path / "escaped.txt"),
        str(host.settings.home / "escaped.txt"),
        str(host.store.root / "escaped.txt"),
        "/agora/export.py",
        "/model/model.safetensors",
        "/probe/probe.npy",
        "/probe/weights.npz",
        "/job/model.py",
        "/etc/escaped.txt",
        os.path.expanduser("~/escaped.txt"),
    ]


def test_a_factory_writing_outside_out_fails_with_the_reason(
    host: Host, trained: tensors.Weights, tmp_path: Path, node_log: pytest.LogCaptureFixture
) -> None:
    targets = escape_targets(host, tmp_path)
    bundle = hostile_bundle(
        tmp_path / "bundle",
        f"""
        def make_model():
            with open({targets[0]!r}, "w") as handle:  # the node's own disk, by its host path
                handle.write("escaped")
            return EXAMPLE_MODEL
        """,
    )
    fed, blob = federation(host, bundle, trained)
    digests = sorted(host.store.digests())
    with pytest.raises(TranslationFailed) as failed:
        translator(host)(fed, blob)
    print(f"\nreason: {failed.value.detail}")
    assert failed.value.detail.startswith(
        "the node could not load or run the torch-state-dict model on its probe inputs"
    )
    assert "cannot load the torch-state-dict model" in failed.value.detail
    assert (
        "No such file or directory" in failed.value.detail or "Read-only file system" in failed.value.detail
    )
    assert failed.value.status == 422
    assert not Path(targets[0]).exists()
    assert sorted(host.store.digests()) == digests


def test_writes_outside_out_that_the_factory_swallows_reach_nothing(
    host: Host, trained: tensors.Weights, tmp_path: Path, node_log: pytest.LogCaptureFixture
) -> None:
    """The factory tries every place, prints what happened, and goes on: the translation
    succeeds, and not one of the writes landed."""
    targets = escape_targets(host, tmp_path)
    before = {t: Path(t).read_bytes() for t in targets if Path(t).is_file()}
    bundle = hostile_bundle(
        tmp_path / "bundle",
        f"""
        TARGETS = {targets!r}

        def make_model():
            for target in TARGETS:
                try:
                    with open(target, "wb") as handle:
                        handle.write(b"escaped")
                    print("escape: wrote", target, flush=True)
                except OSError as exc:
                    print("escape: refused", target, type(exc).__name__, flush=True)
            return EXAMPLE_MODEL
        """,
    )
    fed, blob = federation(host, bundle, trained)
    onnx_bytes, report = translator(host)(fed, blob)
    lines = [r.getMessage() for r in node_log.records if "escape: " in r.getMessage()]
    wrote = [line for line in lines if "escape: wrote" in line]
    refused = [line for line in lines if "escape: refused" in line]
    print(f"\n{len(refused)} of {len(targets)} writes outside /out refused, {len(wrote)} landed")
    assert wrote == [] and len(refused) == len(targets)
    assert report["max_abs_diff"] <= TOLERANCE and onnx_bytes
    for target in targets:  # nothing changed on the host either
        path = Path(target)
        assert (path.read_bytes() if path.is_file() else None) == before.get(target)


def test_a_model_that_exports_another_graph_than_it_runs_is_refused(
    host: Host, trained: tensors.Weights, tmp_path: Path
) -> None:
    """A trojan in the ONNX file only: while ``torch.onnx.export`` traces it, the model adds a
    bias towards class 0 that its own outputs never show."""
    bundle = hostile_bundle(
        tmp_path / "bundle",
        """
        import torch

        class Trojan(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = EXAMPLE_MODEL

            def forward(self, x):
                out = self.net(x)
                if torch.onnx.is_in_onnx_export():
                    out = out + torch.nn.functional.one_hot(torch.zeros_like(out[:, 0]).long(), 10) * 5.0
                return out

            def state_dict(self, *args, **kwargs):
                return self.net.state_dict(*args, **kwargs)

            def load_state_dict(self, state, strict=True, assign=False):
                return self.net.load_state_dict(state, strict=strict)

        def make_model():
            return Trojan()
        """,
    )
    fed, blob = federation(host, bundle, trained)
    with pytest.raises(TranslationFailed) as failed:
        translator(host)(fed, blob)
    print(f"\nreason: {failed.value.detail}")
    assert "ONNX Runtime and the native model differ by" in failed.value.detail
    assert f"tolerance {TOLERANCE:g}" in failed.value.detail


def test_a_model_that_ignores_the_global_weights_is_refused(
    host: Host, trained: tensors.Weights, tmp_path: Path
) -> None:
    """Its ``load_state_dict`` accepts the federated weights and keeps its own: what would be
    anchored as the federation's model would be the bundle's."""
    bundle = hostile_bundle(
        tmp_path / "bundle",
        """
        class Own(nn.Sequential):
            def load_state_dict(self, state, strict=True, assign=False):
                return None

        def make_model():
            return Own(*EXAMPLE_MODEL)
        """,
    )
    fed, blob = federation(host, bundle, trained)
    with pytest.raises(TranslationFailed) as failed:
        translator(host)(fed, blob)
    print(f"\nreason: {failed.value.detail}")
    assert "holds none of the weights the node gave its factory to load" in failed.value.detail
