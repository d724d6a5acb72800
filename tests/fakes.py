"""Fake backends for unit tests, and small helpers to run programs against them.

The backend services test the same interface against real models."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fmprog.backends import BackendRegistry, BackendSpec, Detection, Function
from fmprog.program import Decider, Executor, InvocationContext, Program, compile_program

COSTS = {
    "detect-small": 172.0,
    "detect-large": 232.0,
    "vqa-small": 3750.0,
    "vqa-large": 73400.0,
    "llm-small": 8000.0,
    "llm-large": 70000.0,
}


class FakeDetector:
    """Returns the boxes configured per noun; records every call."""

    def __init__(self, boxes: dict[str, list[Detection]] | None = None):
        self.boxes = boxes or {}
        self.calls: list[tuple[tuple[int, ...], str]] = []

    def detect(self, image: np.ndarray, noun: str) -> list[Detection]:
        self.calls.append((image.shape, noun))
        return list(self.boxes.get(noun, []))


class FakeVQA:
    """Answers with ``answer(image, question)``; records every call."""

    def __init__(self, answer: Callable[[np.ndarray, str], str] | None = None):
        self.answer = answer or (lambda image, question: "yes")
        self.calls: list[tuple[tuple[int, ...], str]] = []

    def vqa(self, image: np.ndarray, question: str) -> str:
        self.calls.append((image.shape, question))
        return self.answer(image, question)


class FakeLLM:
    def __init__(self, answer: Callable[[str], str] | None = None):
        self.answer = answer or (lambda prompt: "Paris")
        self.prompts: list[str] = []

    def llm(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.answer(prompt)


class Zoo:
    """One fake model per backend name, small and large for every function."""

    def __init__(self):
        self.models = {
            "detect-small": FakeDetector(),
            "detect-large": FakeDetector(),
            "vqa-small": FakeVQA(),
            "vqa-large": FakeVQA(),
            "llm-small": FakeLLM(),
            "llm-large": FakeLLM(),
        }
        self.specs = [
            BackendSpec(name=name, function=Function(name.split("-")[0]), cost=cost) for name, cost in COSTS.items()
        ]

    def registry(self) -> BackendRegistry:
        return BackendRegistry.from_specs(self.specs, self.models)

    def set_boxes(self, boxes: dict[str, list[Detection]]) -> None:
        for name in ("detect-small", "detect-large"):
            self.models[name].boxes = boxes

    def set_vqa(self, answer: Callable[[np.ndarray, str], str]) -> None:
        for name in ("vqa-small", "vqa-large"):
            self.models[name].answer = answer

    def set_llm(self, answer: Callable[[str], str]) -> None:
        for name in ("llm-small", "llm-large"):
            self.models[name].answer = answer


def all_of(program: Program, size: str) -> dict[str, str]:
    """The decision that routes every call site to the ``size`` backend of its function."""
    return {site.id: f"{site.function.value}-{size}" for site in program.call_sites}


def run(executor: Executor, source: str, image: np.ndarray, size: str = "small"):
    program = compile_program(source)
    return executor.run(program, image, all_of(program, size))


def box(x0: float, y0: float, x1: float, y1: float, score: float = 0.9) -> Detection:
    return Detection((x0, y0, x1, y1), score)


class RecordingDecider(Decider):
    """Decides with ``choose(context)`` (default: the small backend of the site's function) and
    escalates with ``escalate_to(context, answer)`` (default: never); records what it was asked."""

    def __init__(
        self,
        choose: Callable[[InvocationContext], str] | None = None,
        escalate_to: Callable[[InvocationContext, str], str | None] | None = None,
    ):
        self.choose = choose or (lambda context: f"{context.function.value}-small")
        self.escalate_to = escalate_to or (lambda context, answer: None)
        self.contexts: list[InvocationContext] = []
        self.escalations: list[tuple[InvocationContext, str]] = []

    def decide(self, context: InvocationContext) -> str:
        self.contexts.append(context)
        return self.choose(context)

    def escalate(self, context: InvocationContext, answer: str) -> str | None:
        self.escalations.append((context, answer))
        return self.escalate_to(context, answer)


# A program with a detection that short-circuits and a VQA question on the first found patch: the
# shape the deciders' and the gates' tests decide over.
CANDIDATE = """
def execute_command(image):
    p = ImagePatch(image)
    cars = p.find("car")
    if not cars:
        return "no"
    return bool_to_yesno(cars[0].verify_property("car", "red"))
"""
