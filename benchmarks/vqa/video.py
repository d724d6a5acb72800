"""The real-video track: queries about a fixed camera's pedestrians (OpenCV's ``vtest.avi``), their
ground truth from a reference configuration, and a hand-verified sample.

Ground truth follows NoScope's protocol (Kang et al., VLDB 2017): a query's label on a frame is what
its program answers with the dearest backend at every call site (``reference_labels``: YOLOv3-tiny at
608 px, EfficientNet-Lite2 VQA). A policy is scored by its agreement with that reference, not with
the world. How far the reference is from the world is measured on a sample of frames whose people
were marked by eye (``verified.json``: every person's box and the colour of their upper clothes):
each query's program is run on that sample with the marked people as its detections
(``hand_answers``) and compared with the reference.

The queries use what the real-image models can see: people (counts, where they are in the frame,
how close they are to each other and to the parked vehicles) and the colours of their clothes.
Their thresholds were set so that no query's reference answer is nearly constant over the video.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from fmprog.backends.base import Backend, BackendRegistry, Detection, FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.program import Executor, Program, compile_program
from fmprog.program.scope import usable_backends
from fmprog.vision.questions import UNKNOWN_ANSWER, parse_question
from fmprog.vision.vocabulary import VocabularySpec, vocabulary

VIDEO = "vtest.avi"
TRACK_NAME = "video"


@dataclass(frozen=True)
class VideoQuery:
    """One query of the video track: its type, text and program."""

    type: str
    query: str
    program: str


_PEOPLE = """def execute_command(image):
    image_patch = ImagePatch(image)
    people = image_patch.find("person")
