from __future__ import annotations

import pytest
from pydantic import ValidationError

from fmprog.contract import Feedback, PolicySpec
from policy.algorithms import build_policy, check_spec
from policy.decisions import PendingDecision
from tests.policy.conftest import SITES, make_spec


def test_lambda_alias_and_defaults():
    spec = make_spec("fast")
    assert spec.lam == 0.05
    assert spec.model_dump(by_alias=True)["lambda"] == 0.05
    assert check_spec(spec).nu == 0.3
    assert PolicySpec.model_validate_json(spec.model_dump_json(by_alias=True)) == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algorithm": "nope"}, "unknown algorithm 'nope'"),
        ({"hyperparameters": {"bogus": 1}}, "hyperparameters.bogus"),
        ({"hyperparameters": {"nu": -1}}, "hyperparameters.nu"),
    ],
)
def test_the_algorithm_is_checked_by_the_policy_not_the_spec(change, message):
    """The spec is the router-policy contract and checks its shape only; the policy side checks
    the algorithm and its hyper-parameters, before building a policy."""
    spec = PolicySpec.model_validate({"sites": SITES, "lambda": 0.1, "algorithm": "fast"} | change)
    with pytest.raises(ValueError, match=message):
        check_spec(spec)
    with pytest.raises(ValueError, match=message.split(".")[-1]):
        build_policy(spec)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lambda": -1}, "lambda"),
        ({"sites": []}, "sites"),
        ({"sites": [SITES[0], SITES[0]]}, "listed twice"),
        ({"sites": [{**SITES[0], "backends": [{"name": "a", "cost": 1}, {"name": "a", "cost": 2}]}]}, "listed twice"),
        ({"sites": [{**SITES[0], "backends": [{"name": "a", "cost": 0}]}]}, "cost"),
        ({"sites": [{**SITES[0], "function": "sing"}]}, "function"),
    ],
)
def test_spec_errors(change, message):
    data = {"sites": SITES, "lambda": 0.1, "algorithm": "fast"} | change
    with pytest.raises(ValidationError, match=message):
        PolicySpec.model_validate(data)


def test_static_map_is_checked():
    with pytest.raises(ValueError, match="not a candidate"):
        check_spec(make_spec("static", mode="map", backends={"find@1:1": "vqa-l"}))
    with pytest.raises(ValueError, match="unknown call site"):
        build_policy(make_spec("static", mode="map", backends={"nope": "small"}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reward": 1, "loss": 0}, "exactly one"),
        ({}, "exactly one"),
        ({"loss": 1, "costs": {"a": 1}}, "not among executed_sites"),
        ({"loss": 1, "executed_sites": ["a"], "costs": {"a": -1}}, ">= 0"),
        ({"loss": 1, "executed_sites": ["a", "a"]}, "twice"),
    ],
)
def test_feedback_errors(fields, message):
    with pytest.raises(ValidationError, match=message):
        Feedback.model_validate(fields)


def test_feedback_task_term():
    assert Feedback(loss=1).task_term == -1
    assert Feedback(reward=1000, executed_sites=["a"], costs={"a": 3}).task_term == 1000


def test_decision_json_round_trip_keeps_context():
    import numpy as np

    context = np.arange(6, dtype=np.float32).reshape(2, 3)
    decision = PendingDecision.with_context(context, algorithm="fast", backends={"a": "b"}, arm=1)
    again = PendingDecision.model_validate_json(decision.model_dump_json())
    assert np.array_equal(again.context_array(), context)
    assert again.arm == 1
    assert "context" not in decision.reply().model_dump()


def test_decision_context_keeps_its_dtype_and_is_checked():
    import numpy as np

    pixels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    decision = PendingDecision.with_context(pixels, dtype="uint8", algorithm="structured_code", backends={"a": "b"})
    again = PendingDecision.model_validate_json(decision.model_dump_json())
    assert again.context_dtype == "uint8" and again.context_array().dtype == np.uint8
    assert np.array_equal(again.context_array(), pixels)
    with pytest.raises(ValidationError, match="context has 24 bytes"):
        PendingDecision(
            algorithm="x", backends={}, context=pixels.tobytes(), context_shape=[2, 3, 4]
        )  # float32 needs 96
