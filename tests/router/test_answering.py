from __future__ import annotations

import numpy as np
import pytest

from fmprog.program import ExecutionLimits
from router.answering import Answerer
from router.deciding import alternates, fallback_decision, frame_decision
from router.errors import DecisionRejected, FrameRejected, NotFound
from router.programs import ProgramRegistry
from router.store import Store
from tests.fakes import COSTS, Zoo, box
from tests.router.conftest import create

EXISTS, FIND, VERIFY = "exists@3:23", "find@5:25", "verify_property@9:18"


@pytest.fixture
def person_on_bike(programs: ProgramRegistry) -> str:
    public = programs.register(create("person_on_bike"))
    assert [s.id for s in public.call_sites] == [EXISTS, FIND, VERIFY]
    return public.id


def test_an_answer_records_its_decision_and_trace(
    answerer: Answerer, store: Store, zoo: Zoo, frame: np.ndarray, person_on_bike: str
):
    zoo.set_boxes({"bicycle": [box(10, 10, 50, 50)], "person": [box(20, 5, 40, 45)]})
    decision = {EXISTS: "detect-small", FIND: "detect-large", VERIFY: "vqa-large"}
    result = answerer.answer(person_on_bike, frame, decision, frame_id="frame-7")

    assert result.answer == "yes" and result.error is None and not result.fallback
    assert [(i.site, i.backend, i.cost, i.ok) for i in result.trace] == [
        (EXISTS, "detect-small", COSTS["detect-small"], True),
        (FIND, "detect-large", COSTS["detect-large"], True),
        (VERIFY, "vqa-large", COSTS["vqa-large"], True),
    ]
    assert result.cost == sum(i.cost for i in result.trace)
    assert result.latency_s >= sum(i.latency_s for i in result.trace)
    assert len(zoo.models["vqa-large"].calls) == 1 and zoo.models["vqa-small"].calls == []

    stored = store.get_frame(result.decision_id)
    assert stored.status == "answered" and stored.frame_id == "frame-7" and stored.kind == "binary"
    assert stored.decision == decision and stored.answer == "yes" and stored.trace == result.trace
    assert stored.executed_sites == [EXISTS, FIND, VERIFY]
    assert stored.site_costs == {EXISTS: COSTS["detect-small"], FIND: COSTS["detect-large"], VERIFY: COSTS["vqa-large"]}


def test_short_circuited_sites_are_not_executed_or_charged(
    answerer: Answerer, store: Store, frame: np.ndarray, person_on_bike: str
):
    decision = {EXISTS: "detect-large", FIND: "detect-large", VERIFY: "vqa-large"}
    result = answerer.answer(person_on_bike, frame, decision)
    assert result.answer == "no"
    assert store.get_frame(result.decision_id).site_costs == {EXISTS: COSTS["detect-large"]}


def test_every_answer_gets_its_own_decision_id(answerer: Answerer, frame: np.ndarray, person_on_bike: str):
    ids = {answerer.answer(person_on_bike, frame, None).decision_id for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize(("rule", "size"), [("cheapest", "small"), ("largest", "large")])
def test_a_fallback_decision_is_run_and_marked(
    programs: ProgramRegistry,
    answerer: Answerer,
    zoo: Zoo,
    frame: np.ndarray,
    person_on_bike: str,
    rule: str,
    size: str,
):
    zoo.set_boxes({"bicycle": [box(10, 10, 50, 50)], "person": [box(20, 5, 40, 45)]})
    public, program = programs.compiled(person_on_bike)
    decision = frame_decision(public, fallback_decision(public, rule), zoo.registry(), fallback=True)  # type: ignore[arg-type]
    result = answerer.record(answerer.run(public, program, frame, decision))
    assert result.fallback
    assert result.decision == {EXISTS: f"detect-{size}", FIND: f"detect-{size}", VERIFY: f"vqa-{size}"}
    assert {i.backend for i in result.trace} == {f"detect-{size}", f"vqa-{size}"}
    assert programs.store.get_frame(result.decision_id).fallback


def test_the_fallback_keeps_to_the_allowed_backends(programs: ProgramRegistry):
    public = programs.register(create("person_on_bike", backends={"vqa": ["vqa-large"]}))
    assert fallback_decision(public, "cheapest")[VERIFY] == "vqa-large"


@pytest.mark.parametrize(
    ("decision", "message"),
    [
        ({EXISTS: "detect-small", FIND: "detect-small"}, "no backend for call site verify_property"),
        ({EXISTS: "detect-small", FIND: "detect-small", VERIFY: "vqa-small"}, "not a candidate"),
        ({EXISTS: "detect-small", FIND: "detect-small", VERIFY: "vqa-large", "query@1:1": "vqa-large"}, "query@1:1"),
    ],
)
def test_a_decision_that_does_not_fit_is_rejected_and_not_recorded(
    programs: ProgramRegistry, answerer: Answerer, store: Store, frame: np.ndarray, decision: dict, message: str
):
    public = programs.register(create("person_on_bike", backends={"vqa": ["vqa-large"]}))
    with pytest.raises(DecisionRejected, match=message):
        answerer.answer(public.id, frame, decision)
    assert store.list_frames() == []


def test_a_candidate_the_backends_do_not_serve_is_rejected(
    programs: ProgramRegistry, zoo: Zoo, frame: np.ndarray, person_on_bike: str
):
    from fmprog.backends import BackendRegistry

    registry = zoo.registry()
    without_vqa_large = BackendRegistry([registry[name] for name in registry if name != "vqa-large"])
    answerer = Answerer(programs, without_vqa_large)
    with pytest.raises(DecisionRejected, match="unknown backend 'vqa-large'"):
        answerer.answer(person_on_bike, frame, {EXISTS: "detect-small", FIND: "detect-small", VERIFY: "vqa-large"})


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.float32), np.zeros((0, 8, 3), np.uint8), np.zeros((4, 4, 5))])
def test_a_frame_that_is_not_an_image_is_rejected(answerer: Answerer, person_on_bike: str, bad: np.ndarray):
    with pytest.raises(FrameRejected):
        answerer.answer(person_on_bike, bad, None)


