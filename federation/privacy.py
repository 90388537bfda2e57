"""Differential privacy of a provider's model updates, applied and accounted by the provider's node.

A provider's node, not the coordinator's code, decides how private the update it sends is and
how much privacy loss it has spent. Each round the node (1) computes the round's privacy events
from the recipe *it* runs (:func:`round_events`), never from figures the sandbox reports,
(2) asks whether one more round stays within its policy's cap and the federation's target
(:func:`contribution_refusal`, :func:`budget_refusal`), (3) after the sandboxed training, clips
the whole update and adds Gaussian noise outside the sandbox (:func:`clip_and_noise`), and
(4) records the events in the provider's :class:`PrivacyLedger` for that federation.

What is protected, and by what:

* **Node-side clipping and noise** protect the provider's whole dataset each round: the delta
  (weights - global) over all tensors together is clipped to L2 norm C and N(0, (zC)^2) is added
  to every coordinate. It runs in the node process on the tensors the sandbox handed back, so
  the model code cannot bypass it. Any two datasets the provider might hold give clipped
  deltas at most 2C apart (each lies in the ball of radius C), so the node accounts the
  mechanism as a Gaussian of noise multiplier z/2: the resulting epsilon holds for one
  example, any subset, and the whole dataset (user-level for the organisation). The
  sensitivity C of DP-FedAvg is for a client's presence or absence, which the coordinator of
  an agreed federation already knows, so it is not used here. Integer tensors (counters such
  as ``num_batches_tracked``) cannot carry noise; the node sends the global model's values
  back for them, so nothing data-dependent leaves unnoised.
* **DP-SGD** (Opacus, run by the trainer in the sandbox with the node's own recipe) gives an
  epsilon per example (add/remove-one, Poisson sampling q = batch/n, which is at least Opacus'
  own rate 1/ceil(n/batch), so the figure errs on the safe side). But the model code runs in
  the same sandbox and could write data into the weights outside gradient steps (buffers,
  a forward pass with side effects): DP-SGD's epsilon assumes that code is benign.

The cap is checked against the ledger of both mechanisms composed (RDP adds the curves; both
satisfy add/remove-one-example DP, so the composed figure is per example). When only DP-SGD
is configured the cap still counts it, and the round records say so: only the node-side
figure (:meth:`PrivacyLedger.node_epsilon`) holds whatever the model code does, so a provider
that does not trust the coordinator's model code should configure node-side noise.
A cap with no mechanism at all is a refusal: epsilon is infinite.

The node reports epsilon from the RDP accountant of Google's ``dp_accounting`` (an upper
bound, the accountant Opacus reports too); the PLD accountant gives a tighter upper bound on
request (``accountant="pld"``), but the cap is checked with RDP so that two nodes with the
same ledger always agree. Not protected: the noise is floating-point Gaussian from numpy,
not an exact discrete sampler, so attacks on floating-point noise are out of scope; how many
rounds a provider took part in and its sample count travel in the clear.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, NoReturn

import numpy as np
from dp_accounting import dp_event
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from federation.privacy_ledger import PrivacyLedger, ledger_epsilon
from federation.tensors import UpdateRejected, Weights
from marketplace.policy.explain import number_words

__all__ = [
    "DpSgdOptions",
    "PrivacyLedger",
    "PrivacyOptions",
    "budget_refusal",
    "clip_and_noise",
    "contribution_refusal",
    "node_rng",
    "round_events",
]

MAX_NOISE_MULTIPLIER = 1000.0
MAX_CLIP_NORM = 1e6
MAX_DELTA = 0.01
MAX_EPSILON = 1e6


def _check(what: str, low: float, high: float, *, low_open: bool = True, why: str = "") -> AfterValidator:
    """A float in (low, high] (or [low, high]) and finite, refused with a one-line reason
    that says ``what`` it is."""

    def check(value: float) -> float:
        if not math.isfinite(value):
            raise PydanticCustomError("privacy", f"{what} must be a finite number")
        if value < low or (low_open and value == low):
            above = "greater than" if low_open else "at least"
            raise PydanticCustomError("privacy", f"{what} must be {above} {number_words(low)}")
        if value > high:
            raise PydanticCustomError("privacy", f"{what} must be at most {number_words(high)}{why}")
        return value

    return AfterValidator(check)


def _schema(low: float, high: float, *, low_open: bool = True) -> Any:
    """The same bounds in the published JSON Schema."""
    return Field(json_schema_extra={"exclusiveMinimum" if low_open else "minimum": low, "maximum": high})


NoiseMultiplier = Annotated[
    float, _check("a noise multiplier", 0, MAX_NOISE_MULTIPLIER), _schema(0, MAX_NOISE_MULTIPLIER)
]
ClipNorm = Annotated[float, _check("a clip norm", 0, MAX_CLIP_NORM), _schema(0, MAX_CLIP_NORM)]
NodeNoiseMultiplier = Annotated[
    float,
    _check("node_noise_multiplier", 0, MAX_NOISE_MULTIPLIER, low_open=False),
    _schema(0, MAX_NOISE_MULTIPLIER, low_open=False),
]
Delta = Annotated[
    float,
    _check("delta", 0, MAX_DELTA, why=" (above it the guarantee fails too often to mean much)"),
    _schema(0, MAX_DELTA),
]
Epsilon = Annotated[float, _check("target_epsilon", 0, MAX_EPSILON), _schema(0, MAX_EPSILON)]


def _refuse(field: str, message: str) -> NoReturn:
    """A validation error at ``field`` of the model being checked, with a clean message."""
    error = PydanticCustomError("privacy", "{detail}", {"detail": message})
    raise ValidationError.from_exception_data(
        "PrivacyOptions", [{"type": error, "loc": (field,), "input": None}]
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DpSgdOptions(_Strict):
    """DP-SGD in the node's own training recipe: per-sample clipping and noise (Opacus)."""

    noise_multiplier: NoiseMultiplier = Field(description="noise std over max_grad_norm, per step")
    max_grad_norm: ClipNorm = Field(description="per-sample gradient L2 clip")


