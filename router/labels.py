"""Which answered frames are worth a label, and asking for them within a program's budget.

A camera does not label its frames; an operator can afford labels on a share of them (a fraction of
frames, or a number per hour), or a teacher (a dearer configuration of the program) on some. Which
frames: those whose label would teach the policy most, by its own doubt.

*The value of a label* (:func:`label_value`) is the policy's doubt about the decisions the label
would teach it, summed: for a gated answer (``fmprog.contract.SiteGate`` with its posterior spread),
for each first choice the posterior probability that another candidate scores higher than the one
chosen, and for each escalation the probability that re-asking did not pay (a label teaches an
escalation gate only where it escalated: the pair of answers is what it learns from); for an
up-front decision with propensities, ``1 - max`` propensity per site. Other decisions are worth 0.

*Asking within a budget* (:class:`LabelRequests`): per program, a token bucket fills at the budget's
rate (``fraction`` per frame answered, or ``per_hour``) up to half a window's worth; a frame is
asked for when a token is there and its value is in the top share of the values of the program's
recent frames: the share the budget buys when the bucket is half full, less when it is emptier,
more when fuller, any frame once it is full. So the budget goes to the frames the policy doubts
most, is never overspent, and is not left unspent when valuable frames are rare. The state is this
router's own: with several routers each asks for its share of the frames it answers (a
``per_hour`` budget holds per router).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from fmprog.contract import SiteGate
from fmprog.program import Invocation, gate_vectors
from router.schemas import LabelBudget

WINDOW = 256
"""How many recent frames' values set a program's threshold."""


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _doubt(mean: float, variance: float) -> float:
    """P(score < 0) for a score ``N(mean, variance)``: the chance a positive-looking score is not."""
    if variance <= 0.0:
        return 0.0 if mean > 0.0 else 1.0
    return _normal_cdf(-mean / math.sqrt(variance))


def choice_doubt(gate: SiteGate, chosen: str, x: Sequence[float]) -> float:
    """The posterior probability that another candidate of ``gate`` scores higher at ``x`` than
    ``chosen`` (0 without a spread or another candidate)."""
    spread = gate.choice_spread
    if spread is None or chosen not in spread:
        return 0.0
    mine = spread[chosen]
    mean, variance = mine.mean_score(x), mine.variance(x)
    doubts = [
        _doubt(mean - other.mean_score(x), variance + other.variance(x))
        for name, other in spread.items()
        if name != chosen
    ]
    return max(doubts, default=0.0)


def escalation_doubt(gate: SiteGate, x: Sequence[float]) -> float:
    """The posterior probability that re-asking at ``x`` did not pay (its score is below 0)."""
    spread = gate.escalation_spread
    return 0.0 if spread is None else _doubt(spread.mean_score(x), spread.variance(x))


def label_value(
    gates: Mapping[str, SiteGate] | None,
    propensities: Mapping[str, Mapping[str, float]] | None,
    invocations: Sequence[Invocation],
) -> float:
    """What a label for this run would be worth to the policy (see the module's docstring)."""
    if gates:
        total = 0.0
        for invocation, x in zip(invocations, gate_vectors(invocations), strict=True):
            gate = gates.get(invocation.site)
            if x is None or gate is None:
                continue
            if invocation.escalated_from is None:
                total += choice_doubt(gate, invocation.backend, x)
            else:
                total += escalation_doubt(gate, x)
        return total
    if propensities:
        ran = {i.site for i in invocations}
        return math.fsum(1.0 - max(p.values(), default=1.0) for site, p in propensities.items() if site in ran)
    return 0.0


@dataclass
class _Bucket:
    tokens: float
    at: float  # when the tokens were last counted
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=WINDOW))  # (time, value)


class LabelRequests:
    """Per program, whether to ask for the label of an answered frame (see the module's docstring).
    Thread-safe; ``clock`` is in seconds (``time.monotonic`` by default)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def wanted(self, program_id: str, budget: LabelBudget, value: float) -> bool:
        """Whether to ask for this frame's label, spending one of the program's tokens if so."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(program_id)
            if bucket is None:
                bucket = self._buckets[program_id] = _Bucket(tokens=1.0, at=now)
            bucket.recent.append((now, value))
            if budget.fraction is not None:
                share, earned = budget.fraction, budget.fraction
            else:
                rate = float(budget.per_hour or 0.0)
                share, earned = _hourly_share(bucket.recent, rate), rate * (now - bucket.at) / 3600.0
            cap = max(2.0, share * WINDOW / 2)  # half a window's worth of labels may wait
            bucket.tokens, bucket.at = min(bucket.tokens + earned, cap), now
            if bucket.tokens < 1.0:
                return False
            # the fuller the bucket, the readier to spend: the top share of values when it is half
            # full, twice that near full, any frame once full (no label the budget bought is lost)
            pick = 1.0 if bucket.tokens >= cap else min(1.0, share * 2.0 * bucket.tokens / cap)
            if value < _threshold(bucket.recent, pick):
                return False
            bucket.tokens -= 1.0
            return True

    def forget(self, program_id: str) -> None:
        with self._lock:
            self._buckets.pop(program_id, None)


def _threshold(recent: deque[tuple[float, float]], share: float) -> float:
    """The value at the top ``share`` of the recent values."""
    values = sorted(value for _, value in recent)
    top = max(1, round(share * len(values)))  # how many of them the share takes
    return values[len(values) - top]


def _hourly_share(recent: deque[tuple[float, float]], per_hour: float) -> float:
    """The share of frames ``per_hour`` labels buy at the recent frame rate (1 before there is one)."""
    elapsed = recent[-1][0] - recent[0][0]
    if len(recent) < 2 or elapsed <= 0.0:
        return 1.0
    frames_per_hour = (len(recent) - 1) * 3600.0 / elapsed
    return min(1.0, per_hour / frames_per_hour)
