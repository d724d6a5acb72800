"""The policy service's domain: decisions, idempotent feedback, expiry, and state that survives a restart."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fmprog.contract import ExpiredDecisions, Feedback, FeedbackList, PolicySpec
from policy.service import FeedbackConflict, PolicyService, UnknownDecision, UnknownPolicy
from policy.settings import PolicySettings

SPEC = PolicySpec.model_validate(
    {
        "sites": [
            {
                "id": "find@3:4",
                "function": "detect",
                "backends": [{"name": "ds", "cost": 1}, {"name": "dl", "cost": 5}],
            },
            {"id": "query@4:8", "function": "vqa", "backends": [{"name": "vs", "cost": 2}, {"name": "vl", "cost": 9}]},
        ],
        "lambda": 0.01,
        "algorithm": "fast",
    }
)


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def feedback(decision_id: str, reward: float = 1.0) -> Feedback:
    return Feedback(decision_id=decision_id, reward=reward, executed_sites=["find@3:4"], costs={"find@3:4": 1.0})


def service(tmp_path, **settings) -> PolicyService:
    result = PolicyService(PolicySettings(state_dir=tmp_path / "state", **settings))
    result.restore()
    return result


def test_decide_then_feedback_once(tmp_path):
    svc = service(tmp_path)
    svc.put("p1", SPEC)
    out = svc.decide("p1", "d1", frame(0))
    assert set(out.backends) == {"find@3:4", "query@4:8"}
    assert svc.info("p1").pending == 1
    assert svc.feedback("p1", feedback("d1")) is False
    assert svc.feedback("p1", feedback("d1")) is True  # the same feedback again: a repeat
    with pytest.raises(FeedbackConflict):
        svc.feedback("p1", feedback("d1", reward=-5))
    with pytest.raises(UnknownDecision):
        svc.feedback("p1", feedback("never-made"))
    with pytest.raises(UnknownPolicy):
        svc.decide("p2", "d2", frame(0))
    info = svc.info("p1")
    assert (info.observed, info.pending, info.last_feedback_seq) == (1, 0, 1)
    svc.decide("p1", "d3", frame(1))
    with pytest.raises(ValueError, match="unknown call site"):
        svc.feedback("p1", Feedback(decision_id="d3", reward=1, executed_sites=["nope"]))


def test_state_survives_a_crash_without_close(tmp_path):
    svc = service(tmp_path, snapshot_every=1000)
    svc.put("p1", SPEC)
    for i in range(5):
        svc.decide("p1", f"d{i}", frame(i))
    for i in range(4):
        svc.feedback("p1", feedback(f"d{i}", reward=float(i)))
    # no close(): the snapshot predates the feedback, which must be replayed from the log
    again = service(tmp_path)
    assert again.info("p1").observed == 4
    assert again.info("p1").pending == 1
    assert again.feedback("p1", feedback("d4")) is False  # a decision made before the crash still learns
    assert again.feedback("p1", feedback("d0", reward=0.0)) is True
    assert again.info("p1").observed == 5


def test_changing_the_spec_restarts_learning_and_same_spec_keeps_it(tmp_path):
    svc = service(tmp_path)
    svc.put("p1", SPEC)
    svc.decide("p1", "d1", frame(0))
    svc.feedback("p1", feedback("d1"))
    assert svc.put("p1", SPEC).observed == 1
    changed = SPEC.model_copy(update={"lam": 0.5})
    assert svc.put("p1", changed).observed == 0


def test_decisions_pending_past_the_timeout_are_dropped_unlearned(tmp_path):
    svc = service(tmp_path, pending_timeout_s=0.001)
    svc.put("p1", SPEC)
    svc.decide("p1", "d1", frame(0))
    time.sleep(0.01)
    assert svc.expire() == 1
    assert svc.info("p1").pending == 0
    assert svc.info("p1").observed == 0
    with pytest.raises(UnknownDecision):
        svc.feedback("p1", feedback("d1"))


def test_decisions_the_router_expired_are_forgotten(tmp_path):
    svc = service(tmp_path)
    svc.put("p1", SPEC)
    svc.put("p2", SPEC)
    for decision_id in ("d1", "d2", "d3"):
        svc.decide("p1", decision_id, frame(0))
    svc.decide("p2", "e1", frame(0))
    svc.feedback("p1", feedback("d3"))
    # d3 was labelled and e1 is another program's: only d1 and d2 are dropped
    assert svc.forget("p1", ExpiredDecisions(decision_ids=["d1", "d2", "d3", "e1"])) == 2
    assert (svc.info("p1").pending, svc.info("p1").observed, svc.info("p2").pending) == (0, 1, 1)
    with pytest.raises(UnknownPolicy):
        svc.forget("nope", ExpiredDecisions(decision_ids=["d1"]))


def test_a_list_of_feedback_is_learned_item_by_item_each_once(tmp_path):
    """Each feedback of a list is learned on its own, in order, as if sent alone: a repeat (in the
    list, or of earlier feedback) is learned once, and a refused one does not stop the others."""
    svc = service(tmp_path)
    svc.put("p1", SPEC)
    for decision_id in ("d1", "d2", "d3", "d4"):
        svc.decide("p1", decision_id, frame(0))
    svc.feedback("p1", feedback("d1"))
    batch = FeedbackList(
        feedback=[
            feedback("d1"),  # learned before: a repeat
            feedback("d2"),
            feedback("d2"),  # twice in the list: learned once
            feedback("d1", reward=-5),  # different feedback for a resolved decision
            feedback("never-made"),
            Feedback(decision_id="d3", reward=1, executed_sites=["nope"]),
            feedback("d4"),
        ]
    )
    reply = svc.feedback_list("p1", batch)
    assert [(r.decision_id, r.outcome) for r in reply.results] == [
        ("d1", "repeat"),
        ("d2", "accepted"),
        ("d2", "repeat"),
        ("d1", "conflict"),
        ("never-made", "unknown"),
        ("d3", "invalid"),
        ("d4", "accepted"),
    ]
    assert "unknown call site" in (reply.results[5].detail or "") and reply.results[1].detail is None
    assert (svc.info("p1").observed, svc.info("p1").pending) == (3, 1)  # d1, d2, d4; d3 still pending
    assert svc.feedback_list("p1", FeedbackList(feedback=[feedback("d2")])).results[0].outcome == "repeat"
    assert svc.info("p1").observed == 3
    with pytest.raises(UnknownPolicy):
        svc.feedback_list("nope", FeedbackList(feedback=[feedback("d1")]))


def test_a_list_of_feedback_names_each_decision():
    with pytest.raises(ValueError, match="needs its decision_id"):
        FeedbackList(feedback=[Feedback(reward=1.0)])
    with pytest.raises(ValueError, match="at least 1"):
        FeedbackList(feedback=[])
