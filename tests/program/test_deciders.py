"""Deciding each call when it runs: contexts, checked choices, escalation, memoised detections."""

from __future__ import annotations

import pytest

from fmprog.backends import Function
from fmprog.program import (
    CascadeDecider,
    EarlierOutput,
    Executor,
    InvalidDecision,
    MemoHit,
    ProgramRejected,
    StaticDecider,
    compile_program,
)
from tests.fakes import CANDIDATE, COSTS, RecordingDecider, all_of, box

LEGACY_FIELDS = {"site", "function", "backend", "cost", "latency_s", "ok", "attempt", "fallback_from", "error"}


@pytest.fixture
def candidate():
    return compile_program(CANDIDATE)


def site(program, method):
    (found,) = [s.id for s in program.call_sites if s.method == method]
    return found


def answers(zoo, small: str, large: str) -> None:
    zoo.models["vqa-small"].answer = lambda image, question: small
    zoo.models["vqa-large"].answer = lambda image, question: large


def without_latency(trace):
    dump = trace.model_dump(exclude={"latency_s"})
    for invocation in dump["invocations"]:
        del invocation["latency_s"]
    return dump


# -- contexts -------------------------------------------------------------------------------------


def test_the_decider_sees_each_call_with_its_patch_and_the_earlier_outputs(executor, zoo, frame, candidate):
    zoo.set_boxes({"car": [box(60, 10, 90, 30, score=0.4), box(10, 0, 40, 40, score=0.8)]})
    decider = RecordingDecider()
    trace = executor.run(candidate, frame, decider)
    assert trace.error is None and trace.answer == "yes"
    find, verify = decider.contexts
    assert (find.site_id, find.function, find.method) == (site(candidate, "find"), Function.detect, "find")
    assert (find.index, find.site_calls, find.sites_left) == (0, 0, 2)
    assert (find.box, find.area, find.score, find.earlier) == ((0, 0, 100, 80), 1.0, None, ())
    assert (verify.site_id, verify.function, verify.method) == (
        site(candidate, "verify_property"),
        Function.vqa,
        "verify_property",
    )
    assert (verify.index, verify.site_calls, verify.sites_left) == (1, 0, 1)
    # the best box, in frame coordinates (lower/upper from the bottom of the 80-pixel frame)
    assert verify.box == (10, 40, 40, 80) and verify.area == pytest.approx(30 * 40 / (100 * 80))
    assert verify.score == 0.8
    assert verify.earlier == (
        EarlierOutput(site_id=find.site_id, function=Function.detect, backend="detect-small", boxes=2, top_score=0.8),
    )


def test_a_site_in_a_loop_counts_its_calls(executor, zoo, frame):
    zoo.set_boxes({"cup": [box(0, 0, 10, 10, 0.9), box(20, 0, 30, 10, 0.7), box(40, 0, 50, 10, 0.5)]})
    zoo.set_vqa(lambda image, question: "red")
    program = compile_program(
        'def execute_command(image):\n    return [c.query("Color?") for c in ImagePatch(image).find("cup")]'
    )
    decider = RecordingDecider()
    trace = executor.run(program, frame, decider)
    assert trace.answer == ["red", "red", "red"]
    queries = decider.contexts[1:]
    assert [(c.index, c.site_calls, c.sites_left, c.score) for c in queries] == [
        (1, 0, 1, 0.9),
        (2, 1, 0, 0.7),
        (3, 2, 0, 0.5),
    ]
    assert [e.answer for e in queries[2].earlier] == [None, "red", "red"]


def test_text_only_calls_have_no_patch(executor, zoo, frame):
    program = compile_program('def execute_command(image):\n    return llm_query("Capital of France?")')
    decider = RecordingDecider()
    assert executor.run(program, frame, decider).answer == "Paris"
    (context,) = decider.contexts
    assert (context.function, context.box, context.area, context.score) == (Function.llm, None, None, None)


def test_programs_cannot_read_the_detector_score():
    with pytest.raises(ProgramRejected, match="_score"):
        compile_program('def execute_command(image):\n    return ImagePatch(image).find("car")[0]._score')


# -- the trace ------------------------------------------------------------------------------------


def test_a_decision_fixed_up_front_traces_as_before(executor, zoo, frame, candidate):
    zoo.set_boxes({"car": [box(10, 0, 40, 40)]})
    trace = executor.run(candidate, frame, all_of(candidate, "small"))
    assert all(set(i.model_dump()) == LEGACY_FIELDS for i in trace.invocations)
    assert all(i.features is None and i.escalated_from is None for i in trace.invocations)
    static = executor.run(candidate, frame, StaticDecider(all_of(candidate, "small")))
    assert without_latency(static) == without_latency(trace)


