"""Execution under a decision: exact costs, executed sites, decisions checked, failures traced."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmprog.backends import Detection
from fmprog.program import InvalidDecision, compile_program
from tests.fakes import COSTS, all_of, box

TWO_STAGE = """
def execute_command(image):
    p = ImagePatch(image)
    if not p.exists("bicycle"):
        return "no"
    riders = p.find("person")
    if not riders:
        return "no"
    return bool_to_yesno(riders[0].verify_property("person", "riding a bicycle"))
"""


@pytest.fixture
def two_stage():
    return compile_program(TWO_STAGE)


def mixed(program):
    """detect-small for detection sites, vqa-large for VQA sites."""
    return {s.id: "detect-small" if s.function.value == "detect" else "vqa-large" for s in program.call_sites}


def test_short_circuit_runs_and_charges_only_the_first_site(executor, zoo, frame, two_stage):
    trace = executor.run(two_stage, frame, mixed(two_stage))
    assert trace.answer == "no" and trace.error is None
    assert trace.executed_sites == ["exists@4:13"]
    assert trace.cost == COSTS["detect-small"]
    assert len(zoo.models["detect-small"].calls) == 1 and zoo.models["vqa-large"].calls == []


def test_full_path_charges_each_invocation_exactly_once(executor, zoo, frame, two_stage):
    zoo.set_boxes({"bicycle": [box(0, 0, 50, 50)], "person": [box(10, 0, 40, 40)]})
    trace = executor.run(two_stage, frame, mixed(two_stage))
    assert trace.answer == "yes"
    assert trace.executed_sites == ["exists@4:13", "find@6:15", "verify_property@9:35"]
    assert [(i.backend, i.cost) for i in trace.invocations] == [
        ("detect-small", COSTS["detect-small"]),
        ("detect-small", COSTS["detect-small"]),
        ("vqa-large", COSTS["vqa-large"]),
    ]
    assert trace.cost == 2 * COSTS["detect-small"] + COSTS["vqa-large"]
    assert len(zoo.models["detect-small"].calls) == 2 and len(zoo.models["vqa-large"].calls) == 1
    assert all(i.latency_s >= 0 and i.ok for i in trace.invocations)
    assert trace.latency_s >= sum(i.latency_s for i in trace.invocations)


def test_a_site_in_a_loop_is_charged_per_invocation(executor, zoo, frame):
    zoo.set_boxes({"cup": [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)]})
    source = """
def execute_command(image):
    return [c.query("What color?") for c in ImagePatch(image).find("cup")]
"""
    program = compile_program(source)
    trace = executor.run(program, frame, all_of(program, "large"))
    assert len(trace.answer) == 3
    assert trace.cost == COSTS["detect-large"] + 3 * COSTS["vqa-large"]
    assert trace.executed_sites == ["find@3:62", "query@3:14"]  # in order of first execution


def test_decision_must_cover_every_site_with_a_backend_of_its_function(executor, frame, two_stage):
    decision = mixed(two_stage)
    with pytest.raises(InvalidDecision, match="no backend for call site find@6:15"):
        executor.run(two_stage, frame, {k: v for k, v in decision.items() if k != "find@6:15"})
    with pytest.raises(InvalidDecision, match="unknown backend 'detect-huge'"):
        executor.run(two_stage, frame, {**decision, "find@6:15": "detect-huge"})
    with pytest.raises(InvalidDecision, match="serves vqa, but call site find@6:15 needs detect"):
        executor.run(two_stage, frame, {**decision, "find@6:15": "vqa-small"})
    with pytest.raises(InvalidDecision, match="does not have: query@1:1"):
        executor.run(two_stage, frame, {**decision, "query@1:1": "vqa-small"})


def test_candidates_restrict_the_decision(executor, frame, two_stage):
    decision = mixed(two_stage)
    allowed = {site_id: [name] for site_id, name in decision.items()}
    assert executor.run(two_stage, frame, decision, candidates=allowed).error is None
    narrowed = {**allowed, "find@6:15": ["detect-large"]}
    with pytest.raises(InvalidDecision, match="backend 'detect-small' is not a candidate for call site find@6:15"):
        executor.run(two_stage, frame, decision, candidates=narrowed)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 10), np.float32), "uint8"),
        (np.zeros((10, 10, 5), np.uint8), "H x W x 3"),
        (np.zeros((0, 10, 3), np.uint8), "at least one pixel"),
    ],
)
def test_bad_images_are_refused(executor, two_stage, image, message):
    with pytest.raises(ValueError, match=message):
        executor.run(two_stage, image, mixed(two_stage))


def test_grayscale_and_rgba_frames_are_normalised(executor, zoo, two_stage):
    for image in (np.zeros((20, 30), np.uint8), np.zeros((20, 30, 4), np.uint8)):
        executor.run(two_stage, image, mixed(two_stage))
    assert [shape for shape, _ in zoo.models["detect-small"].calls] == [(20, 30, 3), (20, 30, 3)]


def test_a_failing_backend_stops_the_run_and_is_still_charged(executor, zoo, frame, two_stage):
    def broken(image, noun):
        raise ConnectionError("replica unavailable")

    zoo.models["detect-small"].detect = broken
    trace = executor.run(two_stage, frame, mixed(two_stage))
    assert trace.error.kind == "backend_error"
    assert "detect-small" in trace.error.message and "replica unavailable" in trace.error.message
    assert trace.error.line == 4
    assert [(i.backend, i.ok) for i in trace.invocations] == [("detect-small", False)]
    assert trace.cost == COSTS["detect-small"]


def test_programs_cannot_catch_a_backend_failure(executor, zoo, frame):
    zoo.set_vqa(lambda image, question: 1 / 0)
    source = """