def test_a_program_that_stops_is_answered_with_its_error_and_recorded(
    programs: ProgramRegistry, zoo: Zoo, store: Store, frame: np.ndarray, person_on_bike: str
):
    def broken(image: np.ndarray, question: str) -> str:
        raise RuntimeError("GPU on fire")

    zoo.set_boxes({"bicycle": [box(10, 10, 50, 50)], "person": [box(20, 5, 40, 45)]})
    zoo.set_vqa(broken)
    answerer = Answerer(programs, zoo.registry(), limits=ExecutionLimits(timeout_s=5))
    result = answerer.answer(person_on_bike, frame, None)
    assert result.answer is None
    assert result.error is not None and result.error.kind == "backend_error" and "GPU on fire" in result.error.message
    # the decided vqa backend (the fallback rule's cheapest) failed, its retry too, then the other vqa candidate
    assert [(i.backend, i.ok, i.attempt, i.fallback_from) for i in result.trace[2:]] == [
        ("vqa-small", False, 1, None),
        ("vqa-small", False, 2, None),
        ("vqa-large", False, 1, "vqa-small"),
    ]
    assert [i.ok for i in result.trace[:2]] == [True, True]
    assert "after 3 attempts" in result.error.message
    assert store.get_frame(result.decision_id).error == result.error


def test_a_failing_backend_is_retried_then_replaced_by_the_nearest_in_cost(
    programs: ProgramRegistry, zoo: Zoo, store: Store, frame: np.ndarray, person_on_bike: str
):
    def broken(image: np.ndarray, question: str) -> str:
        raise TimeoutError("read timed out")

    zoo.set_boxes({"bicycle": [box(10, 10, 50, 50)], "person": [box(20, 5, 40, 45)]})
    zoo.set_vqa(lambda image, question: "yes")
    zoo.models["vqa-large"].answer = broken
    answerer = Answerer(programs, zoo.registry(), retries=1)
    result = answerer.answer(person_on_bike, frame, {EXISTS: "detect-small", FIND: "detect-small", VERIFY: "vqa-large"})
    assert result.answer == "yes" and result.error is None
    assert result.decision[VERIFY] == "vqa-large"  # the decision stays what the policy chose
    assert [(i.backend, i.ok, i.attempt, i.fallback_from) for i in result.trace[2:]] == [
        ("vqa-large", False, 1, None),
        ("vqa-large", False, 2, None),
        ("vqa-small", True, 1, "vqa-large"),
    ]
    assert "read timed out" in result.trace[2].error
    assert result.cost == 2 * COSTS["detect-small"] + 2 * COSTS["vqa-large"] + COSTS["vqa-small"]
    assert store.get_frame(result.decision_id).trace == result.trace


def test_alternates_are_the_available_candidates_nearest_in_cost_first(programs: ProgramRegistry, person_on_bike: str):

    program = programs.get(person_on_bike)
    decision = {EXISTS: "detect-large", FIND: "detect-small", VERIFY: "vqa-large"}
    order = alternates(program, decision, {"detect-small", "detect-large", "vqa-small", "vqa-large"})
    assert order == {EXISTS: ["detect-small"], FIND: ["detect-large"], VERIFY: ["vqa-small"]}
    assert alternates(program, decision, {"detect-large", "vqa-large"})[FIND] == ["detect-large"]
    assert alternates(program, decision, {"detect-large", "vqa-large"})[VERIFY] == []


def test_answering_an_unknown_or_deleted_program_is_not_found(
    answerer: Answerer, programs: ProgramRegistry, frame: np.ndarray, person_on_bike: str
):
    programs.delete(person_on_bike)
    with pytest.raises(NotFound):
        answerer.answer(person_on_bike, frame, None)