def test_a_decider_run_records_features_with_each_invocation(executor, zoo, frame, candidate):
    zoo.set_boxes({"car": [box(10, 0, 40, 40, score=0.8)]})
    answers(zoo, "no", "yes")
    trace = executor.run(candidate, frame, RecordingDecider())
    detect, vqa = trace.invocations
    assert detect.features.model_dump() == {
        "call": 0,
        "site_calls": 0,
        "sites_left": 2,
        "box": (0, 0, 100, 80),
        "area": 1.0,
        "score": None,
        "boxes": 1,
        "top_score": 0.8,
        "answer": None,
    }
    assert (vqa.features.call, vqa.features.score, vqa.features.answer, vqa.features.boxes) == (1, 0.8, "no", None)
    assert set(vqa.model_dump()) == LEGACY_FIELDS | {"features"}  # escalated_from only when set


def test_long_answers_are_cut_in_contexts_and_features(executor, zoo, frame):
    zoo.set_vqa(lambda image, question: "x" * 1000)
    program = compile_program(
        'def execute_command(image):\n    p = ImagePatch(image)\n    return p.query("a") + p.query("b")'
    )
    decider = RecordingDecider()
    trace = executor.run(program, frame, decider)
    assert len(trace.answer) == 2000  # the program gets the whole answer
    assert len(decider.contexts[1].earlier[0].answer) == 200
    assert len(trace.invocations[0].features.answer) == 200


# -- checked choices ----------------------------------------------------------------------------------

EXISTS = """
def execute_command(image):
    try:
        return ImagePatch(image).exists("car")
    except Exception:
        return "swallowed"
"""


def _raise(context):
    raise KeyError("no sub-policy")


@pytest.mark.parametrize(
    ("choose", "candidates", "message"),
    [
        (lambda c: "detect-huge", None, "unknown backend 'detect-huge' for call site exists@4:33"),
        (lambda c: "vqa-small", None, "backend 'vqa-small' serves vqa, but call site exists@4:33 needs detect"),
        (lambda c: "detect-small", {"exists@4:33": ["detect-large"]}, "'detect-small' is not a candidate"),
        (_raise, None, "the decider failed to decide at exists@4:33: KeyError"),
        (lambda c: 3, None, "the decider answered int for exists@4:33, not a backend name"),
    ],
)
def test_a_bad_choice_stops_the_run_before_any_invocation(executor, zoo, frame, choose, candidates, message):
    program = compile_program(EXISTS)
    trace = executor.run(program, frame, RecordingDecider(choose), candidates=candidates)
    assert trace.error.kind == "invalid_decision" and message in trace.error.message
    assert trace.error.line == 4 and trace.answer is None  # the program could not swallow it
    assert trace.invocations == [] and trace.executed_sites == [] and trace.cost == 0
    assert zoo.models["detect-small"].calls == []


def test_a_candidate_choice_runs(executor, frame):
    program = compile_program(EXISTS)
    trace = executor.run(
        program, frame, RecordingDecider(lambda c: "detect-large"), candidates={"exists@4:33": ["detect-large"]}
    )
    assert trace.error is None and [i.backend for i in trace.invocations] == ["detect-large"]


def test_a_fixed_decision_is_still_checked_up_front(executor, frame, candidate):
    with pytest.raises(InvalidDecision, match="no backend for call site"):
        executor.run(candidate, frame, StaticDecider({}))


def test_a_decided_call_retries_and_falls_back_as_a_fixed_one_does(zoo, frame, candidate):
    zoo.set_boxes({"car": [box(10, 0, 40, 40, score=0.8)]})

    def broken(image, noun):
        raise ConnectionError("replica unavailable")

    zoo.models["detect-small"].detect = broken
    find = site(candidate, "find")
    trace = Executor(zoo.registry(), retries=1).run(candidate, frame, RecordingDecider(), {find: ["detect-large"]})
    assert trace.error is None and trace.answer == "yes"
    assert [(i.backend, i.attempt, i.ok, i.fallback_from) for i in trace.invocations[:3]] == [
        ("detect-small", 1, False, None),
        ("detect-small", 2, False, None),
        ("detect-large", 1, True, "detect-small"),
    ]
    assert [i.features.boxes for i in trace.invocations[:3]] == [None, None, 1]
    assert trace.cost == 2 * COSTS["detect-small"] + COSTS["detect-large"] + COSTS["vqa-small"]


# -- escalation ---------------------------------------------------------------------------------------


@pytest.fixture
def cascade(zoo):
    return CascadeDecider.for_backends(zoo.registry())


