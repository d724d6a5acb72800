"""Every algorithm's decision carries the propensity of every backend at every call site, and the
propensities are the frequencies with which the policy actually decides."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from fmprog.thompson import argmax_probabilities, normal_cdf
from policy.algorithms import ALGORITHMS, build_policy
from tests.policy.conftest import SITES, make_spec
from tests.policy.test_algorithms import feed, small_hyper

UP_FRONT = sorted(set(ALGORITHMS) - {"cascade"})  # cascade's gated sites are decided by the router
JOINT = {"unstructured", "whole_query"}
STOCHASTIC = ["fast", "random", "structured", "structured_code", "unstructured", "whole_query"]
CANDIDATES = {s["id"]: [b["name"] for b in s["backends"]] for s in SITES}


def fed_policy(algorithm: str, frames):
    """A policy that has seen some feedback, so its propensities are neither uniform nor 0/1."""
    policy = build_policy(make_spec(algorithm, seed=11, **small_hyper(algorithm)))
    feed(policy, frames, rounds=1)
    if algorithm == "unstructured":  # one feedback round barely moves the softmax
        policy.weights = np.random.default_rng(0).normal(0.0, 0.5, policy.weights.shape)
    if algorithm == "structured_code":  # the network and U do not change between decisions
        estimate, known = policy._logits_and_sigma, {}

        def remembered(net, u, x):
            if id(net) not in known:
                known[id(net)] = estimate(net, u, x)
            return known[id(net)]

        policy._logits_and_sigma = remembered
    return policy


def within(frequency: float, probability: float, n: int) -> bool:
    """The empirical frequency of ``n`` draws agrees with the probability (5 standard errors)."""
    return abs(frequency - probability) <= 5 * math.sqrt(probability * (1 - probability) / n) + 0.005


@pytest.mark.parametrize("algorithm", UP_FRONT)
@pytest.mark.parametrize("fed", [False, True])
def test_propensities_cover_every_backend(algorithm, fed, frames):
    policy = build_policy(make_spec(algorithm, seed=2, **small_hyper(algorithm)))
    if fed:
        feed(policy, frames, rounds=1)
    for frame in frames[:3]:
        decision = policy.decide(frame)
        assert decision.propensities is not None
        assert {s: sorted(p) for s, p in decision.propensities.items()} == {s: sorted(c) for s, c in CANDIDATES.items()}
        for site, p in decision.propensities.items():
            assert all(0.0 <= v <= 1.0 for v in p.values())
            assert math.fsum(p.values()) == pytest.approx(1.0, abs=1e-9)
            assert p[decision.backends[site]] > 0
        if algorithm in JOINT:
            least = min(decision.propensities[s][b] for s, b in decision.backends.items())
            assert 0 < decision.joint_propensity <= least + 1e-12
        else:
            assert decision.joint_propensity is None
        assert decision.reply().propensities == decision.propensities


@pytest.mark.parametrize("algorithm", ["static", "ucb1"])
def test_deterministic_choices_have_propensity_one(algorithm, frames):
    policy = build_policy(make_spec(algorithm))
    feed(policy, frames, rounds=1)
    decision = policy.decide(frames[0])
    assert decision.propensities == {
        s: {b: float(b == decision.backends[s]) for b in names} for s, names in CANDIDATES.items()
    }


@pytest.mark.parametrize("algorithm", STOCHASTIC)
def test_propensities_are_the_frequencies_of_the_decisions(algorithm, frames):
    policy = fed_policy(algorithm, frames)
    frame = frames[1]
    first = policy.decide(frame)
    if algorithm != "random":  # a state whose propensities are not trivial
        assert any(0.02 < v < 0.98 for p in first.propensities.values() for v in p.values())
    n = 1500 if algorithm.startswith("structured") else 3000
    decisions = [policy.decide(frame) for _ in range(n)]
    for d in decisions:  # deciding does not change the state: the same propensities every time
        assert d.propensities == first.propensities
    for site, names in CANDIDATES.items():
        counts = Counter(d.backends[site] for d in decisions)
        for backend in names:
            assert within(counts[backend] / n, first.propensities[site][backend], n), (site, backend)
    if algorithm in JOINT:
        configurations = Counter(tuple(d.backends.values()) for d in decisions)
        joint = {tuple(d.backends.values()): d.joint_propensity for d in decisions}
        assert len(joint) > 1
        for chosen, probability in joint.items():
            assert within(configurations[chosen] / n, probability, n), chosen
        assert all(joint[tuple(d.backends.values())] == d.joint_propensity for d in decisions)


def test_unstructured_joint_propensity_is_the_softmax_and_marginals_its_sums(frames):
    from policy.features import frame_features

    policy = fed_policy("unstructured", frames)
    logits = policy.weights @ frame_features(frames[2])
    softmax = np.exp(logits - logits.max())
    softmax /= softmax.sum()
    decision = policy.decide(frames[2])
    assert decision.joint_propensity == pytest.approx(softmax[decision.arm], rel=1e-4)
    for i, site in enumerate(SITES):
        for backend in CANDIDATES[site["id"]]:
            total = sum(p for c, p in zip(policy.configurations, softmax, strict=True) if c[i] == backend)
            assert decision.propensities[site["id"]][backend] == pytest.approx(total, rel=1e-4, abs=1e-9)


def test_whole_query_marginals_put_each_configuration_on_its_backends(frames):
    policy = fed_policy("whole_query", frames)
    decision = policy.decide(frames[0])
    small = decision.propensities[SITES[0]["id"]]["small"]
    assert decision.propensities[SITES[1]["id"]] == pytest.approx({"vqa-s": small, "vqa-m": 0.0, "vqa-l": 1 - small})
    assert decision.joint_propensity == pytest.approx(small if decision.arm == 0 else 1 - small)


def test_whole_query_without_choices_draws_its_one_configuration_surely(frames):
    sites = [{"id": "find@1:1", "function": "detect", "backends": [{"name": "small", "cost": 1}]}]
    policy = build_policy(make_spec("whole_query", sites))
    decision = policy.decide(frames[0])
    assert decision.propensities == {"find@1:1": {"small": 1.0}}
    assert decision.joint_propensity == 1.0


# -- the probability that a Thompson draw's argmax is each backend -------------------------------


def monte_carlo(means: np.ndarray, stds: np.ndarray, n: int = 1_000_000) -> np.ndarray:
    draws = means + stds * np.random.default_rng(0).standard_normal((n, means.size))
    return np.bincount(draws.argmax(axis=1), minlength=means.size) / n


def random_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(4)
    cases = []
    for k in (2, 3, 3, 4, 5, 6):
        means = rng.normal(0.0, 1.0, k)
        stds = np.exp(rng.normal(-0.5, 1.5, k))
        cases.append((means, stds))
        zero = stds.copy()
        zero[rng.choice(k, size=max(1, k // 2), replace=False)] = 0.0
        cases.append((means, zero))
    return cases


@pytest.mark.parametrize(("means", "stds"), random_cases())
def test_argmax_probabilities_match_monte_carlo(means, stds):
    probs = argmax_probabilities(means, stds)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    assert (probs >= 0).all()
    sampled = monte_carlo(means, stds)
    n = 1_000_000
    assert np.all(np.abs(probs - sampled) <= 5 * np.sqrt(probs * (1 - probs) / n) + 1e-4)


def reference(means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """The defining integral on a fine grid with ``math.erfc`` (backends with a spread only)."""
    cdf = np.frompyfunc(lambda z: 0.5 * math.erfc(-z / math.sqrt(2.0)), 1, 1)
    out = np.zeros(means.size)
    for a in range(means.size):
        t = np.linspace(means[a] - 9 * stds[a], means[a] + 9 * stds[a], 100_001)
        f = np.exp(-0.5 * ((t - means[a]) / stds[a]) ** 2) / (math.sqrt(2 * math.pi) * stds[a])
        for b in range(means.size):
            if b != a:
                f = f * cdf((t - means[b]) / stds[b]).astype(np.float64)
        out[a] = np.trapezoid(f, t)
    return out


@pytest.mark.parametrize(
    ("means", "stds"),
    [
        ([0.0, 0.1, -0.2], [1.0, 0.3, 2.0]),
        ([1.0, 0.98, 0.5, 1.2], [0.01, 0.05, 1.0, 0.3]),  # spreads two orders of magnitude apart
        ([0.0, 3.0, -1.0, 0.2, 0.1], [0.5, 0.2, 4.0, 0.001, 0.7]),
    ],
)
def test_argmax_probabilities_are_accurate(means, stds):
    means, stds = np.array(means), np.array(stds)
    assert np.abs(argmax_probabilities(means, stds) - reference(means, stds)).max() < 1e-6


def test_argmax_probabilities_edge_cases():
    assert argmax_probabilities([0.3], [2.0]).tolist() == [1.0]
    assert argmax_probabilities([1.0, 2.0, 2.0], [0.0, 0.0, 0.0]).tolist() == [0.0, 1.0, 0.0]  # ties: first
    assert argmax_probabilities([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]) == pytest.approx([1 / 3] * 3, abs=1e-9)
    two = argmax_probabilities([0.5, 0.0], [1.0, 2.0])
    assert two[0] == pytest.approx(0.5 * math.erfc(-0.5 / math.sqrt(5.0) / math.sqrt(2.0)), abs=1e-12)
    # a fixed score wins when every draw falls below it
    fixed = argmax_probabilities([0.0, 0.5, -0.3], [1.0, 0.0, 0.4])
    expected = 0.5 * math.erfc(-0.5 / math.sqrt(2.0)) * 0.5 * math.erfc(-0.8 / 0.4 / math.sqrt(2.0))
    assert fixed[1] == pytest.approx(expected, abs=1e-6)
    # a fixed score above every draw's reach always wins; the lower fixed one never does
    assert argmax_probabilities([0.0, 100.0, 50.0], [1.0, 0.0, 0.0]).tolist() == [0.0, 1.0, 0.0]
    assert argmax_probabilities([np.nan, 1.0, 0.0], [1.0, 1.0, 1.0]).tolist() == [1.0, 0.0, 0.0]


def test_normal_cdf_is_accurate():
    z = np.linspace(-12.0, 12.0, 2001)
    exact = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z])
    assert np.abs(normal_cdf(z) - exact).max() < 1e-7
