"""Concurrency: duplicate feedback racing for one decision, and deciding while a policy trains."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fmprog.contract import Feedback
from policy.algorithms import build_policy
from policy.service import FeedbackConflict
from tests.policy.conftest import SITE, make_spec
from tests.policy.test_service import SPEC, feedback, frame, service


def race(calls, threads: int) -> list:
    """Run the calls at once (released together by a barrier); their results or exceptions."""
    barrier = threading.Barrier(threads)

    def run(call):
        barrier.wait()
        try:
            return call()
        except Exception as error:  # the outcome is what the test checks
            return error

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, calls))


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_identical_feedback_is_taken_once(tmp_path, attempt):
    svc = service(tmp_path)
    svc.put("p1", SPEC)
    svc.decide("p1", "d1", frame(attempt))
    outcomes = race([lambda: svc.feedback("p1", feedback("d1"))] * 8, 8)
    assert sorted(outcomes) == [False] + [True] * 7, outcomes
    info = svc.info("p1")
    assert (info.observed, info.pending, info.last_feedback_seq) == (1, 0, 1)


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_conflicting_feedback_is_a_conflict(tmp_path, attempt):
    svc = service(tmp_path)
    svc.put("p1", SPEC)
    svc.decide("p1", "d1", frame(attempt))
    calls = [lambda: svc.feedback("p1", feedback("d1", reward=1.0))] * 4
    calls += [lambda: svc.feedback("p1", feedback("d1", reward=-1.0))] * 4
    outcomes = race(calls, 8)
    new = [i for i, o in enumerate(outcomes) if o is False]
    assert len(new) == 1, outcomes
    same = range(4) if new[0] < 4 else range(4, 8)  # the calls that sent what was taken
    for i, outcome in enumerate(outcomes):
        if i != new[0]:
            expected = True if i in same else FeedbackConflict
            assert outcome is True if expected is True else isinstance(outcome, FeedbackConflict), outcomes
    assert svc.info("p1").observed == 1


@pytest.mark.parametrize(
    ("algorithm", "hyper"),
    [
        ("structured", {"train_every": 32, "epochs": 30}),
        ("structured_code", {"input_size": 64, "width": 4, "train_every": 32, "epochs": 12}),
    ],
)
def test_deciding_proceeds_while_training_runs(frames, algorithm, hyper):
    policy = build_policy(make_spec(algorithm, sites=None, seed=1, **hyper))
    for i in range(32):
        decision = policy.decide(frames[i % len(frames)])
        policy.observe(decision, Feedback(loss=float(i % 2), executed_sites=[SITE], costs={SITE: 1.0}))
    window: dict[str, float] = {}
    report = []

    def train() -> None:
        window["start"] = time.perf_counter()
        report.append(policy.train())
        window["end"] = time.perf_counter()

    trainer = threading.Thread(target=train)
    trainer.start()
    finished = []  # when each decision completed
    while trainer.is_alive() or not finished:
        policy.decide(frames[len(finished) % len(frames)])
        finished.append(time.perf_counter())
    trainer.join(timeout=60)
    assert not trainer.is_alive() and report[0] is not None and report[0].steps > 0
    during = [t for t in finished if window["start"] < t < window["end"]]
    assert len(during) >= 3, (len(during), window["end"] - window["start"])


@pytest.mark.parametrize(
    ("algorithm", "hyper", "pending"),
    [
        ("structured", {"train_every": 8}, lambda state: len(state["buffer_arms"])),
        ("structured_code", {"input_size": 64, "width": 4, "train_every": 8}, lambda state: len(state["rounds"])),
    ],
)
def test_a_snapshot_while_training_keeps_the_samples_being_trained_on(frames, algorithm, hyper, pending):
    """Samples leave the persisted state only when the trained networks are swapped in, so a
    snapshot taken mid-training (then a crash) does not lose them."""
    policy = build_policy(make_spec(algorithm, seed=2, **hyper))
    for i in range(8):
        policy.observe(policy.decide(frames[i]), Feedback(loss=float(i % 2), executed_sites=[SITE]))
    before = pending(policy.state_dict())
    assert before > 0
    mid_training = []
    # training runs on a deep copy of the network, which copies this hook with it
    last_layer = list(policy.nets[SITE].modules())[-1]
    last_layer.register_forward_hook(lambda *_: mid_training.append(pending(policy.state_dict())))
    assert policy.train() is not None
    assert mid_training and set(mid_training) == {before}
    assert pending(policy.state_dict()) == 0
