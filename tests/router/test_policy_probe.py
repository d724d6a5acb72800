"""While the policy's circuit is open, its readiness is probed: a restarted policy decides frames
again as soon as it says it is ready, long before the breaker's reset timeout (30 s here), and a
policy that says it is ready but fails the frame that tries it is probed less often."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from pybreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN

from fmprog.backends import BackendCatalog
from fmprog.contract import Feedback, FeedbackList, FeedbackListReply, PolicyDecision, PolicySpec
from fmprog.images import encode_png
from router.outbox import Outbox
from router.policy_client import PolicyUnavailable
from router.service import RouterService
from router.store import Store
from tests.fakes import Zoo, box
from tests.router.conftest import create, feedback_each

PROBE_S = 0.05
FRAME = encode_png(np.zeros((80, 100, 3), np.uint8))


class RestartingPolicy:
    """A policy that chooses the largest backends; while ``down`` it fails every request and is not
    ready. ``says_ready`` makes it claim readiness while down (its readiness is wrong)."""

    def __init__(self) -> None:
        self.down = False
        self.says_ready = False
        self.specs: dict[str, PolicySpec] = {}
        self.asked = 0  # decisions asked for, answered or not

    def _check(self) -> None:
        if self.down:
            raise PolicyUnavailable("policy down (test)")

    def ready(self) -> bool:
        return self.says_ready or not self.down

    def check(self, spec: PolicySpec) -> None:
        self._check()

    def register(self, program_id: str, spec: PolicySpec) -> None:
        self._check()
        self.specs[program_id] = spec

    def decide(self, program_id: str, decision_id: str, image: bytes | None) -> PolicyDecision:
        self.asked += 1
        self._check()
        spec = self.specs[program_id]
        return PolicyDecision(algorithm=spec.algorithm, backends={s.id: s.largest for s in spec.sites})

    def feedback(self, program_id: str, feedback: Feedback) -> None:
        self._check()

    def feedback_batch(self, program_id: str, batch: FeedbackList) -> FeedbackListReply:
        return feedback_each(self.feedback, program_id, batch)

    def delete(self, program_id: str) -> None:
        self._check()


@pytest.fixture
def policy() -> RestartingPolicy:
    return RestartingPolicy()


@pytest.fixture
def service(tmp_path, policy) -> Iterator[RouterService]:
    zoo = Zoo()
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    store = Store(tmp_path / "router.db")
    service = RouterService(
        store,
        BackendCatalog(backends=zoo.specs),
        zoo.registry(),
        policy=policy,
        outbox=Outbox(store),
        breaker_failures=2,
        breaker_reset_s=30.0,
        breaker_probe_s=PROBE_S,
        outbox_retry_s=3600,
    )
    yield service
    service.close()
    store.close()


def _eventually(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait for ``condition`` (polling); the deadline is generous, and a third of the reset timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.01)


def _open_circuit(service: RouterService, policy: RestartingPolicy, program_id: str) -> None:
    """Take the policy down: two frames fail to be decided and open its circuit."""
    policy.down = True
    asked = policy.asked
    assert [service.answer(program_id, FRAME).fallback for _ in range(2)] == [True, True]
    assert policy.asked == asked + 2 and service.deciding.breaker.current_state == STATE_OPEN


def test_a_restarted_policy_decides_frames_again_once_it_is_ready(service, policy):
    program = service.register(create("person_on_bike"))
    assert service.answer(program.id, FRAME).fallback is False and policy.asked == 1
    _open_circuit(service, policy, program.id)

    # down and not ready: the probes find it so, the circuit stays open and frames do not ask it
    probe = service.deciding.breaker_probe
    _eventually(lambda: probe.probes >= 3, "three probes of the policy's readiness")
    assert service.deciding.breaker.current_state == STATE_OPEN
    assert [service.answer(program.id, FRAME).fallback for _ in range(3)] == [True] * 3
    assert policy.asked == 3  # skipped: not asked

    policy.down = False  # restarted, and ready
    _eventually(lambda: service.deciding.breaker.current_state == STATE_HALF_OPEN, "the circuit half-opened by a probe")
    assert service.answer(program.id, FRAME).fallback is False  # the trial frame: the policy decides it
    assert policy.asked == 4 and service.deciding.breaker.current_state == STATE_CLOSED
    assert [service.answer(program.id, FRAME).fallback for _ in range(3)] == [False] * 3
    assert policy.asked == 7


def test_a_policy_ready_but_failing_is_tried_less_often(service, policy):
    program = service.register(create("person_on_bike"))
    assert service.answer(program.id, FRAME).fallback is False and policy.asked == 1
    _open_circuit(service, policy, program.id)
    policy.says_ready = True  # ready by its word, failing its decisions
    probe = service.deciding.breaker_probe
    for trials in range(1, 3):
        _eventually(
            lambda: service.deciding.breaker.current_state == STATE_HALF_OPEN, "the circuit half-opened by a probe"
        )
        assert service.answer(program.id, FRAME).fallback is True  # the trial frame asked, and failed
        assert policy.asked == 3 + trials and service.deciding.breaker.current_state == STATE_OPEN
        assert probe.wait_s == pytest.approx(PROBE_S * 2**trials)  # each failed trial doubles the interval

    policy.down = False
    _eventually(lambda: service.deciding.breaker.current_state == STATE_HALF_OPEN, "the circuit half-opened by a probe")
    assert service.answer(program.id, FRAME).fallback is False
    assert service.deciding.breaker.current_state == STATE_CLOSED and probe.wait_s == PROBE_S


def test_a_port_without_readiness_waits_for_the_reset_timeout(tmp_path, policy):
    """A policy port that cannot say whether it is ready is never half-opened by the probes."""
    zoo = Zoo()
    store = Store(tmp_path / "router.db")
    silent = RestartingPolicy()
    silent.ready = None  # type: ignore[method-assign,assignment]  # calling it raises: not ready
    service = RouterService(
        store,
        BackendCatalog(backends=zoo.specs),
        zoo.registry(),
        policy=silent,
        outbox=Outbox(store),
        breaker_failures=2,
        breaker_reset_s=30.0,
        breaker_probe_s=PROBE_S,
        outbox_retry_s=3600,
    )
    try:
        program = service.register(create("person_on_bike"))
        assert service.answer(program.id, FRAME).fallback is False and silent.asked == 1
        _open_circuit(service, silent, program.id)
        silent.down = False
        _eventually(lambda: service.deciding.breaker_probe.probes >= 3, "three probes of the policy's readiness")
        assert service.deciding.breaker.current_state == STATE_OPEN
        assert service.answer(program.id, FRAME).fallback is True and silent.asked == 3
    finally:
        service.close()
        store.close()
