"""The executor marks each call outside its backend's declared vocabulary
(``Invocation.out_of_vocabulary``), backend by backend, and leaves the mark out of the trace's
JSON when the call is inside it."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.backends import BackendRegistry, BackendSpec, Function
from fmprog.program import ExecutionLimits, Executor, compile_program
from fmprog.program.api import NUMBER_QUESTION
from fmprog.vision.vocabulary import VocabularySpec
from tests.fakes import FakeDetector, FakeVQA, box

QUESTIONS = ("what", "color", "is_a", "property", "choice", "exists", "count")
FORMS = "(what, color, is_a, property, choice, exists, count)"
FRAME = np.zeros((60, 80, 3), np.uint8)


class BrokenDetector:
    """A detector that always fails."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray, noun: str):
        self.calls += 1
        raise RuntimeError("detector down")


def registry(**models: object) -> BackendRegistry:
    """Backends with real vocabularies: detect-person (people only), detect-coco (COCO), detect-open
    (none declared) and vqa-real (COCO + ImageNet, every question form); fake models."""
    specs = [
        BackendSpec(name="detect-person", function=Function.detect, cost=1, vocabulary=VocabularySpec(nouns="person")),
        BackendSpec(name="detect-coco", function=Function.detect, cost=2, vocabulary=VocabularySpec(nouns="coco")),
        BackendSpec(name="detect-open", function=Function.detect, cost=3),
        BackendSpec(
            name="vqa-real",
            function=Function.vqa,
            cost=4,
            vocabulary=VocabularySpec(nouns="coco+imagenet", questions=QUESTIONS),
        ),
    ]
    boxes = {"car": [box(0, 0, 40, 30)], "person": [box(10, 10, 20, 40)], "octopus": [box(0, 0, 5, 5)]}
    defaults = {
        "detect-person": FakeDetector(boxes),
        "detect-coco": FakeDetector(boxes),
        "detect-open": FakeDetector(boxes),
        "vqa-real": FakeVQA(lambda image, question: "yes"),
    }
    return BackendRegistry.from_specs(specs, {**defaults, **models})


def execute(
    source: str,
    detect: str = "detect-coco",
    *,
    detect_alternates: tuple[str, ...] = (),
    models: dict[str, object] | None = None,
):
    """Run ``source`` with every detection site on ``detect`` (then ``detect_alternates``) and every
    VQA site on vqa-real."""
    program = compile_program(source)
    decision = {s.id: detect if s.function == Function.detect else "vqa-real" for s in program.call_sites}
    alternates = {s.id: list(detect_alternates) for s in program.call_sites if s.function == Function.detect}
    executor = Executor(registry(**(models or {})), ExecutionLimits(timeout_s=5))
    return executor.run(program, FRAME, decision, alternates)


FIND_CAR = """
def execute_command(image):
    return len(ImagePatch(image).find("car"))
"""


@pytest.mark.parametrize(
    ("backend", "mark"),
    [
        ("detect-person", "'car' names none of the person class"),
        ("detect-coco", None),
        ("detect-open", None),  # no vocabulary declared: nothing is checked
    ],
)
def test_a_detection_is_marked_when_its_backend_cannot_see_the_noun(backend, mark):
    trace = execute(FIND_CAR, backend)
    assert trace.error is None and trace.answer == 1  # it answered anyway, as well as it could
    [call] = trace.invocations
    assert (call.backend, call.out_of_vocabulary) == (backend, mark)
    dumped = call.model_dump()
    assert ("out_of_vocabulary" in dumped) is (mark is not None)
    if mark is not None:
        assert dumped["out_of_vocabulary"] == mark


def test_questions_are_marked_one_by_one():
    source = """
def execute_command(image):
    p = ImagePatch(image)
    a = p.query("What is this person doing?")
    b = p.query("What is this?")
    c = p.verify_property("car", "red")
    d = p.simple_query("Is this an octopus?")
    e = p.exists("3")
    return [a, b, c, d, e]
"""
    trace = execute(source)
    assert trace.error is None
    assert [(call.site, call.out_of_vocabulary) for call in trace.invocations] == [
        ("query@4:10", f"'What is this person doing?' is none of the question forms answered {FORMS}"),
        ("query@5:10", None),
        ("verify_property@6:10", None),
        ("simple_query@7:10", "'Is this an octopus?': 'octopus' names none of the 80 COCO and 1,000 ImageNet classes"),
        ("exists@8:10", f"{NUMBER_QUESTION!r} is none of the question forms answered {FORMS}"),
    ]
    assert ["out_of_vocabulary" in call.model_dump() for call in trace.invocations] == [True, False, False, True, True]


def test_a_computed_noun_is_marked_when_it_runs():
    source = """
def execute_command(image):
    p = ImagePatch(image)
    found = []
    for noun in ["person", "octopus", "red car"]:
        found.append(len(p.find(noun)))
    return found
"""
    trace = execute(source, "detect-coco")
    assert trace.answer == [1, 1, 0]
    assert [call.out_of_vocabulary for call in trace.invocations] == [
        None,
        "'octopus' names none of the 80 COCO classes",
        "'red car': finds car but cannot check 'red'",
    ]


def test_each_attempt_is_marked_for_the_backend_that_made_it():
    broken = BrokenDetector()
    trace = execute(FIND_CAR, "detect-coco", detect_alternates=("detect-person",), models={"detect-coco": broken})
    assert broken.calls == 1 and trace.error is None and trace.answer == 1
    assert [(c.backend, c.ok, c.fallback_from, c.out_of_vocabulary) for c in trace.invocations] == [
        ("detect-coco", False, None, None),  # it could see a car, but failed
        ("detect-person", True, "detect-coco", "'car' names none of the person class"),
    ]


def test_the_mark_survives_the_trace_as_json():
    trace = execute(FIND_CAR, "detect-person")
    dumped = trace.model_dump(mode="json")
    assert dumped["invocations"][0]["out_of_vocabulary"] == "'car' names none of the person class"
    inside = execute(FIND_CAR, "detect-coco").model_dump(mode="json")
    assert "out_of_vocabulary" not in inside["invocations"][0]