def test_the_cascade_re_asks_the_largest_vqa_when_the_small_one_says_no_on_a_candidate(
    executor, zoo, frame, candidate, cascade
):
    zoo.set_boxes({"car": [box(10, 0, 40, 40, score=0.8)]})
    answers(zoo, "No, it is blue.", "yes")
    trace = executor.run(candidate, frame, cascade)
    assert trace.error is None and trace.answer == "yes"  # the program got the escalated answer
    assert [(i.backend, i.escalated_from) for i in trace.invocations] == [
        ("detect-large", None),
        ("vqa-small", None),
        ("vqa-large", "vqa-small"),
    ]
    assert trace.invocations[1].features.answer == "No, it is blue."  # the first answer stays in the trace
    assert trace.invocations[2].features.answer == "yes"
    assert trace.cost == COSTS["detect-large"] + COSTS["vqa-small"] + COSTS["vqa-large"]
    assert trace.executed_sites == [site(candidate, "find"), site(candidate, "verify_property")]


@pytest.mark.parametrize(("small", "escalated"), [("yes", False), ("none of it", False), ("no", True)])
def test_the_cascade_keeps_any_answer_but_no(executor, zoo, frame, candidate, cascade, small, escalated):
    zoo.set_boxes({"car": [box(10, 0, 40, 40, score=0.8)]})
    answers(zoo, small, "yes")
    trace = executor.run(candidate, frame, cascade)
    assert len(zoo.models["vqa-large"].calls) == int(escalated)
    assert trace.cost == COSTS["detect-large"] + COSTS["vqa-small"] + escalated * COSTS["vqa-large"]


def test_the_cascade_does_not_escalate_about_a_patch_no_detector_found(executor, zoo, frame, cascade):
    answers(zoo, "no", "yes")
    program = compile_program('def execute_command(image):\n    return ImagePatch(image).query("Is it raining?")')
    trace = executor.run(program, frame, cascade)
    assert trace.answer == "no" and [i.backend for i in trace.invocations] == ["vqa-small"]


def test_the_cascade_reads_costs_and_candidates(zoo):
    registry = zoo.registry()
    cascade = CascadeDecider.for_backends(registry)
    assert cascade.choice == {Function.detect: "detect-large", Function.vqa: "vqa-small", Function.llm: "llm-small"}
    assert cascade.escalation == {Function.vqa: "vqa-large"}
    narrowed = CascadeDecider.for_backends(registry, {"detect-small", "vqa-large", "llm-small", "llm-large"})
    assert narrowed.choice == {Function.detect: "detect-small", Function.vqa: "vqa-large", Function.llm: "llm-small"}
    assert narrowed.escalation == {}  # one VQA backend: nothing dearer to ask


def test_an_llm_answer_can_be_escalated(executor, zoo, frame):
    zoo.models["llm-small"].answer = lambda prompt: "unsure"
    zoo.models["llm-large"].answer = lambda prompt: "Paris"
    program = compile_program('def execute_command(image):\n    return llm_query("Capital of France?")')
    decider = RecordingDecider(escalate_to=lambda c, answer: "llm-large" if answer == "unsure" else None)
    trace = executor.run(program, frame, decider)
    assert trace.answer == "Paris"
    assert [(i.backend, i.escalated_from, i.features.answer) for i in trace.invocations] == [
        ("llm-small", None, "unsure"),
        ("llm-large", "llm-small", "Paris"),
    ]
    assert [(c.site_id, answer) for c, answer in decider.escalations] == [("llm_query@2:11", "unsure")]


def test_detections_are_never_offered_for_escalation(executor, zoo, frame, candidate):
    zoo.set_boxes({"car": [box(10, 0, 40, 40)]})
    decider = RecordingDecider(escalate_to=lambda c, answer: "vqa-large")
    trace = executor.run(candidate, frame, decider)
    assert [c.function for c, _ in decider.escalations] == [Function.vqa]
    assert [i.backend for i in trace.invocations] == ["detect-small", "vqa-small", "vqa-large"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("vqa-small", "escalated verify_property@7:33 to 'vqa-small', which already answered"),
        ("llm-large", "backend 'llm-large' serves llm, but call site verify_property@7:33 needs vqa"),
    ],
)
def test_a_bad_escalation_stops_the_run_after_the_first_answer_was_charged(
    executor, zoo, frame, candidate, target, message
):
    zoo.set_boxes({"car": [box(10, 0, 40, 40)]})
    trace = executor.run(candidate, frame, RecordingDecider(escalate_to=lambda c, answer: target))
    assert trace.error.kind == "invalid_decision" and message in trace.error.message
    assert [i.backend for i in trace.invocations] == ["detect-small", "vqa-small"]
    assert trace.cost == COSTS["detect-small"] + COSTS["vqa-small"]


