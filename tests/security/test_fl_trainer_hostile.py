"""Hostile federated training code against the warm trainer: each attack fails, the node goes on.

The bundle's code runs in the provider's trainer process for the whole federation, with the
channel's descriptors in reach (``$AGORA_CHANNEL_FDS``), so it can write anything there. The
tests bring bundles that look for the held-out rows, try the network, write garbage, oversized
or foreign frames, answer nothing, die mid-call, close the channel, and return tensors or
metrics the node must not pass on. Each must end in a clear :class:`TrainerFailed` in the
node's words, with nothing of what the code chose quoted, no process left behind and the
test process (the node) unharmed.
"""

from __future__ import annotations

import json
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from federation.recipes import ModelCode
from federation.tensors import UpdateRejected
from federation.warm import TrainerFailed, UpdateRefused, WarmTrainer
from kernel.errors import InvalidInput
from tests.integration.test_fl_trainer import Digits, Logs, make_digits
from tests.integration.test_sandbox_bubblewrap import _known_children, no_descendants
from tests.security.rows import RowCounter, digit_rows
from training_jobs.sandbox import BubblewrapSandbox, Limits

__all__ = ["_known_children"]  # the autouse fixture that notes the processes present before each test

LAYOUT = {"w": ([4, 3], "float32"), "b": ([3], "float32")}
START = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
LIMITS = Limits(cpu_seconds=120, wall_seconds=120, memory_bytes=1024**3, max_processes=32)
MiB = 1024**2
CLIENT = """
import json, os, struct, sys, threading, time
import numpy as np
from safetensors.numpy import save

R, W = (int(fd) for fd in os.environ["AGORA_CHANNEL_FDS"].split(","))


def frame(header, payload=b""):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(text)) + text + struct.pack(">Q", len(payload)) + payload


def shape_ok():
    return {arrays}


class Client:
    def __init__(self, X, y):
        self.X, self.y, self.calls = X, y, 0
{init}
    def get_parameters(self, config):
        return shape_ok()

    def fit(self, parameters, config):
        self.calls += 1
        metrics, count = {{}}, len(self.y)
{fit}
        return parameters, count, metrics
"""


@pytest.fixture(scope="module")
def sandbox() -> BubblewrapSandbox:
    box = BubblewrapSandbox()
    box.check()
    return box


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return make_digits(tmp_path_factory.mktemp("provider") / "data")


ARRAYS = "[np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]"


def bundle(
    directory: Path,
    *,
    fit: str = "",
    init: str = "",
    files: dict[str, str] | None = None,
    arrays: str = ARRAYS,
) -> Path:
    """A bundle whose ``client:Client`` runs ``init`` when built and ``fit`` in each fit."""
    code = directory / "bundle"
    code.mkdir(parents=True)
    indent = " " * 8
    source = CLIENT.format(
        init=textwrap.indent(textwrap.dedent(init), indent),
        fit=textwrap.indent(textwrap.dedent(fit), indent),
        arrays=arrays,
    )
    (code / "client.py").write_text(source)
    for name, text in (files or {}).items():
        (code / name).write_text(textwrap.dedent(text))
    return code


@pytest.fixture
def hostile(sandbox: BubblewrapSandbox, digits: Digits, tmp_path: Path) -> Iterator[Any]:
    """``hostile(fit=…, init=…)``: a started, greeted trainer of a Flower-style client whose
    ``fit`` runs the given code (no torch: these start in a fraction of a second)."""
    made: list[WarmTrainer] = []

    def make(*, limits: Limits = LIMITS, logs: Logs | None = None, **code: Any) -> WarmTrainer:
        workdir = tmp_path / f"t{len(made)}"
        trainer = WarmTrainer(
            sandbox, bundle(workdir, **code), digits.train, digits.holdout, ModelCode(client="client:Client"),
            None, LAYOUT, limits, logs or Logs(), workdir / "fl",
        )  # fmt: skip
        made.append(trainer)
        trainer.start()
        trainer.hello(timeout=60)
        return trainer

    rss = psutil.Process().memory_info().rss
    yield make
    for trainer in made:
        trainer.close()
    assert no_descendants() == []
    grown = psutil.Process().memory_info().rss - rss
    assert grown < 64 * MiB, f"the node's memory grew by {grown / MiB:.0f} MiB"


