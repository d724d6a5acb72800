"""What the policy's view counts of a program (``PolicyInfo``: observed, pending, trained steps and
seconds, last feedback) survives a restart over the same state: closed, or killed without close."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.contract import Feedback
from policy.service import PolicyService
from policy.settings import PolicySettings
from tests.policy.conftest import SITE, make_spec

SPEC = make_spec("structured", sites=None, seed=0, train_every=4, epochs=1, batch_size=4)


def _service(state_dir, **settings) -> PolicyService:
    service = PolicyService(PolicySettings(state_dir=state_dir, **settings))
    service.restore()
    return service


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def _learn(service: PolicyService, frames: range) -> None:
    """Decide every frame; learn from all of them but the last, which stays pending."""
    for i in frames:
        service.decide("p", f"d{i}", _frame(i))
    for i in list(frames)[:-1]:
        feedback = Feedback(decision_id=f"d{i}", reward=float(i % 2), executed_sites=[SITE], costs={SITE: 1.0})
        assert service.feedback("p", feedback) is False


def _counts(service: PolicyService) -> tuple:
    info = service.info("p")
    return info.observed, info.pending, info.trained_steps, info.train_seconds, info.last_feedback_seq


@pytest.mark.parametrize("closed", [True, False])
def test_the_counts_survive_a_restart(tmp_path, closed):
    state_dir = tmp_path / "state"
    running = _service(state_dir, snapshot_every=1000)
    running.put("p", SPEC)
    _learn(running, range(9))
    assert running.train_once() > 0  # trained, and snapshotted with what it trained
    before = _counts(running)
    observed, pending, trained_steps, train_seconds, _ = before
    assert (observed, pending) == (8, 1) and trained_steps > 0 and train_seconds > 0
    if closed:
        running.close()
    # killed: no close, the snapshot the trainer wrote is all there is
    again = _service(state_dir)
    assert _counts(again) == before
    assert again.metrics.registry.get_sample_value("fmprog_policy_pending_decisions") == 1

    _learn(again, range(100, 105))  # learning goes on from there
    again.train_once()
    observed, pending, trained_steps, _, seq = _counts(again)
    assert (observed, pending) == (12, 2) and trained_steps > before[2] and seq > before[4]
    after = _counts(again)
    again.close()
    third = _service(state_dir)
    assert _counts(third) == after
    third.close()
    if not closed:
        running.state.close()


def test_feedback_after_the_last_snapshot_is_counted_again_and_its_training_done_again(tmp_path):
    state_dir = tmp_path / "state"
    running = _service(state_dir, snapshot_every=1000)
    running.put("p", SPEC)
    _learn(running, range(9))
    running.train_once()
    trained = _counts(running)[2]
    _learn(running, range(20, 25))  # observed and logged, not trained nor snapshotted: a kill loses only training
    again = _service(state_dir)
    observed, pending, trained_steps, _, seq = _counts(again)
    assert (observed, pending, trained_steps, seq) == (12, 2, trained, _counts(running)[4])
    assert again.train_once() > 0  # the replayed feedback is trained on again
    again.close()