class PrivacyOptions(_Strict):
    """The privacy part of a federation spec: which mechanisms each provider's node applies.

    ``node_clip_norm`` and ``node_noise_multiplier`` are applied by the provider's node to the
    whole update outside the sandbox; ``dp_sgd`` is run by the trainer. ``delta`` is the delta
    the federation's epsilon figures are given at; ``target_epsilon`` is the coordinator's own
    stop (a provider's policy cap applies on top of it).
    """

    node_clip_norm: ClipNorm | None = Field(
        default=None, description="L2 clip of the whole update delta (weights - global), by the node"
    )
    node_noise_multiplier: NodeNoiseMultiplier = Field(
        default=0.0, description="Gaussian noise std = multiplier x node_clip_norm, added by the node"
    )
    dp_sgd: DpSgdOptions | None = Field(default=None, description="DP-SGD in the trainer (Opacus)")
    delta: Delta = Field(default=1e-5, description="the delta the epsilon figures are given at")
    target_epsilon: Epsilon | None = Field(
        default=None, description="stop a provider before its epsilon at delta would pass this"
    )

    @model_validator(mode="after")
    def _consistent(self) -> PrivacyOptions:
        if self.node_noise_multiplier > 0 and self.node_clip_norm is None:
            _refuse("node_clip_norm", "node_noise_multiplier needs node_clip_norm: the noise is scaled by it")
        if self.target_epsilon is not None and not self.private:
            _refuse("target_epsilon", "a target epsilon needs a mechanism: node_noise_multiplier or dp_sgd")
        return self

    @property
    def node_noise(self) -> bool:
        """Does the node itself add noise (the mechanism the model code cannot bypass)?"""
        return self.node_clip_norm is not None and self.node_noise_multiplier > 0

    @property
    def private(self) -> bool:
        return self.node_noise or self.dp_sgd is not None


# the node-side mechanism -----------------------------------------------------------------


def node_rng() -> np.random.Generator:
    """A fresh generator seeded with 128 bits from the operating system's CSPRNG.

    PCG64 is not a cryptographic generator: its state could be recovered from enough raw
    outputs. Nobody sees raw outputs here: each draw is added to an unknown delta, and a
    generator serves one update and is dropped. What must not happen is a seed someone can
    guess or a stream reused across updates (noise that cancels in a difference); 128 fresh
    bits from ``secrets`` per update rule out both, at numpy's speed.
    """
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def _delta_norm(deltas: Iterable[np.ndarray]) -> float:
    """The L2 norm over all tensors together, scaled so large finite values cannot overflow."""
    arrays = [d for d in deltas if d.size]
    peak = max((float(np.max(np.abs(d))) for d in arrays), default=0.0)
    if peak == 0.0:
        return 0.0
    return peak * math.sqrt(sum(float(np.sum(np.square(d / peak))) for d in arrays))