"""


def people_query(type_: str, query: str, body: str, **values: object) -> VideoQuery:
    """A query over the people found in the frame: its program finds them, then runs ``body``
    (``$name`` placeholders filled from ``values``)."""
    text = Template(body).substitute({k: str(v) for k, v in values.items()})
    return VideoQuery(type_, query, _PEOPLE + text)


VIDEO_QUERIES: tuple[VideoQuery, ...] = (
    people_query("numerical", "Are there more than 5 people?", "    return bool_to_yesno(len(people) > $n)\n", n=5),
    people_query("numerical", "Are there more than 7 people?", "    return bool_to_yesno(len(people) > $n)\n", n=7),
    people_query("numerical", "How many people are there?", "    return str(len(people))\n"),
    people_query(
        "numerical",
        "How many people are in the left half of the frame?",
        "    return str(len([p for p in people if p.horizontal_center < image_patch.width / 2]))\n",
    ),
    people_query(
        "spatial",
        "Is anyone in the left third of the frame?",
        "    for person in people:\n"
        "        if person.horizontal_center < image_patch.width / 3:\n"
        '            return "yes"\n'
        '    return "no"\n',
    ),
    people_query(
        "spatial",
        "Are there at least 2 people in the left third of the frame?",
        "    left = [p for p in people if p.horizontal_center < image_patch.width / 3]\n"
        "    return bool_to_yesno(len(left) >= 2)\n",
    ),
    people_query(
        "spatial",
        "Is anyone in the bottom half of the frame?",
        "    for person in people:\n"
        "        if person.vertical_center < image_patch.height / 2:\n"
        '            return "yes"\n'
        '    return "no"\n',
    ),
    people_query(
        "spatial",
        "Is anyone in the top third of the frame?",
        "    for person in people:\n"
        "        if person.vertical_center > image_patch.height * 2 / 3:\n"
        '            return "yes"\n'
        '    return "no"\n',
    ),
    people_query(
        "spatial",
        "Is there a person in the left third and another in the right third of the frame?",
        "    left = [p for p in people if p.horizontal_center < image_patch.width / 3]\n"
        "    right = [p for p in people if p.horizontal_center > image_patch.width * 2 / 3]\n"
        "    return bool_to_yesno(len(left) > 0 and len(right) > 0)\n",
    ),
    people_query(
        "relation",
        "Are two people within 10 pixels of each other?",
        "    for i in range(len(people)):\n"
        "        for j in range(i + 1, len(people)):\n"
        "            if distance(people[i], people[j]) < 10:\n"
        '                return "yes"\n'
        '    return "no"\n',
    ),
    people_query(
        "relation",
        "Is someone walking beside another person?",
        "    for a in people:\n"
        "        for b in people:\n"
        "            gap = b.horizontal_center - a.horizontal_center\n"
        "            if 0 < gap < 60 and abs(a.vertical_center - b.vertical_center) < 15:\n"
        '                return "yes"\n'
        '    return "no"\n',
    ),
    people_query(
        "relation",
        "Is anyone within 40 pixels of a parked vehicle?",
        '    vehicles = image_patch.find("vehicle")\n'
        "    for person in people:\n"
        "        for vehicle in vehicles:\n"
        "            if distance(person, vehicle) < 40:\n"
        '                return "yes"\n'
        '    return "no"\n',
    ),
    people_query(
        "color",
        "Is anyone wearing red?",
        "    for person in people:\n"
        '        if person.verify_property("person", "red"):\n'
        '            return "yes"\n'
        '    return "no"\n',
    ),
    people_query(
        "color",
        "What color is the leftmost person wearing?",
        "    if len(people) == 0:\n"
        '        return "N/A"\n'
        "    people.sort(key=lambda p: p.horizontal_center)\n"
        '    return people[0].query("What color is this?")\n',
    ),
)


def reference_labels(
    queries: Sequence[VideoQuery], frames: Sequence[np.ndarray], backends: BackendRegistry
) -> list[list[str]]:
    """Per query, what its program answers on each frame with the dearest backend of each call
    site (the reference configuration)."""
    executor = Executor(backends)
    labels = []
    for query in queries:
        program = compile_program(query.program)
        decision = {  # of the backends that can see what a site asks, as the router offers them
            site.id: max(usable_backends(site, [b.spec for b in backends.for_function(site.function)]), key=_cost).name
            for site in program.call_sites
        }
        labels.append([_answer(executor, program, frame, decision) for frame in frames])
    return labels


def _cost(spec: BackendSpec) -> float:
    return spec.cost


def _answer(executor: Executor, program: Program, frame: np.ndarray, decision: Mapping[str, str]) -> str:
    trace = executor.run(program, frame, decision)
    if trace.error is not None:
        raise RuntimeError(f"the reference run failed: {trace.error.kind}: {trace.error.message}")
    return "" if trace.answer is None else str(trace.answer)


# -- the hand-verified sample -------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkedPerson:
    """A person marked by eye: box (pixels, y down) and the colour of their upper clothes (or
    ``unsure``)."""

    box: tuple[float, float, float, float]
    upper: str


@dataclass(frozen=True)
class MarkedFrame:
    """One frame's people and parked vehicles as marked by eye."""

    index: int
    people: tuple[MarkedPerson, ...]
    vehicles: tuple[tuple[float, float, float, float], ...]


def load_verified(path: Path) -> list[MarkedFrame]:
    """The hand-verified frames of ``verified.json``."""
    data = json.loads(path.read_text())
    vehicles = tuple(tuple(v) for v in data["vehicles"])
    return [
        MarkedFrame(
            int(index),
            tuple(MarkedPerson(tuple(p["box"]), p["upper"]) for p in frame["people"]),  # type: ignore[arg-type]
            vehicles,  # type: ignore[arg-type]
        )
        for index, frame in sorted(data["frames"].items(), key=lambda item: int(item[0]))
    ]


