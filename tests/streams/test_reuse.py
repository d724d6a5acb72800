"""The frame-reuse gate (``fmprog.streams.reuse``): signatures and features, the safe default, max
age, learning in both directions, exploration and propensities, and state round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmprog.streams.reuse import (
    CHANGED_LEVEL,
    MODEL_INPUTS,
    SIGNATURE_SIZE,
    ReuseChoice,
    ReuseFeatures,
    ReuseGate,
    ReuseParams,
    reuse_features,
    signature,
)

QUIET = ReuseParams(exploration=0.0)
"""No exploration: every decision follows the model."""


def features(mean_diff: float, age: int = 1, changed: float = 0.0) -> ReuseFeatures:
    return ReuseFeatures(mean_diff=mean_diff, changed=changed, age=age)


def street(seed: int = 0) -> np.ndarray:
    """A 768 x 576 RGB frame of noise, like a textured street."""
    return np.random.default_rng(seed).integers(0, 256, (576, 768, 3), dtype=np.uint8)


# signatures and features


def test_a_signature_is_a_small_grey_float_image():
    sig = signature(street())
    assert sig.shape == (SIGNATURE_SIZE[1], SIGNATURE_SIZE[0])
    assert sig.dtype == np.float32
    grey = signature(np.full((576, 768, 3), (200, 100, 50), np.uint8))
    assert np.allclose(grey, 0.299 * 200 + 0.587 * 100 + 0.114 * 50, atol=0.01)


def test_a_signature_reads_grey_frames_and_refuses_other_shapes():
    assert signature(np.full((576, 768), 7, np.uint8)) == pytest.approx(np.full((72, 96), 7.0))
    with pytest.raises(ValueError, match="H x W x 3"):
        signature(np.zeros((576, 768, 4), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        signature(np.zeros((0, 768, 3), np.uint8))


def test_identical_frames_do_not_differ_and_a_new_scene_differs_everywhere():
    a, b = signature(street(0)), signature(street(1))
    same = reuse_features(a, a.copy(), 3)
    assert (same.mean_diff, same.changed, same.age) == (0.0, 0.0, 3)
    bright = signature(np.zeros((576, 768, 3), np.uint8)) + 2 * CHANGED_LEVEL
    assert reuse_features(bright, bright - 2 * CHANGED_LEVEL, 1).changed == 1.0
    assert reuse_features(a, b, 1).mean_diff > 0


def test_a_moving_person_is_seen_by_the_changed_share():
    """A dark 'person' on a grey background: a small share of changed pixels, a small mean."""
    before = np.full((576, 768, 3), 128, np.uint8)
    after = before.copy()
    after[200:344, 100:148] = 10
    f = reuse_features(signature(after), signature(before), 1)
    assert 0.01 < f.changed < 0.03
    assert f.mean_diff < 3.0


def test_features_refuse_mismatched_signatures_and_negative_ages():
    with pytest.raises(ValueError, match="shape"):
        reuse_features(np.zeros((72, 96), np.float32), np.zeros((36, 48), np.float32), 1)
    with pytest.raises(ValueError, match="age"):
        reuse_features(np.zeros((72, 96), np.float32), np.zeros((72, 96), np.float32), -1)


def test_the_vector_scales_every_feature_to_order_one():
    assert features(1.5, age=10, changed=0.02).vector() == pytest.approx([1.5, 1.0, 1.0])


# the safe default


def test_an_unchanged_frame_is_reused_before_any_outcome():
    choice = ReuseGate(QUIET).decide(features(0.0))
    assert choice.reuse and choice.reason == "unchanged"
    assert choice.p_change < QUIET.tolerance


def test_with_no_earlier_answer_the_program_runs():
    assert ReuseGate(QUIET).decide(None) == ReuseChoice(False, 1.0, 1.0, "first")


def test_a_large_change_forces_a_run():
    choice = ReuseGate(QUIET).decide(features(8.0, changed=0.2))
    assert not choice.reuse and choice.reason == "changed"
    assert choice.propensity == 1.0


def test_the_default_is_the_naive_gate_at_its_threshold():
    gate = ReuseGate(QUIET)
    t = QUIET.default_threshold
    assert gate.p_change(features(t, age=0)) == pytest.approx(QUIET.tolerance)
    assert gate.decide(features(t - 0.05)).reuse
    assert not gate.decide(features(t + 0.05)).reuse
    assert gate.reuse_below(age=0) == pytest.approx(t)


@pytest.mark.parametrize("max_age", [0, 3, 10])
def test_max_age_forces_a_run(max_age):
    gate = ReuseGate(ReuseParams(exploration=0.0, max_age=max_age))
    assert gate.decide(features(0.0, age=max_age)).reuse
    old = gate.decide(features(0.0, age=max_age + 1))
    assert not old.reuse and old.reason == "max_age" and old.propensity == 1.0
    assert gate.summary()["forced_by_age"] == 1


# learning


def test_changes_at_small_differences_make_the_gate_stricter():
    gate = ReuseGate(QUIET)
    small = features(0.5)
    assert gate.decide(small).reuse
    before, threshold = gate.p_change(small), gate.reuse_below()
    for _ in range(30):
        gate.learn(small, unchanged=False)
    assert gate.p_change(small) > before
    assert not gate.decide(small).reuse
    after = gate.reuse_below()
    assert after is None or after < threshold


def test_no_changes_at_larger_differences_make_the_gate_looser():
    gate = ReuseGate(QUIET)
    larger = features(2.5, age=2, changed=0.02)
    assert not gate.decide(larger).reuse
    threshold = gate.reuse_below()
    for _ in range(60):
        gate.learn(larger, unchanged=True)
    assert gate.decide(larger).reuse
    assert gate.reuse_below() > threshold


def test_learning_counts_outcomes_and_volatility_follows_changes():
    gate = ReuseGate(QUIET)
    for unchanged in (True, True, False, False, False):
        gate.learn(features(1.0), unchanged)
    summary = gate.summary()
    assert summary["outcomes"] == 5
    assert summary["change_rate"] == pytest.approx(0.6)
    assert summary["volatility"] > 0.5
    assert set(summary["weights"]) == set(MODEL_INPUTS)


def test_a_flood_of_outcomes_stays_finite():
    gate = ReuseGate(QUIET)
    for i in range(2000):
        gate.learn(features(50.0 * (i % 2), age=10, changed=1.0), unchanged=bool(i % 3))
    p = gate.p_change(features(0.0))
    assert 0.0 <= p <= 1.0
    assert all(np.isfinite(w) for w in gate.summary()["weights"].values())


# exploration and propensities


def test_exploration_happens_at_its_rate_with_recorded_propensities():
    params = ReuseParams(exploration=0.2)
    gate = ReuseGate(params, seed=7)
    choices = [gate.decide(features(0.0)) for _ in range(4000)]
    explored = [c for c in choices if c.reason == "explore"]
    assert len(explored) / len(choices) == pytest.approx(0.2, abs=0.02)
    assert all(not c.reuse and c.propensity == pytest.approx(0.2) for c in explored)
    assert all(c.reuse and c.propensity == pytest.approx(0.8) for c in choices if c.reason == "unchanged")
    assert all(0.0 < c.propensity <= 1.0 for c in choices)
    again = ReuseGate(params, seed=7)
    assert [again.decide(features(0.0)) for _ in range(4000)] == choices
    summary = gate.summary()
    assert summary["explored"] == len(explored)
    assert summary["reuse_rate"] == pytest.approx(1 - len(explored) / len(choices))


def test_no_exploration_where_the_gate_runs_anyway():
    gate = ReuseGate(ReuseParams(exploration=0.5), seed=1)
    choices = [gate.decide(features(9.0, changed=0.3)) for _ in range(200)]
    assert {c.reason for c in choices} == {"changed"}
    assert {c.propensity for c in choices} == {1.0}


def test_without_exploration_a_reuse_is_certain():
    assert ReuseGate(QUIET).decide(features(0.0)).propensity == 1.0


# state


def test_state_round_trips_through_json():
    gate = ReuseGate(ReuseParams(exploration=0.3, tolerance=0.1), seed=3)
    for i in range(40):
        f = features(0.2 * (i % 15), age=1 + i % 5, changed=0.001 * i)
        gate.decide(f)
        gate.learn(f, unchanged=i % 4 != 0)
    copy = ReuseGate.from_state(json.loads(json.dumps(gate.state())))
    assert copy.params == gate.params
    assert copy.summary() == gate.summary()
    probe = [features(0.3 * i, age=1 + i % 3) for i in range(20)]
    assert [copy.p_change(f) for f in probe] == [gate.p_change(f) for f in probe]
    assert [copy.decide(f) for f in probe] == [gate.decide(f) for f in probe]


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.pop("mean"),
        lambda s: s.update(mean=[0.0]),
        lambda s: s.update(precision=[0.0] * len(MODEL_INPUTS)),
        lambda s: s.update(volatility=2.0),
        lambda s: s["params"].update(color="red"),
        lambda s: s["params"].update(tolerance=1.5),
        lambda s: s.update(rng={"bit_generator": "nothing"}),
    ],
)
def test_a_damaged_state_is_refused(damage):
    state = json.loads(json.dumps(ReuseGate().state()))
    damage(state)
    with pytest.raises(ValueError, match="state"):
        ReuseGate.from_state(state)


@pytest.mark.parametrize(
    "bad",
    [
        {"tolerance": 0.0},
        {"tolerance": 1.0},
        {"max_age": -1},
        {"exploration": 1.0},
        {"default_threshold": 0.0},
        {"prior_slope": -1.0},
        {"prior_precision": 0.0},
        {"forgetting": 0.0},
        {"volatility_decay": 1.5},
    ],
)
def test_params_refuse_values_that_mean_nothing(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ReuseParams(**bad)