def clip_and_noise(
    global_weights: Mapping[str, np.ndarray],
    weights: Mapping[str, np.ndarray],
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> tuple[Weights, float]:
    """The update the node lets leave: global + clip(weights - global, C) + N(0, (zC)^2).

    The delta is clipped over all floating-point tensors together (one norm, not one per
    tensor), noise is added per coordinate, each tensor keeps the global model's dtype, and
    values are held within that dtype's finite range (post-processing costs no privacy).
    Integer tensors get the global model's values. Returns the weights and the pre-clip norm.
    With a delta inside the ball and no noise, the weights come back unchanged.

    The pre-clip norm is computed from the data without noise: it is for the provider's own
    records and must not travel to the coordinator (it would be an unaccounted release).
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a positive finite number, not {clip_norm!r}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, not {noise_multiplier!r}")
    if set(weights) != set(global_weights):
        extra, missing = (
            sorted(set(weights) - set(global_weights)),
            sorted(set(global_weights) - set(weights)),
        )
        raise UpdateRejected(
            f"the update's tensors differ from the model's (extra {extra}, missing {missing})"
        )
    deltas: dict[str, np.ndarray] = {}
    for name, base in global_weights.items():
        value = weights[name]
        if value.shape != base.shape or value.dtype != base.dtype:
            raise UpdateRejected(
                f"tensor {name} is {value.dtype}{list(value.shape)}, "
                f"the model's is {base.dtype}{list(base.shape)}"
            )
        if base.dtype.kind == "f":
            with np.errstate(over="ignore", invalid="ignore"):
                delta = value.astype(np.float64) - base.astype(np.float64)
            if not np.all(np.isfinite(delta)):
                raise UpdateRejected(f"tensor {name} differs from the global model by a non-finite amount")
            deltas[name] = delta
    norm = _delta_norm(deltas.values())
    if not math.isfinite(norm):
        raise UpdateRejected("the update's norm is not a finite number")
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    sigma = noise_multiplier * clip_norm
    if sigma > 0 and rng is None:
        rng = node_rng()
    out: Weights = {}
    for name, base in global_weights.items():
        if name not in deltas:
            out[name] = base.copy()
        elif scale == 1.0 and sigma == 0.0:
            out[name] = np.array(weights[name], copy=True)
        else:
            delta = deltas[name] * scale
            if sigma > 0:
                assert rng is not None
                delta += rng.normal(0.0, sigma, size=delta.shape)
            info = np.finfo(base.dtype)
            released = np.clip(base.astype(np.float64) + delta, float(info.min), float(info.max))
            out[name] = released.astype(base.dtype)
    return out, norm


# the events of a round ---------------------------------------------------------------------


def round_events(
    options: PrivacyOptions, n_train: int, batch_size: int, local_epochs: int
) -> list[dp_event.DpEvent]:
    """The privacy events of one round of this provider, from the recipe the node runs.

    ``n_train`` is the node's own count of training rows (after its held-out split), and
    ``batch_size`` and ``local_epochs`` are the recipe's: nothing comes from the sandbox.
    A round without any mechanism is a non-private event, so its epsilon is infinite.
    """
    for name, value in (("n_train", n_train), ("batch_size", batch_size), ("local_epochs", local_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    events: list[dp_event.DpEvent] = []
    if options.node_noise:
        # sensitivity 2C (any two datasets), noise std zC: noise multiplier z/2
        events.append(dp_event.GaussianDpEvent(options.node_noise_multiplier / 2))
    if options.dp_sgd is not None:
        q = min(1.0, batch_size / n_train)
        steps = local_epochs * math.ceil(n_train / batch_size)
        step = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(options.dp_sgd.noise_multiplier))
        events.append(dp_event.SelfComposedDpEvent(step, steps))
    return events or [dp_event.NonPrivateDpEvent()]


# stopping ------------------------------------------------------------------------------------


def _beyond(value: float, cap: float) -> str:
    """``value`` with just enough decimals to read as more than ``cap`` (3.004 > 3, not 3.00)."""
    for digits in range(2, 10):
        text = f"{value:.{digits}f}"
        if float(text) > cap:
            return text
    return number_words(value)


def budget_refusal(
    ledger: PrivacyLedger,
    next_events: Sequence[dp_event.DpEvent],
    cap_epsilon: float,
    delta: float,
    *,
    cap_name: str = "the policy's cap",
) -> str | None:
    """Why this provider stops contributing, or None while one more round stays within the cap.

    The ledger with ``next_events`` added must be (``cap_epsilon``, ``delta``)-DP. An empty
    ``next_events`` counts as a release without privacy (the safe reading of a caller's slip).
    """
    if not (math.isfinite(cap_epsilon) and cap_epsilon > 0):
        raise ValueError(f"cap_epsilon must be a positive finite number, not {cap_epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), not {delta!r}")
    upcoming = list(next_events) or [dp_event.NonPrivateDpEvent()]
    spent = ledger_epsilon([*ledger.events(), *upcoming], delta)
    if spent <= cap_epsilon:
        return None
    at = f"{number_words(cap_epsilon)} at δ={number_words(delta)}"
    if math.isinf(spent):
        return (
            f"this provider's updates would carry no differential privacy (ε is unbounded) "
            f"but {cap_name} is ε ≤ {at}; this provider stops contributing"
        )
    return (
        f"the next round would spend ε={_beyond(spent, cap_epsilon)} > {cap_name} {at}; "
        "this provider stops contributing"
    )


def contribution_refusal(
    ledger: PrivacyLedger,
    next_events: Sequence[dp_event.DpEvent],
    options: PrivacyOptions,
    policy_cap: tuple[float, float] | None,
) -> str | None:
    """The provider's check before a round: its policy's cap (at the policy's delta), then the
    federation's ``target_epsilon`` (at the spec's delta). None: contribute."""
    if policy_cap is not None:
        refusal = budget_refusal(ledger, next_events, policy_cap[0], policy_cap[1])
        if refusal is not None:
            return refusal
    if options.target_epsilon is not None:
        return budget_refusal(
            ledger, next_events, options.target_epsilon, options.delta, cap_name="the federation's target"
        )
    return None