class _Marked:
    """Detector and VQA models that answer from one marked frame: the marked people and vehicles as
    the detections of the classes a noun names (``fmprog.vision.vocabulary``), and the marked colour
    of the upper clothes for a colour question about a marked person's crop (the crop found by its
    pixels: the frame's pixels in that person's box)."""

    VEHICLES = frozenset({"car", "truck", "bus"})

    def __init__(self, frame: np.ndarray, marked: MarkedFrame):
        self.frame = frame
        self.marked = marked
        self.vocabulary = vocabulary(VocabularySpec(nouns="coco"))

    def detect(self, image: np.ndarray, noun: str) -> list[Detection]:
        if image.shape != self.frame.shape:
            raise ValueError("the marked frame answers detections on the whole frame only")
        match = self.vocabulary.resolve(noun)
        classes = set(match.classes) if match is not None else set()
        boxes = [p.box for p in self.marked.people] if "person" in classes else []
        boxes += list(self.marked.vehicles) if classes & self.VEHICLES else []
        return [Detection(box=box, score=1.0) for box in boxes]

    def vqa(self, image: np.ndarray, question: str) -> str:
        person = self._person(image)
        parsed = parse_question(question)
        if person is None or parsed is None or person.upper == "unsure":
            return UNKNOWN_ANSWER
        if parsed.form == "color":
            return person.upper
        if parsed.form == "property" and parsed.color is not None:
            return "yes" if person.upper == parsed.color else "no"
        return UNKNOWN_ANSWER

    def _person(self, crop: np.ndarray) -> MarkedPerson | None:
        for person in self.marked.people:
            x0, y0, x1, y1 = (round(v) for v in _clipped(person.box, self.frame))
            if crop.shape[:2] == (y1 - y0, x1 - x0) and np.array_equal(crop, self.frame[y0:y1, x0:x1]):
                return person
        return None


def _clipped(box: tuple[float, float, float, float], frame: np.ndarray) -> tuple[float, ...]:
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = box
    return (min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width), min(max(y1, 0), height))


def hand_answers(
    queries: Sequence[VideoQuery], frames: Sequence[np.ndarray], marked: Sequence[MarkedFrame]
) -> list[list[str]]:
    """Per query, what its program answers on each marked frame when the detections are the marked
    people and vehicles and the colours are the marked ones."""
    answers: list[list[str]] = [[] for _ in queries]
    programs = [compile_program(q.program) for q in queries]
    for frame, mark in zip(frames, marked, strict=True):
        models = _Marked(np.ascontiguousarray(frame), mark)
        specs = [
            BackendSpec(name="marked-detect", function=Function.detect, cost=1.0),
            BackendSpec(name="marked-vqa", function=Function.vqa, cost=1.0),
        ]
        registry = BackendRegistry(
            [
                Backend(specs[0], FunctionModel(Function.detect, models.detect, "marked")),
                Backend(specs[1], FunctionModel(Function.vqa, models.vqa, "marked")),
            ]
        )
        executor = Executor(registry, memoise=False)
        for program, out in zip(programs, answers, strict=True):
            decision = {site.id: f"marked-{site.function.value}" for site in program.call_sites}
            out.append(_answer(executor, program, models.frame, decision))
    return answers


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """The share of frames on which two answer lists agree (answers compared as the open-form
    metric compares them: case and surrounding space ignored)."""
    same = [x.strip().lower() == y.strip().lower() for x, y in zip(a, b, strict=True)]
    return float(np.mean(same)) if same else 0.0


def verified_report(
    queries: Sequence[VideoQuery],
    reference: Sequence[Sequence[str]],
    hand: Sequence[Sequence[str]],
    frames: Sequence[int],
) -> dict[str, Any]:
    """How far the reference is from the hand-verified answers, per query and overall."""
    rows = []
    for query, ref, truth in zip(queries, reference, hand, strict=True):
        yes_no = bool(truth) and all(t in ("yes", "no") for t in truth)
        rows.append(
            {
                "query": query.query,
                "type": query.type,
                "agreement": agreement(ref, truth) if truth else None,
                "hand_yes": float(np.mean([t == "yes" for t in truth])) if yes_no else None,
            }
        )
    scored = [r["agreement"] for r in rows if r["agreement"] is not None]
    return {
        "frames": list(frames),
        "queries": rows,
        "agreement": float(np.mean(scored)) if scored else None,
    }