def execute_command(image):
    try:
        return ImagePatch(image).query("q")
    except Exception:
        return "swallowed"
"""
    program = compile_program(source)
    assert executor.run(program, frame, all_of(program, "small")).error.kind == "backend_error"


@pytest.mark.parametrize(
    "output",
    [[(1, 2, 3, 4)], [Detection((1.0, 2.0, math.nan, 4.0), 0.5)], "cat", None],
)
def test_malformed_detections_are_a_backend_error(executor, zoo, frame, two_stage, output):
    zoo.models["detect-small"].detect = lambda image, noun: output
    trace = executor.run(two_stage, frame, mixed(two_stage))
    assert trace.error.kind == "backend_error" and "malformed" in trace.error.message


def test_non_text_answers_are_a_backend_error(executor, zoo, frame):
    zoo.set_vqa(lambda image, question: 42)
    program = compile_program('def execute_command(image):\n    return ImagePatch(image).query("q")')
    trace = executor.run(program, frame, all_of(program, "small"))
    assert trace.error.kind == "backend_error" and "returned int, not text" in trace.error.message


def test_runtime_errors_carry_type_message_and_line(executor, frame):
    program = compile_program("def execute_command(image):\n    x = 1\n    return x / 0")
    trace = executor.run(program, frame, {})
    assert trace.error.kind == "runtime_error"
    assert trace.error.message == "ZeroDivisionError: division by zero" and trace.error.line == 3
    assert trace.answer is None and trace.invocations == []


def test_answers_become_json(executor, frame):
    source = """
def execute_command(image):
    return {"n": 1, "x": 0.5, "nan": math.nan, "ok": True, "patch": ImagePatch(image, 1, 2, 3, 4),
            "items": (1, "a"), "frame": image}
"""
    program = compile_program(source)
    assert executor.run(program, frame, {}).answer == {
        "n": 1, "x": 0.5, "nan": "nan", "ok": True, "patch": {"left": 1, "lower": 2, "right": 3, "upper": 4},
        "items": [1, "a"], "frame": "Frame(100x80)",
    }  # fmt: skip


def test_steps_are_counted(executor, frame):
    program = compile_program("def execute_command(image):\n    for i in range(10):\n        pass\n    return 1")
    assert executor.run(program, frame, {}).steps == 11  # one function entry, ten iterations


def test_a_failed_call_is_retried_then_answered_by_an_alternate(zoo, frame, two_stage):
    from fmprog.program import Executor

    calls = []

    def flaky(image, noun):
        calls.append(noun)
        raise TimeoutError("read timed out")

    zoo.models["detect-small"].detect = flaky
    executor = Executor(zoo.registry(), retries=1)
    trace = executor.run(two_stage, frame, mixed(two_stage), {"exists@4:13": ["detect-small", "detect-large"]})
    assert trace.error is None and trace.answer == "no"
    assert calls == ["bicycle", "bicycle"]  # the decided backend twice: the call and its one retry
    assert [(i.backend, i.attempt, i.ok, i.fallback_from) for i in trace.invocations] == [
        ("detect-small", 1, False, None),
        ("detect-small", 2, False, None),
        ("detect-large", 1, True, "detect-small"),
    ]
    assert "read timed out" in trace.invocations[0].error and trace.invocations[2].error is None
    assert trace.fallback_sites == ["exists@4:13"]
    assert trace.cost == 2 * COSTS["detect-small"] + COSTS["detect-large"]  # every attempt is charged


def test_a_retry_that_succeeds_needs_no_alternate(zoo, frame, two_stage):
    from fmprog.program import Executor

    outcomes = iter([ConnectionError("reset"), []])

    def once_broken(image, noun):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    zoo.models["detect-small"].detect = once_broken
    trace = Executor(zoo.registry(), retries=1).run(
        two_stage, frame, mixed(two_stage), {"exists@4:13": ["detect-large"]}
    )
    assert trace.error is None and trace.fallback_sites == []
    assert [(i.backend, i.attempt, i.ok) for i in trace.invocations] == [
        ("detect-small", 1, False),
        ("detect-small", 2, True),
    ]
    assert zoo.models["detect-large"].calls == []


def test_when_every_attempt_fails_the_run_stops_with_the_last_error(zoo, frame, two_stage):
    from fmprog.program import Executor

    zoo.models["detect-small"].detect = lambda image, noun: "not detections"
    zoo.models["detect-large"].detect = lambda image, noun: 1 / 0
    trace = Executor(zoo.registry(), retries=1).run(
        two_stage, frame, mixed(two_stage), {"exists@4:13": ["detect-large"]}
    )
    assert trace.error.kind == "backend_error"
    assert "'detect-large' failed at exists@4:13 (after 3 attempts): ZeroDivisionError" in trace.error.message
    assert [(i.backend, i.ok) for i in trace.invocations] == [
        ("detect-small", False),
        ("detect-small", False),
        ("detect-large", False),
    ]
    assert "malformed" in trace.invocations[0].error


def test_alternates_must_serve_the_sites_function(zoo, frame, two_stage):
    from fmprog.program import Executor

    executor = Executor(zoo.registry(), retries=1)
    with pytest.raises(InvalidDecision, match="alternate 'vqa-large' is not a detect backend"):
        executor.run(two_stage, frame, mixed(two_stage), {"exists@4:13": ["vqa-large"]})
    with pytest.raises(InvalidDecision, match="site the program does not have"):
        executor.run(two_stage, frame, mixed(two_stage), {"query@9:9": ["vqa-large"]})
