"""The track queries: every program compiles; under perfect perception every program (and the
monolithic question, where the VQA grammar reads it) answers exactly the ground truth on frames of
its streams in both splits; the committed streams are what ``make tracks`` builds."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks.vqa.queries import (
    FRENCH_COLORS,
    NOT_APPLICABLE,
    OPEN_TYPES,
    POLYGON_SIDES,
    QuerySpec,
    binary_queries,
    monolithic_program,
    open_queries,
)
from benchmarks.vqa.splits import SCENE_SEEDS, SPLITS, binary_track, open_track
from benchmarks.vqa.tracks import ImageResolver, build_streams, load_binary, load_open
from fmprog.backends import BackendRegistry, BackendSpec, Detection
from fmprog.program import Executor, compile_program
from fmprog.rewards import task_loss
from fmprog.scene.generator import Scene, generate_scene
from fmprog.zoo.language import answer_question, certain, matching, parse_noun

ROOT = Path(__file__).resolve().parents[2]


class PerfectPerception:
    """Detection and VQA from the scene's exact objects (a crop is matched to the object whose
    box it is), and an LLM that knows polygon sides and French colour names."""

    def __init__(self) -> None:
        self.scene: Scene | None = None

    def _objects(self):
        side = self.scene.image.shape[0]
        return [(o, certain(o.shape, o.color, o.texture, o.box, side)) for o in self.scene.objects]

    def detect(self, image: np.ndarray, noun: str) -> list[Detection]:
        query = parse_noun(noun)
        if query is None:
            return []
        perceived = [p for _, p in self._objects()]
        return [Detection(box=p.box, score=1.0) for p in matching(perceived, query)]

    def vqa(self, image: np.ndarray, question: str) -> str:
        frame = self.scene.image
        objects = self._objects()
        focus = None
        if image.shape != frame.shape:
            for o, p in objects:
                x0, y0, x1, y1 = o.box
                if np.array_equal(frame[y0:y1, x0:x1], image):
                    focus = p
                    break
        return answer_question(question, [p for _, p in objects], focus)

    def llm(self, prompt: str) -> str:
        if match := re.search(r"sides does an? (\w+) have", prompt):
            return str(POLYGON_SIDES.get(match[1], "I do not know"))
        if match := re.search(r"the color (\w+)\?", prompt):
            return FRENCH_COLORS.get(match[1], "inconnu").capitalize()
        return "I do not know"


def _perfect_executor(model: PerfectPerception) -> Executor:
    specs = [
        BackendSpec(name="detect", function="detect", cost=1),
        BackendSpec(name="vqa", function="vqa", cost=10),
        BackendSpec(name="llm", function="llm", cost=100),
    ]
    return Executor(BackendRegistry.from_specs(specs, {"detect": model, "vqa": model, "llm": model}))


@pytest.fixture(scope="module")
def perfect():
    model = PerfectPerception()
    return model, _perfect_executor(model)


def test_the_tracks_have_the_paper_s_sizes():
    binary, open_form = binary_queries(), open_queries()
    assert len(binary) >= 30 and len(open_form) >= 40
    assert Counter(q.type for q in open_form) == {t: 8 for t in OPEN_TYPES}
    assert len({q.query for q in binary + open_form}) == len(binary) + len(open_form)


def _sampled_streams() -> dict[str, list[tuple[Scene, str]]]:
    """Per query, frames of its streams in both splits: every frame not labelled "no" or "N/A"
    (binary: its 20 positives), and as many of the others, from the stream's start."""
    sampled: dict[str, list[tuple[Scene, str]]] = {}
    for split in SPLITS:
        for track in (load_binary(ROOT / binary_track(split)), load_open(ROOT / open_track(split))):
            for q in track.queries:
                pairs = list(zip(q.frames, q.labels, strict=True))
                answered = [pair for pair in pairs if pair[1] not in ("no", NOT_APPLICABLE)][:40]
                others = [pair for pair in pairs if pair[1] in ("no", NOT_APPLICABLE)][: len(answered)]
                for ref, label in answered + others:
                    _, difficulty, seed = str(ref).split("/")
                    sampled.setdefault(q.query, []).append((generate_scene(int(seed), difficulty), label))
    return sampled


@pytest.fixture(scope="module")
def streams():
    return _sampled_streams()


