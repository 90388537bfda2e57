"""The warm trainer's pieces that need no sandbox: frames, the recipe's bounds, and the reply checks.

The frames are exchanged over real pipes; the accounting of a DP-SGD fit is compared with what
Opacus itself does with the same loader; the refusals of a reply are checked to quote nothing
the trainer chose, whatever names it picks.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.recipes import DPSGD, ModelCode, Recipe, check_config
from federation.replies import UpdateRefused, checked_metrics, checked_weights, same_layout
from federation.tensors import encode, layout
from federation.trainer import frames
from kernel.errors import InvalidInput
from training_jobs.sandbox import Channel, Limits, OciSandbox, SandboxRun, SandboxUnavailable

LAYOUT = {"w": ([4, 3], "float32"), "b": ([3], "float32")}
GOOD = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}


# -- frames -----------------------------------------------------------------------------------


def through_a_pipe(data: bytes, *, max_payload: int = 1 << 20) -> tuple[dict[str, object], bytes]:
    read, write = os.pipe()
    try:
        frames.write_all(write, data)
        os.close(write)
        write = -1
        return frames.read(read, max_payload=max_payload)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def test_a_frame_carries_its_header_and_payload() -> None:
    payload = encode(GOOD)
    header, body = through_a_pipe(frames.pack({"op": "fit", "call": 3, "config": {"round": 1}}, payload))
    assert header == {"op": "fit", "call": 3, "config": {"round": 1}}
    assert body == payload
    raw = frames.pack({"op": "stop"})
    assert raw[:4] == struct.pack(">I", len(b'{"op":"stop"}')) and raw.endswith(struct.pack(">Q", 0))


def test_what_is_not_a_frame_is_refused() -> None:
    with pytest.raises(frames.BadFrame, match="over the limit of 65536"):
        frames.pack({"blob": "x" * 70_000})
    with pytest.raises(frames.BadFrame, match="over the limit of 65536"):
        through_a_pipe(struct.pack(">I", 1 << 20))
    with pytest.raises(frames.BadFrame, match="payload of 2049 bytes is over the limit of 2048"):
        through_a_pipe(frames.pack({"op": "fit"}, b"x" * 2049), max_payload=2048)
    with pytest.raises(frames.BadFrame, match="not a JSON object"):
        through_a_pipe(frames.pack([1, 2]))  # type: ignore[arg-type]
    with pytest.raises(frames.BadFrame, match="ended inside a frame"):
        through_a_pipe(frames.pack({"op": "fit"}, b"12345678")[:-3])
    with pytest.raises(frames.ChannelClosed):
        through_a_pipe(b"")
    with pytest.raises(frames.BadFrame, match="not UTF-8 JSON"):
        frames.parse_header(b"[" * 50_000 + b"]" * 50_000)
    with pytest.raises(frames.BadFrame, match="not UTF-8 JSON"):
        frames.parse_header(b"\xff\xfe{}")


# -- the recipe, the model code and a round's config ------------------------------------------


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: Recipe(optimizer="rmsprop"), "optimizer must be sgd or adam"),  # type: ignore[arg-type]
        (lambda: Recipe(lr=0), "lr must lie within"),
        (lambda: Recipe(lr=math.nan), "lr must be a number"),
        (lambda: Recipe(momentum=1.0), "momentum must lie within"),
        (lambda: Recipe(local_epochs=0), "local_epochs must lie within"),
        (lambda: Recipe(local_epochs=1.5), "local_epochs must be an integer"),  # type: ignore[arg-type]
        (lambda: Recipe(batch_size=0), "batch_size must lie within"),
        (lambda: Recipe(proximal_mu=-1), "proximal_mu must lie within"),
        (lambda: DPSGD(noise_multiplier=0, max_grad_norm=1), "dp.noise_multiplier must lie within"),
        (lambda: DPSGD(noise_multiplier=1, max_grad_norm=True), "dp.max_grad_norm must be a number"),  # type: ignore[arg-type]
        (lambda: ModelCode(), "names neither a factory nor a client"),
        (lambda: ModelCode(factory="os.system('x'):f"), "factory must be module:attribute"),
        (lambda: ModelCode(client="../evil:Client"), "client must be module:attribute"),
        (lambda: ModelCode(factory="m:f", input_shape=(1, 0)), "input_shape must be"),
        (lambda: ModelCode(factory="m:f", input_shape=(1, 2, 3, 4, 5)), "input_shape must be"),
        (lambda: ModelCode(factory="m:f", seed=-1), "seed must lie within"),
    ],
)
def test_a_recipe_out_of_bounds_is_refused(make: object, said: str) -> None:
    with pytest.raises(InvalidInput, match=said):
        make()  # type: ignore[operator]


def test_a_rounds_config_is_a_few_scalars_within_the_recipes_bounds() -> None:
    recipe = Recipe()
    assert check_config({"round": 3, "lr": 0.1, "tag": "iid", "on": True}, recipe=recipe) == {
        "round": 3, "lr": 0.1, "tag": "iid", "on": True,
    }  # fmt: skip
    refused = [
        ({f"k{i}": i for i in range(33)}, "at most 32 entries"),
        ({"x" * 41: 1}, "names of at most 40"),
        ({"a b": 1}, "names of at most 40"),
        ({"blob": "y" * 201}, "over 200 characters"),
        ({"nested": {"a": 1}}, "must be a number, a boolean or a string"),
        ({"list": [1, 2]}, "must be a number, a boolean or a string"),
        ({"big": math.inf}, "not finite"),
        ({"lr": 50.0}, "the round's lr must lie within"),
        ({"local_epochs": 2.5}, "the round's local_epochs must be an integer"),
        ({"round": -1}, "the round's round must lie within"),
    ]
    for config, said in refused:
        with pytest.raises(InvalidInput, match=said):
            check_config(config, recipe=recipe)
    assert check_config({"lr": 50.0}, recipe=None) == {"lr": 50.0}  # a client's own config is its own


def test_a_round_may_not_change_the_steps_of_a_dp_recipe() -> None:
    private = Recipe(local_epochs=2, dp=DPSGD(noise_multiplier=1.1, max_grad_norm=1.0))
    assert check_config({"local_epochs": 2, "lr": 0.01}, recipe=private) == {"local_epochs": 2, "lr": 0.01}
    with pytest.raises(InvalidInput, match="may not change a DP-SGD recipe's local_epochs"):
        check_config({"local_epochs": 3}, recipe=private)
    assert check_config({"local_epochs": 3}, recipe=Recipe()) == {"local_epochs": 3}


# -- sandboxes that cannot host a warm process -------------------------------------------------


def test_container_sandboxes_refuse_a_channel_run(tmp_path: Path) -> None:
    from training_jobs.sandbox.kubernetes import KubernetesSandbox

    channel = Channel.open()
    run = SandboxRun(command=["python", "-m", "agora_fl"], mounts=[], output_dir=tmp_path, limits=Limits(),
                     channel=channel)  # fmt: skip
    try:
        for box in (
            OciSandbox("podman"),
            OciSandbox("docker"),
            KubernetesSandbox(volume_claim="c", volume_root=tmp_path),
        ):
            with pytest.raises(SandboxUnavailable) as refused:
                box.run(run)
            assert refused.value.detail == (
                f"{box.kind} cannot host a warm federation trainer; use AGORA_SANDBOX=bwrap (bubblewrap)"
            )
    finally:
        channel.close()
    assert channel.requests == channel.replies == channel.job_reads == channel.job_writes == -1


# -- the reply checks --------------------------------------------------------------------------


def test_metrics_are_bounded_rounded_and_in_the_declared_order() -> None:
    declared = ("train_loss", "train_accuracy", "loss")
    got = checked_metrics({"loss": 2.718281828, "train_loss": 0.000123456}, declared)
    assert list(got.items()) == [("train_loss", 0.0001235), ("loss", 2.718)]
    assert checked_metrics(None, declared) == {}
    with pytest.raises(UpdateRefused, match="does not declare"):
        checked_metrics({"rows_0_3": 1.0}, declared)
    with pytest.raises(UpdateRefused, match="is not a finite number"):
        checked_metrics({"loss": True}, declared)


def test_a_reported_layout_must_be_the_federations() -> None:
    same_layout(layout(GOOD), LAYOUT, "trainer")
    with pytest.raises(UpdateRefused, match="it has 1 tensors the federation's weights do not"):
        same_layout({**LAYOUT, "ROWS": ([1], "float32")}, LAYOUT, "trainer")
    with pytest.raises(UpdateRefused, match="it lacks the tensor b"):
        same_layout({"w": LAYOUT["w"]}, LAYOUT, "evaluator")
    with pytest.raises(UpdateRefused, match="tensor w has another shape or dtype than \\[4, 3\\] float32"):
        same_layout({**LAYOUT, "w": ([3, 4], "float32")}, LAYOUT, "trainer")


NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=60)
ALLOWED = {
    "the update was refused: it holds tensors the model does not have",
    "the update was refused: it lacks tensors of the model",
    "the update was refused: tensor w has the wrong shape",
    "the update was refused: tensor b has the wrong shape",
    "the update was refused: tensor w has the wrong dtype",
    "the update was refused: tensor w holds values that are not finite (NaN or infinity)",
    "the update was refused: it is over the size cap",
}


@settings(max_examples=200, deadline=None)
@given(name=NAMES, shape=st.lists(st.integers(0, 9), max_size=5), spoof=st.booleans())
def test_a_refused_update_quotes_nothing_the_trainer_chose(name: str, shape: list[int], spoof: bool) -> None:
    """Whatever names and shapes the trainer sends (one imitating the check's own sentence
    among them), the refusal is one of the node's sentences about the federation's tensors."""
    if spoof:
        name = f"tensor {name} has shape [1]"
    weights = {"w": np.zeros(shape, np.float32), name: np.zeros(2, np.float32)}
    if name in ("w", "b"):
        weights = {"w": np.zeros(shape, np.float32)}
    with pytest.raises(UpdateRefused) as refused:
        checked_weights(encode(weights), LAYOUT, 1 << 20, "the update")
    assert refused.value.detail in ALLOWED


def test_a_good_update_comes_back_in_the_models_order() -> None:
    backwards = encode({"b": GOOD["b"], "w": GOOD["w"]})
    assert list(checked_weights(backwards, LAYOUT, 1 << 20, "the update")) == ["w", "b"]
    with pytest.raises(UpdateRefused, match="it is over the size cap"):
        checked_weights(backwards, LAYOUT, 10, "the update")