# -- memoised detections ----------------------------------------------------------------------------

EXISTS_THEN_FIND = """
def execute_command(image):
    p = ImagePatch(image)
    if not p.exists("car"):
        return 0
    return len(p.find("car"))
"""


def test_the_same_detection_twice_runs_once(executor, zoo, frame):
    zoo.set_boxes({"car": [box(10, 0, 40, 40), box(50, 0, 60, 10)]})
    program = compile_program(EXISTS_THEN_FIND)
    trace = executor.run(program, frame, all_of(program, "small"))
    assert trace.answer == 2
    assert len(zoo.models["detect-small"].calls) == 1
    assert [i.site for i in trace.invocations] == ["exists@4:13"]
    assert trace.memo_hits == [MemoHit(site_id="find@6:17", backend="detect-small", call=1)]
    assert trace.executed_sites == ["exists@4:13", "find@6:17"]  # the second site ran, at no cost
    assert trace.cost == COSTS["detect-small"]


def test_a_decider_is_still_asked_for_a_memoised_call(executor, zoo, frame):
    zoo.set_boxes({"car": [box(10, 0, 40, 40)]})
    program = compile_program(EXISTS_THEN_FIND)
    decider = RecordingDecider()
    trace = executor.run(program, frame, decider)
    assert [c.index for c in decider.contexts] == [0, 1]
    assert len(trace.invocations) == 1 and len(trace.memo_hits) == 1


def test_another_backend_noun_or_box_runs_again(executor, zoo, frame):
    zoo.set_boxes({"car": [box(10, 0, 40, 40)], "truck": [box(0, 0, 5, 5)]})
    program = compile_program(EXISTS_THEN_FIND)
    trace = executor.run(program, frame, {"exists@4:13": "detect-small", "find@6:17": "detect-large"})
    assert [i.backend for i in trace.invocations] == ["detect-small", "detect-large"] and trace.memo_hits == []
    zoo.models["detect-small"].calls.clear()
    source = """
def execute_command(image):
    p = ImagePatch(image)
    cars = p.find("car")
    return [p.exists("truck"), cars[0].exists("car")]
"""
    program = compile_program(source)
    trace = executor.run(program, frame, all_of(program, "small"))
    assert [noun for _, noun in zoo.models["detect-small"].calls] == ["car", "truck", "car"]
    assert trace.memo_hits == [] and len(trace.invocations) == 3


def test_memory_lasts_one_run(executor, zoo, frame):
    program = compile_program(EXISTS_THEN_FIND)
    zoo.set_boxes({"car": [box(10, 0, 40, 40)]})
    executor.run(program, frame, all_of(program, "small"))
    executor.run(program, frame, all_of(program, "small"))
    assert len(zoo.models["detect-small"].calls) == 2


def test_patches_of_a_cropped_image_are_placed_in_the_runs_frame(executor, zoo, frame):
    source = """
def execute_command(image):
    p = ImagePatch(image)
    inner = ImagePatch(p.crop(10, 20, 50, 60).cropped_image)
    corner = ImagePatch(image, 0, 0, 40, 40)
    same = ImagePatch(image, 10, 20, 50, 60)
    return [inner.exists("car"), corner.exists("car"), same.exists("car")]
"""
    program = compile_program(source)
    decider = RecordingDecider()
    trace = executor.run(program, frame, decider)
    assert trace.error is None
    assert [(c.box, c.area) for c in decider.contexts] == [
        ((10, 20, 50, 60), 0.2),
        ((0, 0, 40, 40), 0.2),
        ((10, 20, 50, 60), 0.2),
    ]
    # the crop's box (0, 0, 40, 40) in its own frame is not the frame's corner; the last patch has
    # the crop's pixels, so its detection is remembered
    assert [shape for shape, _ in zoo.models["detect-small"].calls] == [(40, 40, 3), (40, 40, 3)]
    assert [hit.call for hit in trace.memo_hits] == [2]


def test_memoising_can_be_turned_off(zoo, frame):
    program = compile_program(EXISTS_THEN_FIND)
    zoo.set_boxes({"car": [box(10, 0, 40, 40)]})
    trace = Executor(zoo.registry(), memoise=False).run(program, frame, all_of(program, "small"))
    assert len(zoo.models["detect-small"].calls) == 2 and len(trace.invocations) == 2 and trace.memo_hits == []
    assert trace.cost == 2 * COSTS["detect-small"]
