"""``read_text()``: a routed call site of the ``ocr`` function, decided, charged and traced like
the others (fake text readers here; tests/engines/test_ocr.py and tests/services read real signs)."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.backends import BackendRegistry, BackendSpec, Function
from fmprog.program import Executor, InvalidDecision, compile_program
from fmprog.program.callsites import ROUTED_METHODS
from tests.fakes import COSTS, FakeDetector, FakeVQA, box

OCR_COSTS = {"ocr-small": 0.4, "ocr-large": 4.0}

READ_SIGN = """
def execute_command(image):
    patch = ImagePatch(image)
    signs = patch.find("sign")
    if not signs:
        return "none"
    text = signs[0].read_text()
    whole = patch.read_text()
    return text + "|" + whole
"""


class FakeReader:
    """Reads ``text`` when the image is exactly ``shape`` (a crop), ``whole`` otherwise."""

    def __init__(self, text: str, whole: str = ""):
        self.text, self.whole = text, whole
        self.shapes: list[tuple[int, ...]] = []

    def ocr(self, image: np.ndarray) -> str:
        self.shapes.append(image.shape)
        return self.text if image.shape[:2] == (20, 30) else self.whole


@pytest.fixture
def registry() -> tuple[BackendRegistry, dict[str, object]]:
    models: dict[str, object] = {
        "detect-small": FakeDetector({"sign": [box(10, 40, 40, 60)]}),
        "vqa-small": FakeVQA(),
        "ocr-small": FakeReader("STOP"),
        "ocr-large": FakeReader("STOP 42", whole="OPEN"),
    }
    costs = {**COSTS, **OCR_COSTS}
    specs = [BackendSpec(name=n, function=Function(n.split("-")[0]), cost=costs[n]) for n in models]
    return BackendRegistry.from_specs(specs, models), models


def test_read_text_is_a_call_site_of_the_ocr_function():
    program = compile_program(READ_SIGN)
    assert ROUTED_METHODS["read_text"] == Function.ocr
    assert [(s.id, s.function) for s in program.call_sites] == [
        ("find@4:18", Function.detect),
        ("read_text@7:20", Function.ocr),
        ("read_text@8:18", Function.ocr),
    ]
    assert program.functions == frozenset({Function.detect, Function.ocr})


def test_each_read_text_site_runs_its_decided_backend_on_its_patch_and_is_charged(registry):
    backends, models = registry
    program = compile_program(READ_SIGN)
    decision = {"find@4:18": "detect-small", "read_text@7:20": "ocr-large", "read_text@8:18": "ocr-small"}
    trace = Executor(backends).run(program, np.zeros((80, 100, 3), np.uint8), decision)
    assert trace.error is None
    assert trace.answer == "STOP 42|"
    assert models["ocr-large"].shapes == [(20, 30, 3)]  # the sign's pixels only
    assert models["ocr-small"].shapes == [(80, 100, 3)]
    assert [(i.site, i.function, i.backend, i.cost) for i in trace.invocations] == [
        ("find@4:18", Function.detect, "detect-small", COSTS["detect-small"]),
        ("read_text@7:20", Function.ocr, "ocr-large", 4.0),
        ("read_text@8:18", Function.ocr, "ocr-small", 0.4),
    ]
    assert trace.cost == pytest.approx(COSTS["detect-small"] + 4.4)
    assert trace.executed_sites == ["find@4:18", "read_text@7:20", "read_text@8:18"]


def test_a_read_text_site_needs_a_text_reader(registry):
    backends, _ = registry
    program = compile_program(READ_SIGN)
    decision = {"find@4:18": "detect-small", "read_text@7:20": "vqa-small", "read_text@8:18": "ocr-small"}
    with pytest.raises(InvalidDecision, match="read_text@7:20"):
        Executor(backends).run(program, np.zeros((80, 100, 3), np.uint8), decision)


def test_a_reader_that_answers_something_else_than_text_is_a_backend_error(registry):
    backends, models = registry
    models["ocr-large"].ocr = lambda image: ["STOP"]  # type: ignore[method-assign]
    program = compile_program("def execute_command(image):\n    return ImagePatch(image).read_text()\n")
    trace = Executor(backends).run(program, np.zeros((8, 8, 3), np.uint8), {"read_text@2:29": "ocr-large"})
    assert trace.error is not None and trace.error.kind == "backend_error"
    assert "returned list, not text" in trace.error.message
    assert [(i.backend, i.ok, i.cost) for i in trace.invocations] == [("ocr-large", False, 4.0)]


def test_read_text_taken_as_a_value_is_refused(registry):
    backends, _ = registry
    source = "def execute_command(image):\n    f = ImagePatch(image).read_text\n    return f()\n"
    trace = Executor(backends).run(compile_program(source), np.zeros((8, 8, 3), np.uint8), {})
    assert trace.error is not None and trace.error.kind == "sandbox_violation"