@pytest.mark.parametrize("spec", binary_queries() + open_queries(), ids=lambda s: s.query)
def test_programs_answer_the_ground_truth_under_perfect_perception(spec: QuerySpec, perfect, streams):
    """On frames of the query's own streams (both splits): the program's answer, and the monolithic
    question's, is the track's label."""
    model, executor = perfect
    program = compile_program(spec.program)
    monolithic = compile_program(monolithic_program(spec.query))
    frames = streams[spec.query]
    assert len(frames) >= 2 * 2 * 20  # both splits; answered frames and as many others
    for scene, label in frames:
        assert spec.truth(scene.objects) == label, (scene.seed, label)
        model.scene = scene
        trace = executor.run(program, scene.image, {s.id: s.function.value for s in program.call_sites})
        assert trace.error is None, trace.error
        assert task_loss(spec.kind, trace.answer, label) == 0, (scene.seed, trace.answer, label)
        whole = executor.run(monolithic, scene.image, {s.id: "vqa" for s in monolithic.call_sites}).answer
        if spec.type == "knowledge":
            assert whole == "unknown"  # the zoo's VQA knows the image, not facts about it
        else:
            assert task_loss(spec.kind, whole, label) == 0, (scene.seed, whole, label)


@pytest.mark.parametrize("split", SPLITS)
def test_the_committed_tracks_are_the_queries_streams(split):
    """benchmarks/tracks/<split> holds the queries' streams: the same queries and programs, 1
    positive per 100 frames (binary) or 200 "N/A" frames in 500 (open), labels that match the
    ground truth of the frames they name, and every program right on its positives."""
    images = ImageResolver()
    model = PerfectPerception()
    executor = _perfect_executor(model)
    for track, specs, frames in (
        (load_binary(ROOT / binary_track(split)), binary_queries(), 2000),
        (load_open(ROOT / open_track(split)), open_queries(), 500),
    ):
        assert [(q.query, q.program) for q in track.queries] == [(s.query, s.program) for s in specs]
        by_query = {s.query: s for s in specs}
        for q in track.queries:
            assert len(q.frames) == frames == len(set(q.frames))
            counts = Counter(q.labels)
            if track.kind == "binary":
                assert counts == {"yes": 20, "no": 1980}
            else:
                assert counts[NOT_APPLICABLE] == 200
            spec = by_query[q.query]
            for ref, label in list(zip(q.frames, q.labels, strict=True))[:12]:
                difficulty, seed = ref.split("/")[1:]
                assert spec.truth(generate_scene(int(seed), difficulty).objects) == label
            positive = next(
                ref for ref, label in zip(q.frames, q.labels, strict=True) if label not in ("no", NOT_APPLICABLE)
            )
            model.scene = generate_scene(int(positive.split("/")[2]), positive.split("/")[1])
            assert np.array_equal(images(positive), model.scene.image)
            program = compile_program(q.program)
            answer = executor.run(
                program, model.scene.image, {s.id: s.function.value for s in program.call_sites}
            ).answer
            assert task_loss(track.kind, answer, spec.truth(model.scene.objects)) == 0, (q.query, positive, answer)


@pytest.mark.parametrize("split", SPLITS)
def test_make_tracks_rebuilds_the_committed_streams(split):
    """A binary and an open query rebuilt from the split's seeds give the committed streams frame for
    frame (a query's stream depends on its own template and the seed range only, so one query
    rebuilt alone is the one ``make tracks`` wrote)."""
    seeds = SCENE_SEEDS[split]
    committed_binary = json.loads((ROOT / binary_track(split)).read_text())[0]
    rebuilt = build_streams([binary_queries()[0]], seeds=seeds)[0]
    assert [r for r, label in zip(rebuilt.frames, rebuilt.labels, strict=True) if label == "yes"] == committed_binary[
        "positive_images"
    ]
    assert [r for r, label in zip(rebuilt.frames, rebuilt.labels, strict=True) if label != "yes"] == committed_binary[
        "negative_images"
    ]
    spec = open_queries()[0]
    meta = json.loads((ROOT / open_track(split) / spec.type / "meta_annotation.json").read_text())
    assert meta[0]["query"] == spec.query
    annotation = json.loads((ROOT / open_track(split) / spec.type / "0" / "annotation.json").read_text())
    rebuilt = build_streams([spec], seeds=seeds)[0]
    assert [{"image": f, "answer": a} for f, a in zip(rebuilt.frames, rebuilt.labels, strict=True)] == annotation
