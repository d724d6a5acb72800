"""Deciding a frame (``router.deciding``): what the policy is sent (no frame, a thumbnail or the
frame), the fallback and its reasons, the check of the policy's decision and the fallback run
instead of one that does not fit, through a fake policy that records what it was sent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fmprog.backends import BackendCatalog
from fmprog.contract import (
    CONTEXT_FEATURES,
    THUMBNAIL_SIDE,
    Feedback,
    FeedbackList,
    FeedbackListReply,
    PolicyDecision,
    PolicySpec,
    ReuseReply,
    ReuseRequest,
    SiteGate,
)
from fmprog.images import decode_image, encode_png, thumbnail
from fmprog.program import Executor, GateDecider
from router.answering import Answerer
from router.deciding import Deciding, FrameDecision, fallback_decision, teacher_decision
from router.errors import DecisionRejected
from router.metrics import RouterMetrics
from router.outbox import Outbox
from router.policy_client import PolicyRejected, PolicyUnavailable
from router.programs import ProgramRegistry, policy_spec
from router.schemas import BudgetState, ProgramPublic
from router.service import RouterService
from router.store import Store
from tests.fakes import Zoo, box
from tests.router.conftest import create, feedback_each

EXISTS, FIND, VERIFY = "exists@3:23", "find@5:25", "verify_property@9:18"
READS_NOTHING, READS_A_THUMBNAIL, READS_THE_FRAME = "random", "fast", "structured"


def _frame() -> np.ndarray:
    """An 80 x 100 frame whose every pixel differs from its neighbours (a thumbnail is not a crop)."""
    rows, cols = np.meshgrid(np.arange(80), np.arange(100), indexing="ij")
    return np.stack([rows * 3 % 256, cols * 2 % 256, (rows + cols) % 256], axis=-1).astype(np.uint8)


FRAME = _frame()
IMAGE = encode_png(FRAME)


class RecordingPolicy:
    """A policy that records what each decision request sent it (program, decision id, image) and
    decides the dearest candidate at every call site, or ``backends`` when set; ``failure``, when
    set, is raised instead of deciding."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes | None]] = []
        self.specs: dict[str, PolicySpec] = {}
        self.backends: dict[str, str] | None = None
        self.gates: dict[str, SiteGate] | None = None
        self.failure: Exception | None = None

    def ready(self) -> bool:
        return True

    def check(self, spec: PolicySpec) -> None:
        pass

    def register(self, program_id: str, spec: PolicySpec) -> None:
        self.specs[program_id] = spec

    def decide(self, program_id: str, decision_id: str, image: bytes | None) -> PolicyDecision:
        self.sent.append((program_id, decision_id, image))
        if self.failure is not None:
            raise self.failure
        spec = self.specs[program_id]
        backends = self.backends or {s.id: s.largest for s in spec.sites}
        return PolicyDecision(algorithm=spec.algorithm, backends=backends, gates=self.gates)

    def feedback(self, program_id: str, feedback: Feedback) -> None:
        pass

    def feedback_batch(self, program_id: str, batch: FeedbackList) -> FeedbackListReply:
        return feedback_each(self.feedback, program_id, batch)

    def delete(self, program_id: str) -> None:
        pass

    def reuse(self, program_id: str, request: ReuseRequest) -> ReuseReply:
        if self.failure is not None:
            raise self.failure
        return ReuseReply(reuse=False, propensity=1.0, p_change=1.0, reason="changed")


@pytest.fixture
def policy() -> RecordingPolicy:
    return RecordingPolicy()


@pytest.fixture
def registered(programs: ProgramRegistry, policy: RecordingPolicy):
    """Register ``person_on_bike`` under an algorithm, with the fake policy too."""

    def register(algorithm: str = READS_THE_FRAME, **fields: object) -> ProgramPublic:
        public = programs.register(create("person_on_bike", algorithm=algorithm, **fields))
        policy.register(public.id, policy_spec(public))
        return public

    return register


@pytest.fixture
def metrics() -> RouterMetrics:
    return RouterMetrics()


def _deciding(policy: RecordingPolicy | None, programs: ProgramRegistry, zoo: Zoo, metrics: RouterMetrics, **options):
    return Deciding(
        policy,
        metrics,
        available=zoo.registry(),
        check=Executor(zoo.registry()).check_decision,
        frame_inputs=programs.frame_input,
        breaker_probe_s=0,
        **options,
    )


@pytest.fixture
def deciding(policy, programs, zoo, metrics) -> Iterator[Deciding]:
    deciding = _deciding(policy, programs, zoo, metrics)
    yield deciding
    deciding.close()


def fallbacks(metrics: RouterMetrics, program_id: str, reason: str) -> float:
    value = metrics.registry.get_sample_value("fmprog_fallbacks_total", {"program": program_id, "reason": reason})
    return value or 0.0


def largest(public: ProgramPublic) -> dict[str, str]:
    return {site.id: max(site.candidates, key=lambda c: c.cost).name for site in public.call_sites}


# -- what the policy is sent ---------------------------------------------------------------------------