def failure(trainer: WarmTrainer, *, timeout: float = 30) -> TrainerFailed:
    with pytest.raises(TrainerFailed) as caught:
        trainer.fit(START, {"round": 1}, timeout=timeout)
    return caught.value


# -- what the training code can see and reach ---------------------------------------------------

SNOOP = r"""
import json, os, sys
import numpy as np

SKIP = ("/proc", "/sys", "/dev", "/usr")
DONE = []


def snoop(where, extra_paths):
    if DONE:
        return
    DONE.append(where)
    seen = []
    for top in sorted(os.listdir("/")):
        base = "/" + top
        if base in SKIP or not os.path.isdir(base) or os.path.islink(base):
            continue
        for root, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if "site-packages" not in d and not d.startswith("python3")]
            seen.extend(os.path.join(root, f) for f in files)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            seen.extend(os.path.join(f"/proc/{pid}/root", p.lstrip("/")) for p in extra_paths)
    seen.extend(extra_paths)
    print(f"SNOOP {where} files " + json.dumps(sorted(set(seen)))[:3000], flush=True)
    for path in sorted(set(seen)):
        if not path.endswith((".npz", ".npy")):
            continue
        try:
            data = np.load(path, allow_pickle=False)
            X = data["X"] if hasattr(data, "files") else data
        except Exception as exc:
            print(f"SNOOP {where} cannot read {path}: {type(exc).__name__}", flush=True)
            continue
        rows = np.rint(np.asarray(X, dtype=float).reshape(len(X), -1) * 16).astype(int)
        print(f"SNOOP {where} read {path}: {len(rows)} rows", flush=True)
        for row in rows:
            print("ROW " + " ".join(str(v) for v in row), flush=True)
"""


def test_the_training_code_never_sees_the_held_out_rows(
    sandbox: BubblewrapSandbox, digits: Digits, tmp_path: Path
) -> None:
    """The training and held-out files sit side by side on the host; the client reads every
    file it can reach (and the host paths, and other processes' roots) and prints every row."""
    paths = [str(digits.holdout), str(digits.train), "/holdout/holdout.npz", "/data/holdout.npz"]
    model = f"""
        from snoop import snoop
        from torch import nn

        def make_model():
            snoop("factory", {paths!r})
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    """
    code = bundle(
        tmp_path,
        init=f"from snoop import snoop\nsnoop('client', {paths!r})\n",
        files={"snoop.py": SNOOP, "model.py": model},
        arrays="[np.zeros((10, 64), np.float32), np.zeros(10, np.float32)]",
    )
    layout = {"1.weight": ([10, 64], "float32"), "1.bias": ([10], "float32")}
    logs = Logs()
    start = {"1.weight": np.zeros((10, 64), np.float32), "1.bias": np.zeros(10, np.float32)}
    model_code = ModelCode(factory="model:make_model", client="client:Client", input_shape=(64,))
    with WarmTrainer(
        sandbox, code, digits.train, digits.holdout, model_code, None, layout, LIMITS, logs, tmp_path / "fl"
    ) as trainer:
        trainer.hello(timeout=120)
        update = trainer.fit(start, {"round": 1}, timeout=60)
        figures = trainer.evaluate(start, timeout=60)
    train, held = digit_rows(digits.train), digit_rows(digits.holdout)
    train_keys = {row.tobytes() for row in train}
    only_held = np.array([row for row in held if row.tobytes() not in train_keys])
    only_train = np.array([row for row in train if row.tobytes() not in {r.tobytes() for r in held}])
    trainer_log, evaluator_log = "\n".join(logs.of("trainer")), "\n".join(logs.of("evaluator"))
    held_in_trainer = RowCounter(only_held).in_text(trainer_log)
    train_in_trainer = RowCounter(only_train).in_text(trainer_log)
    held_in_evaluator = RowCounter(only_held).in_text(evaluator_log)
    train_in_evaluator = RowCounter(only_train).in_text(evaluator_log)
    returned = RowCounter(only_held).in_json({"update": {k: v.tolist() for k, v in update.weights.items()},
                                              "metrics": update.metrics, "figures": figures})  # fmt: skip
    print(
        f"\nheld-out rows (not also training rows): {len(only_held)}; seen by the training code: "
        f"{len(held_in_trainer)}; training rows it printed: {len(train_in_trainer)} of {len(only_train)}; "
        f"in what the node returned: {len(returned)}; the evaluator's log (provider only) holds "
        f"{len(held_in_evaluator)} held-out and {len(train_in_evaluator)} training rows"
    )
    assert len(train_in_trainer) == len(only_train)  # the probe works: it printed every row it could read
    assert held_in_trainer == set()
    for path in (digits.holdout, "/holdout/holdout.npz", "/data/holdout.npz"):
        assert f"SNOOP client cannot read {path}: FileNotFoundError" in trainer_log
    assert train_in_evaluator == set()  # the evaluator is never shown the training rows either
    assert returned == set()
    assert set(figures) == {"loss", "accuracy", "num_examples"}


