"""The frame-reuse gate: answer a stream frame with the program's last answer when the frame looks
like the one that produced it.

At a fixed camera most frames barely differ from the previous one, and a program's answer on them is
mostly the answer it gave last. Before a program runs on a stream frame, its gate compares the frame
with the frame that last ran the program (cheap statistics of a small grey ``signature``), estimates
the probability that the answer changed since, and below a tolerance reuses the last answer, at
about no cost.

Why the gate is learned, and per program: how much a difference matters depends on the program.
"How many people are there?" changes whenever anyone steps in or out of view, and its detector's
count flickers on nearly identical frames; "is anyone near a parked vehicle?" almost never changes.
On a real street video (OpenCV's ``vtest.avi``) the image difference predicts an answer change only
weakly; most of what there is to gain is knowing how stable each program's answer is, now. So each
program has its own gate: an online logistic regression of "the answer changed since the last
fresh run" on the whole-frame mean difference, the share of changed pixels, the age of the last
answer and the program's recent volatility (the running share of its latest outcomes that were
changes). The largest difference over a grid of cells was measured as a further input and did not
help: where people walk, the mean moves too.

Outcomes cost nothing: every fresh run compares its answer with the previous fresh run's, which is
the very event a reuse would have got wrong; a label on a reused frame is an outcome as well. Fresh
runs happen mostly where the gate expects a change, so a small exploration rate runs the program
even where the gate would reuse: outcomes at small differences keep arriving (the gate can loosen
as well as tighten), and each decision's propensity is recorded so that a log of decisions supports
off-policy evaluation. A maximum age bounds how stale a reused answer can be, whatever the model
says. Before any outcome the model is its prior, the naive gate at a conservative threshold: reuse
while the whole-frame mean difference is below ``default_threshold`` grey levels.

The model is Bayesian online logistic regression with a diagonal Gaussian posterior (Chapelle and
Li, "An Empirical Evaluation of Thompson Sampling", 2011, algorithm 3): each outcome moves the mean
by a few Newton steps and adds its curvature to the precision, and the precision decays towards the
prior's (``forgetting``) so that the gate follows a scene whose activity drifts. Decisions use the
posterior mean, so ``p_change`` reads as a probability and the tolerance as the error accepted per
reused frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

import numpy as np
from PIL import Image

SIGNATURE_SIZE: Final = (96, 72)
"""Width and height of a frame's signature: 8x8 blocks of a 768x576 frame, enough to see a person
step, small enough that comparing two costs microseconds."""

CHANGED_LEVEL: Final = 20.0
"""Grey levels by which a signature pixel must differ to count as changed: above the camera's noise
and compression artefacts, below a person walking across a background."""

CHANGED_SCALE: Final = 0.02
AGE_SCALE: Final = 10.0
"""Typical values of the changed share and of the age, which divide them in the model's inputs so
that every input is of order one (the prior precision then means the same for each)."""

MODEL_INPUTS: Final = ("bias", "mean_diff", "changed", "age", "volatility")
"""The logistic regression's inputs, in order: a constant, ``ReuseFeatures.vector()``, and the
gate's own running volatility."""

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luma weights, as OpenCV's and Pillow's RGB-to-grey conversions use."""

_NEWTON_STEPS = 3

Reason = Literal["first", "max_age", "changed", "explore", "unchanged"]
"""Why a decision was taken: no earlier answer, the last answer too old, a change likely, an
exploratory fresh run, or a reuse."""


def signature(frame: np.ndarray, size: tuple[int, int] = SIGNATURE_SIZE) -> np.ndarray:
    """A frame's signature: its grey levels (0-255), area-averaged down to ``size`` (width,
    height), as float32 ``height x width``. ``frame`` is ``H x W x 3`` RGB or ``H x W`` grey.

    Area averaging rather than sampling, so that sensor noise averages out and a small moving
    person still shifts the blocks they cover."""
    array = np.asarray(frame)
    if array.ndim == 3 and array.shape[2] == 3:
        grey = array.astype(np.float32) @ _LUMA
    elif array.ndim == 2:
        grey = array.astype(np.float32)
    else:
        raise ValueError(f"a frame is H x W x 3 (RGB) or H x W (grey), not {array.shape}")
    if grey.size == 0:
        raise ValueError("an empty frame has no signature")
    small = Image.fromarray(np.ascontiguousarray(grey)).resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class ReuseFeatures:
    """How a frame differs from the frame that last ran the program, and how old that run is."""

    mean_diff: float
    """Mean absolute difference of the two signatures, in grey levels."""
    changed: float
    """Share of signature pixels that differ by more than ``CHANGED_LEVEL`` grey levels: what moved,
    whatever the size of the frame's quiet background."""
    age: int
    """Frames since the last fresh run (1: the previous frame ran the program)."""

    def vector(self) -> np.ndarray:
        """The features as the gate's model reads them, each scaled to be of order one."""
        return np.array([self.mean_diff, self.changed / CHANGED_SCALE, self.age / AGE_SCALE], dtype=np.float64)