def test_a_policy_that_reads_no_pixels_is_asked_at_once_and_sent_no_frame(deciding, policy, registered):
    public = registered(READS_NOTHING)
    pending = deciding.ask(public, None, IMAGE)
    decision = pending.decision()  # the frame never decoded: the policy did not need it
    assert policy.sent == [(public.id, pending.decision_id, None)]
    assert not decision.fallback and decision.backends == largest(public)
    assert decision.policy is not None and decision.policy.backends == largest(public)


def test_a_policy_that_reads_the_frame_is_asked_at_once_with_the_bytes_received(deciding, policy, registered):
    public = registered(READS_THE_FRAME)
    pending = deciding.ask(public, None, IMAGE)
    decision = pending.decision()
    assert policy.sent == [(public.id, pending.decision_id, IMAGE)]
    assert not decision.fallback


def test_a_policy_that_reads_the_frame_gets_a_decoded_frame_as_jpeg(deciding, policy, registered):
    public = registered(READS_THE_FRAME)
    pending = deciding.ask(public, None)  # a stream's frame: decoded, no bytes received
    assert policy.sent == []
    pending.decoded(FRAME)
    pending.decision()
    ((_, _, image),) = policy.sent
    assert image is not None and image.startswith(b"\xff\xd8\xff")  # JPEG
    assert decode_image(image).shape == FRAME.shape


def test_a_policy_that_reads_a_thumbnail_is_sent_it_as_png_once_the_frame_is_decoded(deciding, policy, registered):
    public = registered(READS_A_THUMBNAIL)
    pending = deciding.ask(public, None, IMAGE)
    assert policy.sent == []  # nothing to send before the frame is decoded
    pending.decoded(FRAME)
    decision = pending.decision()
    assert not decision.fallback
    ((program_id, decision_id, image),) = policy.sent
    assert (program_id, decision_id) == (public.id, pending.decision_id)
    assert image == encode_png(thumbnail(FRAME, THUMBNAIL_SIDE))
    assert decode_image(image).shape == (THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)


@pytest.mark.parametrize(
    ("algorithm", "sent"),
    [
        (READS_NOTHING, lambda: None),
        (READS_A_THUMBNAIL, lambda: encode_png(thumbnail(FRAME, THUMBNAIL_SIDE))),
        (READS_THE_FRAME, lambda: IMAGE),
    ],
)
def test_the_service_sends_the_policy_what_the_programs_algorithm_reads(tmp_path, zoo, policy, algorithm, sent):
    zoo.set_boxes({"bicycle": [box(10, 10, 50, 50)], "person": [box(20, 5, 40, 45)]})
    store = Store(tmp_path / "router.db")
    service = RouterService(
        store, BackendCatalog(backends=zoo.specs), zoo.registry(), policy=policy, outbox=Outbox(store)
    )
    try:
        public = service.register(create("person_on_bike", algorithm=algorithm))
        result = service.answer(public.id, IMAGE)
        streamed = service.answer_frame(public.id, FRAME)  # a decoded frame: JPEG when the policy reads it whole
    finally:
        service.close()
        store.close()
    assert not result.fallback and result.decision == largest(public)
    assert policy.sent[0] == (public.id, result.decision_id, sent())
    assert policy.sent[1][:2] == (public.id, streamed.decision_id)
    if algorithm == READS_THE_FRAME:
        assert decode_image(policy.sent[1][2]).shape == FRAME.shape
    else:
        assert policy.sent[1][2] == sent()


# -- the fallback and its reasons ----------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["cheapest", "largest"])
def test_without_a_policy_the_fallback_decides_by_the_configured_rule(programs, zoo, metrics, rule):
    public = programs.register(create("person_on_bike"))
    deciding = _deciding(None, programs, zoo, metrics, fallback=rule)
    try:
        decision = deciding.ask(public, None, IMAGE).decision()
    finally:
        deciding.close()
    assert decision.fallback and decision.policy is None
    assert decision.backends == fallback_decision(public, rule)
    assert fallbacks(metrics, public.id, "no_policy") == 1


def test_a_spent_budget_gets_the_cheapest_backends_without_asking(policy, programs, zoo, metrics, registered):
    public = registered()
    deciding = _deciding(policy, programs, zoo, metrics, fallback="largest")
    now = datetime.now(UTC)
    spent = BudgetState(window_start=now, window_end=now + timedelta(hours=1), spent=10.0, remaining=0.0)
    try:
        decision = deciding.ask(public, spent, IMAGE).decision()
        left = BudgetState(window_start=now, window_end=now + timedelta(hours=1), spent=1.0, remaining=9.0)
        asked = deciding.ask(public, left, IMAGE).decision()
    finally:
        deciding.close()
    assert decision.fallback and decision.backends == fallback_decision(public, "cheapest")
    assert fallbacks(metrics, public.id, "budget_exhausted") == 1
    assert not asked.fallback and len(policy.sent) == 1  # only the frame within the budget asked it