def test_the_training_code_has_no_network(hostile: Any) -> None:
    listener = socket.create_server(("0.0.0.0", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[Any] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    host_ip = socket.gethostbyname(socket.gethostname())
    init = f"""
        import socket
        found = {{"interfaces": [name for _, name in socket.if_nameindex()]}}
        for name, target in (("loopback", ("127.0.0.1", {port})), ("host", ("{host_ip}", {port})), ("internet", ("1.1.1.1", 443))):
            try:
                socket.create_connection(target, timeout=2).close()
                found[name] = "connected"
            except OSError as exc:
                found[name] = type(exc).__name__ + ": " + str(exc)
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("1.1.1.1", 53))
            found["udp"] = "sent"
        except OSError as exc:
            found["udp"] = type(exc).__name__
        try:
            found["dns"] = str(socket.getaddrinfo("example.com", 443))
        except OSError as exc:
            found["dns"] = type(exc).__name__
        print("NET " + json.dumps(found), flush=True)
    """
    logs = Logs()
    try:
        trainer = hostile(init=init, logs=logs)
        trainer.fit(START, {"round": 1}, timeout=30)
    finally:
        stop.set()
        thread.join()
        listener.close()
    lines = [line for line in logs.of("trainer") if line.startswith("NET ")]
    found = json.loads(lines[0].removeprefix("NET "))
    print(f"\nnetwork probe: {found}; connections that reached the host: {len(accepted)}")
    assert found["interfaces"] == ["lo"]
    assert all(found[name] != "connected" for name in ("loopback", "host", "internet"))
    assert found["udp"] != "sent" and not found["dns"].startswith("[")
    assert accepted == []


# -- the channel -------------------------------------------------------------------------------

CHANNEL_ATTACKS = {
    "a header that is not JSON": (
        "os.write(W, struct.pack('>I', 9) + b'\\xff\\xfenot-js' + struct.pack('>Q', 0))",
        "broke the channel's protocol during fit (the header is not UTF-8 JSON)",
    ),
    "a header that is a list": (
        "os.write(W, frame(b'[1, 2, 3]'))",
        "broke the channel's protocol during fit (the header is not a JSON object)",
    ),
    "a 4 GiB header": (
        "os.write(W, struct.pack('>I', 2**32 - 1) + b'{' * 60000)",
        "broke the channel's protocol during fit (it announced a header over 64 KiB)",
    ),
    "an exabyte payload": (
        "os.write(W, struct.pack('>I', 30) + json.dumps({'ok': True, 'call': 2}).encode().ljust(30) + struct.pack('>Q', 2**62))",
        "broke the channel's protocol during fit (it announced a payload over the cap of",
    ),
    "a deep header": (
        "os.write(W, frame(b'[' * 30000 + b']' * 30000))",
        "broke the channel's protocol",
    ),
    "a reply to another call": (
        "os.write(W, frame({'ok': True, 'call': 7, 'num_examples': 1, 'metrics': {}}))",
        "answered another call than fit and was stopped",
    ),
    "half a frame, then silence": (
        "os.write(W, struct.pack('>I', 100) + b'{\"ok\": tr')",
        "did not answer fit within 3 s and was stopped",
    ),
}


@pytest.mark.parametrize("attack", list(CHANNEL_ATTACKS))
def test_what_the_code_writes_to_the_channel_is_refused(hostile: Any, attack: str) -> None:
    """The code writes its own bytes in place of the reply, then waits (the trainer's own
    reply never comes): the node refuses them before reading what they announce."""
    written, said = CHANNEL_ATTACKS[attack]
    trainer = hostile(fit=f"{written}\ntime.sleep(3600)")
    began = time.monotonic()
    refused = failure(trainer, timeout=3)
    print(f"\n{attack}: {refused.detail} ({time.monotonic() - began:.2f} s)")
    assert said in refused.detail
    assert not trainer.alive
    assert time.monotonic() - began < 3 + 10
    with pytest.raises(TrainerFailed, match="is not running"):
        trainer.fit(START, {"round": 2}, timeout=3)


def test_bytes_sent_when_nothing_was_asked_break_the_protocol(hostile: Any) -> None:
    fit = """
        def later():
            time.sleep(0.3)
            os.write(W, frame({"ok": True, "call": 3, "num_examples": 1}, save({"w": np.zeros((4, 3), np.float32)})))
        threading.Thread(target=later).start()
    """
    trainer = hostile(fit=fit)
    trainer.fit(START, {"round": 1}, timeout=30)
    time.sleep(1.0)
    refused = failure(trainer)
    assert "broke the channel's protocol during fit (it sent bytes nobody asked for)" in refused.detail
    assert not trainer.alive


def test_a_trainer_that_never_answers_is_killed(hostile: Any) -> None:
    trainer = hostile(fit="print('thinking forever', flush=True)\ntime.sleep(3600)")
    began = time.monotonic()
    refused = failure(trainer, timeout=2)
    waited = time.monotonic() - began
    print(f"\n{refused.detail}: after {waited:.2f} s")
    assert refused.detail == "the trainer did not answer fit within 2 s and was stopped"
    assert "thinking forever" in refused.private
    assert waited < 2 + 10 and not trainer.alive
    assert no_descendants() == []


def test_a_trainer_that_exits_mid_call(hostile: Any) -> None:
    trainer = hostile(fit="print('ROWS 0 3 16 9', flush=True)\nos._exit(3)")
    refused = failure(trainer)
    assert refused.detail == "the trainer process exited with status 3 during fit"
    assert "ROWS 0 3 16 9" in refused.private and "ROWS" not in refused.detail
    assert not trainer.alive


def test_a_trainer_that_closes_its_channel_and_lives_on_is_stopped(hostile: Any) -> None:
    trainer = hostile(fit="os.close(W)\nos.close(R)\ntime.sleep(3600)")
    refused = failure(trainer)
    assert refused.detail == "the trainer closed its channel during fit and was stopped"
    assert not trainer.alive


def test_the_bundle_code_failing_keeps_the_trainer(hostile: Any) -> None:
    trainer = hostile(fit="if self.calls == 1:\n    raise ValueError('ROWS 1 2 3 of the provider')")
    refused = failure(trainer)
    assert refused.detail == "the bundle's code failed during fit in the trainer"
    assert "ROWS 1 2 3" in refused.private and "ROWS" not in refused.detail
    assert trainer.alive
    assert trainer.fit(START, {"round": 2}, timeout=30).num_examples == trainer.train_rows


def test_the_limits_hold_for_the_whole_life_of_the_trainer(hostile: Any) -> None:
    """CPU seconds are the federation's, not a round's: rounds that each stay under the
    limit stop the trainer once together they pass it."""
    burn = "end = time.process_time() + 1.2\nwhile time.process_time() < end:\n    pass"
    trainer = hostile(fit=burn, limits=Limits(cpu_seconds=3, wall_seconds=120, memory_bytes=1024**3))
    served = 0
    with pytest.raises(TrainerFailed) as caught:
        for number in range(1, 10):
            trainer.fit(START, {"round": number}, timeout=30)
            served += 1
    print(f"\nrounds served under a 3 s CPU limit at 1.2 s each: {served}; then: {caught.value.detail}")
    assert served in (1, 2)
    assert caught.value.detail == "the trainer process was stopped: CPU time limit of 3 s exceeded during fit"


def test_the_wall_time_limit_is_the_whole_federations(hostile: Any) -> None:
    trainer = hostile(
        fit="time.sleep(1.0)", limits=Limits(cpu_seconds=60, wall_seconds=4, memory_bytes=1024**3)
    )
    served = 0
    with pytest.raises(TrainerFailed) as caught:
        for number in range(1, 10):
            trainer.fit(START, {"round": number}, timeout=30)
            served += 1
    print(f"\nrounds of 1 s served under a 4 s wall time: {served}; then: {caught.value.detail}")
    assert 1 <= served <= 3
    assert (
        caught.value.detail == "the trainer process was stopped: wall time limit of 4 s exceeded during fit"
    )


def test_memory_over_the_limit_stops_the_trainer(hostile: Any) -> None:
    trainer = hostile(
        fit="hog = [np.ones(50 * 1024**2 // 8) for _ in range(20)]",
        limits=Limits(cpu_seconds=60, wall_seconds=60, memory_bytes=512 * MiB),
    )
    refused = failure(trainer)
    print(f"\n1000 MiB asked under a 512 MiB limit: {refused.detail}")
    if trainer.alive:  # no memory cgroup here: the address-space limit refused the allocation
        assert refused.detail == "the bundle's code failed during fit in the trainer"
        assert "MemoryError" in refused.private
    else:
        assert (
            refused.detail == "the trainer process was stopped: memory limit of 512 MiB exceeded during fit"
        )


# -- what comes back ---------------------------------------------------------------------------

W43, B3 = "np.zeros((4, 3), np.float32)", "np.zeros(3, np.float32)"
CRAFTED = {
    "an extra tensor": (f'{{"w": {W43}, "b": {B3}, "ROWS_0_3_16_9": np.arange(64, dtype=np.float32)}}',
                        "the update was refused: it holds tensors the model does not have"),
    "a renamed tensor": (f'{{"w": {W43}, "ROWS_0_3_16_9": {B3}}}', "the update was refused: it holds tensors the model does not have"),
    "a missing tensor": (f'{{"w": {W43}}}', "the update was refused: it lacks tensors of the model"),
    "a reshaped tensor": (f'{{"w": np.zeros((3, 4, 1, 6, 9), np.float32), "b": {B3}}}', "the update was refused: tensor w has the wrong shape"),
    "another dtype": (f'{{"w": np.zeros((4, 3), np.float64), "b": {B3}}}', "the update was refused: tensor w has the wrong dtype"),
    "NaN values": (f'{{"w": np.full((4, 3), np.nan, np.float32), "b": {B3}}}', "tensor w holds values that are not finite"),
    "infinite values": (f'{{"w": {W43}, "b": np.array([1, np.inf, 2], np.float32)}}', "tensor b holds values that are not finite"),
}  # fmt: skip


GOOD = f'save({{"w": {W43}, "b": {B3}}})'
REPLY = "{'ok': True, 'call': 2, 'served': 2, 'num_examples': 10, 'metrics': {}}"
HEADERS = {
    "an infinite metric": (
        'b\'{"ok": true, "call": 2, "num_examples": 10, "metrics": {"loss": Infinity}}\'',
        "the trainer's metric loss is not a finite number",
    ),
    "a metric list": (
        'b\'{"ok": true, "call": 2, "num_examples": 10, "metrics": [0, 3, 16, 9]}\'',
        "the trainer's metrics are not named numbers",
    ),
    "a count that is text": (
        'b\'{"ok": true, "call": 2, "num_examples": "ROWS", "metrics": {}}\'',
        "the number of examples the trainer reported for fit is not within its",
    ),
}


@pytest.mark.parametrize("case", [*CRAFTED, "a pickle", *HEADERS])
def test_a_crafted_reply_is_refused(hostile: Any, case: str) -> None:
    """The code sends its own well-formed reply to the fit (call 2, after hello's 1) with
    tensors or figures of its choosing, then exits: the node refuses them, quoting nothing."""
    header, payload = REPLY, GOOD
    if case == "a pickle":
        payload, said = (
            "b'\\x80\\x04\\x95' + b'ROWS_0_3_16_9' * 8",
            "the update the trainer returned is not a safetensors file",
        )
    elif case in HEADERS:
        header, said = HEADERS[case]
    else:
        payload, said = f"save({CRAFTED[case][0]})", CRAFTED[case][1]
    trainer = hostile(fit=f"os.write(W, frame({header}, {payload}))\nos._exit(0)")
    with pytest.raises(UpdateRefused) as caught:
        trainer.fit(START, {"round": 1}, timeout=30)
    print(f"\n{case}: {caught.value.detail}")
    assert said in caught.value.detail
    assert "ROWS" not in caught.value.detail and "9" not in caught.value.detail


RETURNED = {
    "NaN weights": ("parameters = [np.full((4, 3), np.nan, np.float32), np.zeros(3, np.float32)]",
                    "the update was refused: tensor w holds values that are not finite (NaN or infinity)"),
    "an undeclared metric": ("metrics = {'ROWS_0_3_16_9': 1.0}", "the trainer reported a metric the federation does not declare"),
    "nine metrics": ("metrics = {f'm{i}': 1.0 for i in range(9)}", "the trainer reported more than 8 metrics"),
    "a text metric": ("metrics = {'loss': 'ROWS 0 3 16 9'}", "the trainer's metric loss is not a finite number"),
    "more examples than rows": ("count = 10**9", "the number of examples the trainer reported for fit is not within its"),
    "no examples": ("count = 0", "the number of examples the trainer reported for fit is not within its"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RETURNED))
def test_what_the_client_returns_is_checked_and_the_trainer_lives_on(hostile: Any, case: str) -> None:
    """The client's own return values: refused in the node's words, and the process (whose
    protocol stayed in step) serves the next round."""
    change, said = RETURNED[case]
    trainer = hostile(fit=f"if self.calls == 1:\n    {change}")
    with pytest.raises(UpdateRefused) as caught:
        trainer.fit(START, {"round": 1}, timeout=30)
    assert said in caught.value.detail
    assert "ROWS" not in caught.value.detail
    assert trainer.alive
    fit = trainer.fit(START, {"round": 2, "note": "again"}, timeout=30)
    assert fit.num_examples == trainer.train_rows and set(fit.weights) == set(LAYOUT)


def test_metrics_are_rounded_to_four_significant_digits(hostile: Any) -> None:
    trainer = hostile(fit="metrics = {'loss': 0.123456789, 'accuracy': 0.98765}")
    assert trainer.fit(START, {"round": 1}, timeout=30).metrics == {"loss": 0.1235, "accuracy": 0.9877}


def test_a_model_that_is_not_the_federations_is_refused_at_hello(
    sandbox: BubblewrapSandbox, digits: Digits, tmp_path: Path
) -> None:
    code = bundle(tmp_path, arrays="[np.zeros((4, 4), np.float32), np.zeros(3, np.float32)]")
    trainer = WarmTrainer(
        sandbox, code, digits.train, None, ModelCode(client="client:Client"), None, LAYOUT, LIMITS, Logs(),
        tmp_path / "fl",
    )  # fmt: skip
    with trainer, pytest.raises(UpdateRefused) as caught:
        trainer.hello(timeout=60)
    assert caught.value.detail == (
        "the model the bundle builds in the trainer does not match the federation's weights: "
        "tensor w has another shape or dtype than [4, 3] float32"
    )


def test_a_bad_round_config_is_refused_before_it_reaches_the_trainer(hostile: Any) -> None:
    trainer = hostile()
    served = trainer.served
    for config in ({"x" * 41: 1}, {"blob": "y" * 201}, {"nested": {"a": 1}}, {f"k{i}": i for i in range(33)}):
        with pytest.raises(InvalidInput):
            trainer.fit(START, config, timeout=30)
    with pytest.raises(UpdateRejected):
        trainer.fit({"w": START["w"]}, {}, timeout=30)
    assert trainer.served == served and trainer.alive


def test_no_weights_go_to_a_trainer_before_its_model_was_checked(
    sandbox: BubblewrapSandbox, digits: Digits, tmp_path: Path
) -> None:
    trainer = WarmTrainer(
        sandbox, bundle(tmp_path), digits.train, None, ModelCode(client="client:Client"), None, LAYOUT, LIMITS,
        Logs(), tmp_path / "fl",
    )  # fmt: skip
    with trainer, pytest.raises(TrainerFailed, match="has not said hello yet"):
        trainer.fit(START, {"round": 1}, timeout=30)
    assert trainer.served == 0
