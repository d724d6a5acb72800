"""Forgetting: the prior's weight capped, and a model's posterior widened when its residuals drift."""

from __future__ import annotations

import numpy as np
import pytest

from policy.algorithms import build_policy
from policy.algorithms.bayes import LinearArms
from policy.algorithms.drift import DriftWatch, capped
from policy.algorithms.evidence import Evidence
from policy.service import PolicyService
from policy.settings import PolicySettings
from tests.policy import test_cascade
from tests.policy.test_cascade import ASK, FIND, escalation_rates, feed, frame_event, spec


def heavy_tailed(rng: np.random.Generator, n: int) -> np.ndarray:
    """Residuals as rare large positives make them: mostly small, one in ten about +5, mean 0."""
    rare = rng.random(n) < 0.1
    values = np.where(rare, 5.0, -5.0 / 9.0) + 0.3 * rng.standard_normal(n)
    return values - values.mean()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_watch_stays_quiet_where_nothing_changes_even_with_heavy_tails(seed):
    watch = DriftWatch(window=200, threshold=6.0)
    alarms = sum(watch.observe(float(z)) for z in heavy_tailed(np.random.default_rng(seed), 20_000))
    assert alarms == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_watch_sees_the_residuals_move_within_a_few_windows(seed):
    rng = np.random.default_rng(seed)
    watch = DriftWatch(window=200, threshold=6.0)
    for z in heavy_tailed(rng, 5_000):
        assert not watch.observe(float(z))
    shifted = heavy_tailed(rng, 1_000) + 1.0  # the model now under-predicts by a spread of one reward
    first = next((i for i, z in enumerate(shifted) if watch.observe(float(z))), None)
    assert first is not None and first < 400, first


def test_a_capped_prior_keeps_its_mean_and_loses_only_confidence():
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(5_000), rng.random((5_000, 2))])
    y = x @ np.array([0.5, -1.0, 2.0]) + rng.standard_normal(5_000)
    evidence = Evidence(x.T @ x, x.T @ y, 5_000)
    light = capped(evidence, 100.0)
    assert light.xtx[0, 0] == pytest.approx(100.0) and light.n == 5_000
    assert np.allclose(np.linalg.solve(light.xtx, light.xty), np.linalg.solve(evidence.xtx, evidence.xty))
    assert capped(evidence, None) is evidence and capped(evidence, 10_000.0) is evidence


def test_widening_an_arm_keeps_its_mean_where_its_data_dominate_and_grows_its_spread():
    arms = LinearArms(1, 2, reg=1.0)
    rng = np.random.default_rng(0)
    for _ in range(2_000):
        x = np.array([1.0, rng.random()])
        arms.update(0, x, float(x @ [1.0, -2.0] + rng.standard_normal()))
    mean, cov = arms.theta[0].copy(), arms.a_inv[0].copy()
    arms.widen(0, 0.1)
    assert np.allclose(arms.theta[0], mean, atol=0.15)  # 200 observations' worth against the base prior
    assert np.allclose(arms.a_inv[0], cov / 0.1, rtol=0.1)
    assert np.allclose(arms.theta[0], arms.a_inv[0] @ arms.b[0])


def test_an_arm_weighs_as_many_observations_as_it_took_and_widening_scales_that():
    arms = LinearArms(1, 3, reg=2.0)
    rng = np.random.default_rng(1)
    for _ in range(500):
        arms.update(0, np.array([1.0, *rng.random(2)]), float(rng.standard_normal()))
    assert arms.weight(0) == pytest.approx(500.0)
    arms.widen(0, 0.1)
    assert arms.weight(0) == pytest.approx(50.0)


def relearned(monkeypatch, drift_window: int, seed: int) -> dict[str, float]:
    """Escalation rates after the cheap VQA stops missing positives: 1,500 frames where re-asking
    a "no" about a found candidate pays, then 600 where it never does. Plain Thompson spread (``nu``
    1): with the default's narrower draws and no prior, some seeds never find out that re-asking pays
    in the first 1,500 frames, and there is then nothing to forget."""
    policy = build_policy(spec(seed=seed, nu=1.0, drift_window=drift_window))
    rng = np.random.default_rng(seed)
    for _ in range(1_500):
        decision, feedback = frame_event(policy, rng)
        policy.observe(decision, feedback)
    monkeypatch.setattr(test_cascade, "MISSED", 0.0)
    for _ in range(600):
        decision, feedback = frame_event(policy, rng)
        policy.observe(decision, feedback)
    return escalation_rates(policy)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_cascade_that_watches_for_drift_stops_paying_for_escalations_that_stopped_paying(monkeypatch, seed):
    with monkeypatch.context() as patch:
        stuck = relearned(patch, 0, seed)
    with monkeypatch.context() as patch:
        watched = relearned(patch, 100, seed)
    # without the watch the 1,500 frames' evidence keeps it re-asking; with it, it has mostly stopped
    assert stuck["no_on_found"] > 0.9 and watched["no_on_found"] < 0.5, (watched, stuck)


def test_a_watched_cascade_keeps_its_watches_across_a_snapshot():
    policy = build_policy(spec(seed=3, nu=1.0, drift_window=50))
    rng = np.random.default_rng(3)
    for _ in range(120):
        decision, feedback = frame_event(policy, rng)
        policy.observe(decision, feedback)
    again = build_policy(spec(seed=3, nu=1.0, drift_window=50))
    again.load_state_dict(policy.state_dict())
    assert again.watches.keys() == policy.watches.keys()
    for pair, watch in policy.watches.items():
        assert again.watches[pair].state() == watch.state()
    assert any(watch.seen for watch in again.watches.values())


def test_the_service_reports_what_each_watch_has_seen(tmp_path):
    service = PolicyService(PolicySettings(state_dir=tmp_path / "state"))
    service.restore()
    service.put("watched", spec(seed=5, nu=1.0, drift_window=50))
    service.put("unwatched", spec(seed=5, nu=1.0, drift_window=0))
    feed(service, "watched", events=30, seed=5)
    drifts = service.info("watched").drifts
    # the models that decide something: not vqa-small, the only first choice of a site that escalates
    assert sorted((d.site, d.model) for d in drifts) == sorted(
        [(FIND, "choice:detect-large"), (FIND, "choice:detect-small"), (ASK, "escalation")]
    )
    assert sum(d.observed for d in drifts if d.model.startswith("choice:detect")) == 30
    assert all(d.alarms == 0 for d in drifts)
    assert service.info("unwatched").drifts == []