@pytest.mark.parametrize(
    ("failure", "reason"),
    [(PolicyRejected("no such policy"), "policy_rejected"), (PolicyUnavailable("timed out"), "policy_unavailable")],
)
def test_a_policy_that_refuses_or_fails_gets_the_fallback_with_its_reason(
    deciding, policy, metrics, registered, failure, reason
):
    public = registered()
    policy.failure = failure
    decision = deciding.ask(public, None, IMAGE).decision()
    assert decision.fallback and decision.backends == fallback_decision(public)
    assert fallbacks(metrics, public.id, reason) == 1 and len(policy.sent) == 1


def test_an_open_circuit_skips_the_policy(policy, programs, zoo, metrics, registered):
    public = registered()
    deciding = _deciding(policy, programs, zoo, metrics, breaker_failures=1, breaker_reset_s=3600)
    policy.failure = PolicyUnavailable("down")
    try:
        decisions = [deciding.ask(public, None, IMAGE).decision() for _ in range(3)]
    finally:
        deciding.close()
    assert all(d.fallback for d in decisions)
    assert len(policy.sent) == 1  # the failure opened the circuit: the next frames did not ask
    assert fallbacks(metrics, public.id, "policy_unavailable") == 1
    assert fallbacks(metrics, public.id, "policy_open_circuit") == 2


def test_a_reuse_gate_that_cannot_be_asked_runs_the_frame(deciding, policy, metrics, registered):
    public = registered()
    request = ReuseRequest.model_validate({"camera": "door", "features": {"mean_diff": 0.0, "changed": 0.0, "age": 1}})
    assert deciding.reuse(public.id, request) is not None
    policy.failure = PolicyUnavailable("down")
    assert deciding.reuse(public.id, request) is None
    assert fallbacks(metrics, public.id, "reuse_unavailable") == 1


# -- checking the policy's decision, and running the fallback instead ------------------------------------


def _run(deciding: Deciding, answerer: Answerer, programs: ProgramRegistry, public: ProgramPublic, decision):
    ran: list[FrameDecision] = []
    _, program = programs.compiled(public.id)

    def attempt(decision: FrameDecision):
        ran.append(decision)
        return answerer.run(public, program, FRAME, decision)

    return deciding.run(public, program, decision, attempt), ran


def test_a_policy_decision_that_does_not_fit_is_replaced_by_the_fallback(
    deciding, policy, metrics, answerer, programs, registered
):
    public = registered(backends={"vqa": ["vqa-large"]})  # vqa-small is no candidate
    policy.backends = {EXISTS: "detect-small", FIND: "detect-small", VERIFY: "vqa-small"}
    decision = deciding.ask(public, None, IMAGE).decision()
    assert not decision.fallback  # checked when it runs, by the executor
    record, ran = _run(deciding, answerer, programs, public, decision)
    assert [d.fallback for d in ran] == [False, True]
    assert record.fallback and record.decision == fallback_decision(public)
    assert fallbacks(metrics, public.id, "policy_decision_rejected") == 1


def test_a_fallback_that_does_not_fit_is_refused(deciding, answerer, programs, registered):
    public = registered()
    rejected = deciding.fallback(public)
    rejected = FrameDecision({**rejected.backends, VERIFY: "llm-large"}, True, rejected.candidates, {})
    with pytest.raises(DecisionRejected, match="not a candidate"):
        _run(deciding, answerer, programs, public, rejected)


def _gate(*backends: str) -> SiteGate:
    return SiteGate(choice={name: [float(i)] * len(CONTEXT_FEATURES) for i, name in enumerate(backends)})


def test_gates_that_fit_run_under_a_gate_decider(deciding, policy, metrics, answerer, programs, registered):
    public = registered()
    policy.backends = {EXISTS: "detect-small", FIND: "detect-small", VERIFY: "vqa-small"}
    policy.gates = {VERIFY: _gate("vqa-small", "vqa-large")}
    decision = deciding.ask(public, None, IMAGE).decision()
    assert isinstance(decision.runner(), GateDecider) and decision.runner() is not decision.runner()
    record, ran = _run(deciding, answerer, programs, public, decision)
    assert [d.fallback for d in ran] == [False] and not record.fallback
    assert fallbacks(metrics, public.id, "policy_decision_rejected") == 0


def test_gates_that_do_not_fit_are_refused_before_the_run(deciding, policy, metrics, answerer, programs, registered):
    public = registered()
    policy.gates = {VERIFY: _gate("vqa-small", "llm-large")}  # llm-large is no candidate of a VQA site
    decision = deciding.ask(public, None, IMAGE).decision()
    record, ran = _run(deciding, answerer, programs, public, decision)
    assert [d.fallback for d in ran] == [True]  # the policy's decision never ran
    assert record.fallback
    assert fallbacks(metrics, public.id, "policy_decision_rejected") == 1


def test_the_teacher_runs_its_named_backends_else_the_dearest(deciding, programs):
    public = programs.register(create("person_on_bike", teacher={"fraction": 0.5, "backends": {"vqa": "vqa-small"}}))
    decision = deciding.teacher(public)
    assert decision.backends == {**largest(public), VERIFY: "vqa-small"} == teacher_decision(public)
    assert not decision.fallback and decision.policy is None