def reuse_features(current: np.ndarray, last_run: np.ndarray, age: int) -> ReuseFeatures:
    """The features of a frame with signature ``current``, ``age`` frames after the fresh run on the
    frame with signature ``last_run``."""
    if current.shape != last_run.shape:
        raise ValueError(f"signatures differ in shape: {current.shape} and {last_run.shape}")
    if age < 0:
        raise ValueError(f"an age counts frames since the last run, not {age}")
    diff = np.abs(np.asarray(current, dtype=np.float32) - np.asarray(last_run, dtype=np.float32))
    return ReuseFeatures(float(diff.mean()), float((diff > CHANGED_LEVEL).mean()), int(age))


@dataclass(frozen=True, slots=True)
class ReuseParams:
    """A gate's hyper-parameters. The defaults were chosen on the first half of ``vtest.avi``."""

    tolerance: float = 0.08
    """The largest acceptable probability that the answer changed: a frame is answered by reuse only
    below it. It bounds the expected error per reused frame, so reusing half the frames at 0.08
    costs at most 4 points of agreement."""
    max_age: int = 10
    """The oldest answer, in frames since its fresh run, that may be reused; older forces a run."""
    exploration: float = 0.05
    """The probability of a fresh run where the gate would reuse."""
    default_threshold: float = 1.0
    """The whole-frame mean difference (grey levels) at which the prior's probability of a change is
    ``tolerance``: before any outcome the gate is the naive gate at this conservative threshold
    (on ``vtest.avi`` it reuses about 20% of frames at 98% agreement)."""
    prior_slope: float = 1.5
    """The prior's log-odds of a change per grey level of mean difference."""
    prior_precision: float = 1.0
    """The prior's precision on every weight: how many outcomes' worth of evidence it is worth."""
    forgetting: float = 0.99
    """Per outcome, the share of the learned precision kept: older outcomes fade, with a memory of
    about ``1 / (1 - forgetting)`` outcomes."""
    volatility_decay: float = 0.3
    """The weight of the newest outcome in the running volatility."""

    def __post_init__(self) -> None:
        checks = (
            (0.0 < self.tolerance < 1.0, "tolerance is a probability in (0, 1)"),
            (self.max_age >= 0, "max_age is a number of frames, at least 0"),
            (0.0 <= self.exploration < 1.0, "exploration is a probability in [0, 1)"),
            (self.default_threshold > 0.0, "default_threshold is positive"),
            (self.prior_slope > 0.0, "prior_slope is positive: a larger difference is a likelier change"),
            (self.prior_precision > 0.0, "prior_precision is positive"),
            (0.0 < self.forgetting <= 1.0, "forgetting is in (0, 1]"),
            (0.0 < self.volatility_decay <= 1.0, "volatility_decay is in (0, 1]"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True, slots=True)
class ReuseChoice:
    """A gate's decision on one frame."""

    reuse: bool
    """Answer with the last fresh answer (else run the program)."""
    propensity: float
    """The probability with which the gate took this action, in (0, 1]: 1 for a forced run,
    ``exploration`` for an exploratory run, ``1 - exploration`` for a reuse."""
    p_change: float
    """The model's probability that the answer changed since the last fresh run (1 with no run)."""
    reason: Reason


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _prior_mean(params: ReuseParams) -> np.ndarray:
    """Weights with ``p_change = tolerance`` where the mean difference is ``default_threshold``,
    rising with the mean difference only: the naive gate."""
    mean = np.zeros(len(MODEL_INPUTS))
    mean[1] = params.prior_slope
    mean[0] = _logit(params.tolerance) - params.prior_slope * params.default_threshold
    return mean


_COUNTS = ("decisions", "reused", "explored", "forced_by_age", "outcomes", "changed_outcomes")


class ReuseGate:
    """One program's reuse gate on one stream: ``decide`` before running, ``learn`` from outcomes.

    Not thread-safe: a stream's frames are decided in order."""

    def __init__(self, params: ReuseParams | None = None, *, seed: int | None = None):
        self.params = params or ReuseParams()
        self._rng = np.random.default_rng(seed)
        self._prior = _prior_mean(self.params)
        self._mean = self._prior.copy()
        self._precision = np.full(len(MODEL_INPUTS), self.params.prior_precision)
        self._volatility = 0.0
        self._counts = dict.fromkeys(_COUNTS, 0)

    def _inputs(self, features: ReuseFeatures) -> np.ndarray:
        return np.concatenate(([1.0], features.vector(), [self._volatility]))

    def p_change(self, features: ReuseFeatures) -> float:
        """The probability that the program's answer changed since its last fresh run."""
        return _sigmoid(float(self._mean @ self._inputs(features)))

    def decide(self, features: ReuseFeatures | None) -> ReuseChoice:
        """Reuse the last answer, or run the program; ``None``: there is no earlier answer."""
        self._counts["decisions"] += 1
        if features is None:
            return ReuseChoice(False, 1.0, 1.0, "first")
        p = self.p_change(features)
        if features.age > self.params.max_age:
            self._counts["forced_by_age"] += 1
            return ReuseChoice(False, 1.0, p, "max_age")
        if p >= self.params.tolerance:
            return ReuseChoice(False, 1.0, p, "changed")
        explore = self.params.exploration
        if explore > 0.0 and self._rng.random() < explore:
            self._counts["explored"] += 1
            return ReuseChoice(False, explore, p, "explore")
        self._counts["reused"] += 1
        return ReuseChoice(True, 1.0 - explore, p, "unchanged")

    def learn(self, features: ReuseFeatures, unchanged: bool) -> None:
        """An outcome: whether the answer on a frame with these features equalled the last fresh
        answer (from a fresh run, compared with the previous one; or from a label on a reused
        frame)."""
        x = self._inputs(features)
        y = 0.0 if unchanged else 1.0
        w = self._mean.copy()
        for _ in range(_NEWTON_STEPS):
            p = _sigmoid(float(w @ x))
            gradient = self._precision * (w - self._mean) + (p - y) * x
            w -= gradient / (self._precision + p * (1.0 - p) * x * x)
        p = _sigmoid(float(w @ x))
        q0 = self.params.prior_precision
        self._mean = w
        self._precision = q0 + self.params.forgetting * (self._precision - q0) + p * (1.0 - p) * x * x
        decay = self.params.volatility_decay
        self._volatility = (1.0 - decay) * self._volatility + decay * y
        self._counts["outcomes"] += 1
        self._counts["changed_outcomes"] += int(not unchanged)

    def reuse_below(self, age: int = 1) -> float | None:
        """The whole-frame mean difference below which the gate now reuses an answer ``age`` frames
        old on a frame with no changed pixels; None where a larger difference does not make a change
        likelier (the gate then decides on the other inputs alone)."""
        slope = float(self._mean[1])
        if slope <= 0.0:
            return None
        rest = self._mean @ np.array([1.0, 0.0, 0.0, age / AGE_SCALE, self._volatility])
        return max(0.0, (_logit(self.params.tolerance) - float(rest)) / slope)

    def summary(self) -> dict[str, Any]:
        """What a view shows: the threshold it amounts to, the weights, outcomes seen, reuse rate."""
        counts = self._counts
        return {
            "tolerance": self.params.tolerance,
            "max_age": self.params.max_age,
            "reuse_below_mean_diff": self.reuse_below(),
            "default_threshold": self.params.default_threshold,
            "weights": {name: float(w) for name, w in zip(MODEL_INPUTS, self._mean, strict=True)},
            "volatility": self._volatility,
            "outcomes": counts["outcomes"],
            "change_rate": counts["changed_outcomes"] / counts["outcomes"] if counts["outcomes"] else None,
            "decisions": counts["decisions"],
            "reuse_rate": counts["reused"] / counts["decisions"] if counts["decisions"] else None,
            "explored": counts["explored"],
            "forced_by_age": counts["forced_by_age"],
        }

    def state(self) -> dict[str, Any]:
        """Everything the gate knows, as JSON-serialisable values (``from_state`` restores it)."""
        return {
            "params": asdict(self.params),
            "mean": [float(w) for w in self._mean],
            "precision": [float(q) for q in self._precision],
            "volatility": self._volatility,
            "counts": dict(self._counts),
            "rng": self._rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ReuseGate:
        """The gate whose ``state()`` this was; ValueError for a malformed one."""
        try:
            gate = cls(ReuseParams(**state["params"]))
            mean = np.array(state["mean"], dtype=np.float64)
            precision = np.array(state["precision"], dtype=np.float64)
            volatility = float(state["volatility"])
            counts = {name: int(state["counts"][name]) for name in _COUNTS}
            rng = state["rng"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a reuse gate's state: {exc}") from None
        n = len(MODEL_INPUTS)
        if mean.shape != (n,) or precision.shape != (n,):
            raise ValueError(f"a reuse gate's state has {n} weights and {n} precisions")
        if not (np.isfinite(mean).all() and (precision > 0).all() and 0.0 <= volatility <= 1.0):
            raise ValueError("a reuse gate's state has finite weights, positive precisions, a volatility in [0, 1]")
        gate._mean, gate._precision, gate._volatility, gate._counts = mean, precision, volatility, counts
        try:
            gate._rng.bit_generator.state = rng
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"a reuse gate's state has a bad generator state: {exc}") from None
        return gate
