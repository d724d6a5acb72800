"""Which frames' labels to ask for: the value of a label from the policy's own doubt, and a budget
that spends its labels on the frames worth most without overspending."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmprog.contract import CONTEXT_FEATURES, ESCALATION_FEATURES, GateSpread, SiteGate
from router.labels import LabelRequests, choice_doubt, escalation_doubt, label_value
from router.schemas import LabelBudget

N, M = len(CONTEXT_FEATURES), len(ESCALATION_FEATURES)


def _spread(mean: list[float], root: np.ndarray) -> GateSpread:
    over = list(range(len(root)))
    return GateSpread(mean=mean, over=over, root=[float(v) for i in range(len(root)) for v in root[i, : i + 1]])


def test_a_spread_gives_the_variance_of_a_score():
    rng = np.random.default_rng(0)
    root = np.tril(rng.normal(size=(N, N)))
    spread = _spread(list(rng.normal(size=N)), root)
    x = rng.random(N)
    assert spread.variance(list(x)) == pytest.approx(float(x @ root @ root.T @ x))
    assert spread.mean_score(list(x)) == pytest.approx(float(np.dot(spread.mean, x)))
    with pytest.raises(ValueError, match="root values"):
        SiteGate(choice={"a": [0.0] * N}, choice_spread={"a": GateSpread(mean=[0.0] * N, over=[0, 1], root=[1.0])})
    with pytest.raises(ValueError, match="outside"):
        SiteGate(choice={"a": [0.0] * N}, choice_spread={"a": GateSpread(mean=[0.0] * N, over=[N], root=[1.0])})


def _gate(small: float, large: float, sd: float, escalation: float | None = None) -> SiteGate:
    """A two-backend gate whose mean scores at the bias are ``small`` and ``large``, each with
    standard deviation ``sd``; with ``escalation``, an escalation gate of that mean score."""

    def at_bias(score: float, size: int) -> list[float]:
        return [score] + [0.0] * (size - 1)

    root = np.diag([sd] + [0.0] * (N - 1))
    spreads = {"s": _spread(at_bias(small, N), root), "l": _spread(at_bias(large, N), root)}
    extra: dict = {}
    if escalation is not None:
        extra = {
            "escalate_to": "xl",
            "escalation": at_bias(escalation, M),
            "escalation_spread": _spread(at_bias(escalation, M), np.diag([sd] + [0.0] * (M - 1))),
        }
    return SiteGate(choice={"s": at_bias(small, N), "l": at_bias(large, N)}, choice_spread=spreads, **extra)


def test_doubt_is_the_chance_the_decision_was_the_wrong_one():
    x, z = [1.0] * N, [1.0] * M
    sure = _gate(small=10.0, large=0.0, sd=0.1)
    assert choice_doubt(sure, "s", x) < 1e-6 and choice_doubt(sure, "l", x) > 1 - 1e-6
    even = _gate(small=1.0, large=1.0, sd=2.0)
    assert choice_doubt(even, "s", x) == pytest.approx(0.5)
    # a gap of one standard deviation of the difference: P(N(0,1) > 1)
    gap = _gate(small=math.sqrt(2.0), large=0.0, sd=1.0)
    assert choice_doubt(gap, "s", x) == pytest.approx(0.5 * math.erfc(1 / math.sqrt(2)))
    assert escalation_doubt(_gate(0, 0, 1.0, escalation=3.0), z) == pytest.approx(0.5 * math.erfc(3 / math.sqrt(2)))
    assert escalation_doubt(_gate(0, 0, 1.0), z) == 0.0  # no escalation gate, no doubt about one
    no_spread = SiteGate(choice={"s": [0.0] * N, "l": [0.0] * N})
    assert choice_doubt(no_spread, "s", x) == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_fraction_is_spent_on_the_frames_worth_most_and_never_overspent():
    rng = np.random.default_rng(1)
    requests = LabelRequests(clock=Clock())
    budget = LabelBudget(fraction=0.1)
    values = rng.random(2000)
    asked = np.array([requests.wanted("p", budget, float(v)) for v in values])
    assert 180 <= asked.sum() <= 201  # one token at the start, 0.1 a frame
    assert values[asked].mean() > 0.85  # the top tenth is worth 0.95 on average; all frames 0.5
    # equal values: the budget's rate, spread evenly
    flat = np.array([requests.wanted("q", budget, 0.3) for _ in range(1000)])
    assert flat.sum() == 100 and np.diff(np.flatnonzero(flat)).max() <= 11
    # programs keep budgets of their own
    assert requests.wanted("r", budget, 0.0)


def test_a_number_per_hour_holds_at_any_frame_rate():
    clock = Clock()
    requests = LabelRequests(clock=clock)
    budget = LabelBudget(per_hour=60)
    rng = np.random.default_rng(2)
    asked = []
    for _ in range(7200):  # two hours at one frame a second
        clock.now += 1.0
        asked.append(requests.wanted("p", budget, float(rng.random())))
    assert 110 <= sum(asked) <= 122  # 60 an hour, plus the first token
    with pytest.raises(ValueError, match="exactly one"):
        LabelBudget(fraction=0.1, per_hour=5)
    with pytest.raises(ValueError, match="exactly one"):
        LabelBudget()


def test_an_up_front_decision_is_worth_its_propensities_doubt_at_the_sites_that_ran():
    from fmprog.backends.config import Function
    from fmprog.program import Invocation

    ran = [Invocation(site="find", function=Function.detect, backend="d", cost=1.0, latency_s=0.0, ok=True)]
    propensities = {"find": {"d": 0.7, "D": 0.3}, "ask": {"v": 0.5, "V": 0.5}}  # "ask" did not run
    assert label_value(None, propensities, ran) == pytest.approx(0.3)
    assert label_value(None, None, ran) == 0.0
