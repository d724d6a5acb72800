"""The real-video track's pieces: its frames by reference, the hand-verified check (programs run on
the people marked by eye), the benchmark's candidates per call site, and which configuration
answers and prices each track."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.vqa.cache import backend_key
from benchmarks.vqa.harness import configurations, policy_spec, site_backends
from benchmarks.vqa.runner import BenchSettings, reference_run, track_backends
from benchmarks.vqa.tracks import ImageResolver, Track, TrackFormatError, parse_video_ref, video_ref
from benchmarks.vqa.video import (
    VIDEO_QUERIES,
    MarkedFrame,
    MarkedPerson,
    agreement,
    hand_answers,
    load_verified,
    verified_report,
)
from fmprog.backends.base import Backend, BackendRegistry, Detection, FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.program import compile_program
from fmprog.vision.video import SAMPLE_VIDEOS, VideoFrames

ROOT = Path(__file__).resolve().parents[2]
TRACK = ROOT / "benchmarks" / "tracks" / "video"


def query(text: str):
    return next(q for q in VIDEO_QUERIES if q.query == text)


def marked_frame() -> tuple[np.ndarray, MarkedFrame]:
    """A 120x160 frame with two marked people: a red one on the left (its pixels red), a blue one
    on the right, and one parked vehicle beside the blue one."""
    frame = np.full((120, 160, 3), 128, np.uint8)
    frame[60:100, 10:30] = (200, 20, 20)
    frame[20:50, 120:140] = (20, 20, 200)
    people = (MarkedPerson((10, 60, 30, 100), "red"), MarkedPerson((120, 20, 140, 50), "blue"))
    return frame, MarkedFrame(0, people, ((142, 10, 158, 40),))


def test_hand_answers_run_each_program_on_the_marked_people_and_colours():
    frame, marked = marked_frame()
    texts = [
        "How many people are there?",
        "Is anyone in the left third of the frame?",
        "Is anyone in the bottom half of the frame?",
        "Is anyone within 40 pixels of a parked vehicle?",
        "Is anyone wearing red?",
        "What color is the leftmost person wearing?",
        "Are there more than 5 people?",
    ]
    answers = hand_answers([query(t) for t in texts], [frame], [marked])
    assert [a[0] for a in answers] == ["2", "yes", "yes", "yes", "yes", "red", "no"]
    nobody = MarkedFrame(0, (), ())
    empty = hand_answers([query(t) for t in texts[4:6]], [frame], [nobody])
    assert empty == [["no"], ["N/A"]]


def test_a_marked_person_of_unsure_colour_answers_unknown():
    frame, marked = marked_frame()
    unsure = MarkedFrame(0, (MarkedPerson(marked.people[0].box, "unsure"),), ())
    [[answer]] = hand_answers([query("What color is the leftmost person wearing?")], [frame], [unsure])
    assert answer == "unknown"


def test_the_report_says_how_often_the_reference_agrees_with_the_hand_verified_answers():
    questions = [query("Is anyone wearing red?"), query("How many people are there?")]
    report = verified_report(questions, [["yes", "no"], ["3", "4"]], [["yes", "yes"], ["3", "3"]], [0, 7])
    assert report["frames"] == [0, 7] and report["agreement"] == pytest.approx(0.5)
    rows = {r["query"]: r for r in report["queries"]}
    assert rows["Is anyone wearing red?"]["hand_yes"] == 1.0  # a yes/no query: its share of yes
    assert rows["How many people are there?"]["hand_yes"] is None  # a count has none
    empty = verified_report(questions, [[], []], [[], []], [])
    assert empty["agreement"] is None and all(r["agreement"] is None for r in empty["queries"])
    assert agreement(["Yes ", "no"], ["yes", "No"]) == 1.0


def test_the_committed_hand_verified_sample_covers_120_frames_of_the_video():
    marked = load_verified(TRACK / "verified.json")
    assert len(marked) == 120 and marked[0].index == 0 and marked[-1].index == 794
    people = [p for m in marked for p in m.people]
    assert len(people) == 760 and {p.upper for p in people} <= {"black", "blue", "red", "unsure"}
    assert all(m.vehicles == marked[0].vehicles and len(m.vehicles) == 2 for m in marked)
    report = json.loads((TRACK / "verified_report.json").read_text())
    assert report["frames"] == [m.index for m in marked]
    assert [r["query"] for r in report["queries"]] == [q.query for q in VIDEO_QUERIES]


def test_video_frame_references_resolve_to_the_decoded_frames():
    if not (SAMPLE_VIDEOS / "vtest.avi").is_file():
        pytest.skip("Debian's opencv-doc is not installed (make install installs it)")
    frame = ImageResolver()("video/vtest.avi/3")
    assert frame.shape == (576, 768, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, VideoFrames(SAMPLE_VIDEOS / "vtest.avi")[3])
    assert parse_video_ref(video_ref("vtest.avi", 3)) == ("vtest.avi", 3)
    for bad in ("video/vtest.avi/x", "video/vtest.avi/99999", "video/absent.avi/0"):
        with pytest.raises(TrackFormatError, match="bad video reference"):
            ImageResolver()(bad)


def _spec(name: str, function: str, cost: float, nouns: str | None = None) -> BackendSpec:
    vocabulary = None if nouns is None else {"nouns": nouns}
    return BackendSpec.model_validate({"name": name, "function": function, "cost": cost, "vocabulary": vocabulary})


def test_a_site_gets_only_the_backends_that_can_see_what_it_asks():
    specs = [_spec("people", "detect", 1, "person"), _spec("coco", "detect", 5, "coco")]
    registry = BackendRegistry([Backend(s, FunctionModel(Function.detect, lambda i, n: [], s.name)) for s in specs])
    source = (
        "def execute_command(image):\n    p = ImagePatch(image)\n"
        '    return len(p.find("person")) + len(p.find("car"))\n'
    )
    program = compile_program(source)
    person, car = (site.id for site in program.call_sites)
    assert {site: [b.name for b in found] for site, found in site_backends(program, registry).items()} == {
        person: ["people", "coco"],
        car: ["coco"],
    }
    assert configurations(program, registry) == [{person: "people", car: "coco"}, {person: "coco", car: "coco"}]
    spec = policy_spec(program, registry, 0.001, "fast", 0)
    assert {s.id: [b.name for b in s.backends] for s in spec.sites} == {person: ["people", "coco"], car: ["coco"]}


def test_the_cache_keeps_apart_two_backends_of_one_name_served_differently():
    def backend(spec: dict) -> Backend:
        return Backend(BackendSpec.model_validate(spec), FunctionModel(Function.detect, lambda i, n: [], "x"))

    darknet = {"kind": "darknet", "model": {"weights": {"path": "/w"}, "network": {"path": "/c"}, "input_size": 320}}
    small = backend({"name": "detect-small", "function": "detect", "cost": 1, "engine": darknet})
    larger = backend(
        {
            "name": "detect-small",
            "function": "detect",
            "cost": 1,
            "engine": {**darknet, "model": {**darknet["model"], "input_size": 608}},
        }
    )
    zoo = backend(
        {
            "name": "detect-small",
            "function": "detect",
            "cost": 1,
            "engine": {"kind": "torch", "model": {"zoo": "detect-small"}},
        }
    )
    keys = {backend_key(b) for b in (small, larger, zoo)}
    assert len(keys) == 3 and all(k.startswith("detect-small@") for k in keys)
    assert backend_key(small) == backend_key(small)
    priced = Backend(small.spec.model_copy(update={"cost": 9.0}), small.model)
    assert backend_key(priced) == backend_key(small)  # the price is not how it is served


def test_the_video_track_is_answered_by_the_real_configuration_at_its_own_costs():
    settings = BenchSettings(binary=None, open=None)
    video, synthetic = Track("video", "open"), Track("open", "open")
    assert track_backends(settings, video) == (settings.video_config, None)
    assert track_backends(settings, synthetic) == (settings.config, settings.costs)
    assert (reference_run(video), reference_run(synthetic)) == ("static-large", "monolithic-large")


def test_a_detection_answers_as_marked_only_on_the_whole_frame():
    frame, marked = marked_frame()
    from benchmarks.vqa.video import _Marked

    models = _Marked(frame, marked)
    assert [d.box for d in models.detect(frame, "people")] == [p.box for p in marked.people]
    assert models.detect(frame, "vehicle") == [Detection(box=marked.vehicles[0], score=1.0)]
    assert models.detect(frame, "dog") == []
    with pytest.raises(ValueError, match="whole frame"):
        models.detect(frame[:50], "person")
