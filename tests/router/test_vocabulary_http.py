"""Vocabularies over the router's HTTP API: a program whose call sites no candidate backend can see
is registered with warnings (kept in the store), a site's candidates are those that can see it, and
a call outside its backend's vocabulary is marked in the answer's trace and counted on /metrics.

The backends are in-process fakes with real vocabularies: a people-only detector, a COCO detector,
and a COCO + ImageNet VQA backend."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fmprog.backends import BackendCatalog, BackendRegistry, BackendSpec, Function
from fmprog.images import encode_png
from fmprog.vision.vocabulary import VocabularySpec
from router.app import create_app
from router.settings import RouterSettings
from tests.fakes import FakeDetector, FakeVQA, box

QUESTIONS = ("what", "color", "is_a", "property", "choice", "exists", "count")
SPECS = [
    BackendSpec(name="detect-people", function=Function.detect, cost=10, vocabulary=VocabularySpec(nouns="person")),
    BackendSpec(name="detect-coco", function=Function.detect, cost=50, vocabulary=VocabularySpec(nouns="coco")),
    BackendSpec(
        name="vqa-real",
        function=Function.vqa,
        cost=20,
        vocabulary=VocabularySpec(nouns="coco+imagenet", questions=QUESTIONS),
    ),
]
PROGRAM = """
def execute_command(image):
    p = ImagePatch(image)
    people = p.find("person")
    cars = p.find("car")
    octopi = p.find("octopus")
    return len(people) + len(cars) + len(octopi)
"""
PERSON, CAR, OCTOPUS = "find@4:15", "find@5:13", "find@6:15"
OCTOPUS_REASONS = {
    "detect-people": "'octopus' names none of the person class",
    "detect-coco": "'octopus' names none of the 80 COCO classes",
}
OCTOPUS_WARNING = (
    "line 6: find@6:15: 'octopus' names none of the person class (detect-people); "
    "'octopus' names none of the 80 COCO classes (detect-coco)"
)


def registry() -> BackendRegistry:
    boxes = {"person": [box(10, 10, 30, 60)], "car": [box(40, 40, 90, 70)], "octopus": [box(0, 0, 5, 5)]}
    models = {"detect-people": FakeDetector(boxes), "detect-coco": FakeDetector(boxes), "vqa-real": FakeVQA()}
    return BackendRegistry.from_specs(SPECS, models)


def app_client(database: Path, **settings_fields: Any) -> TestClient:
    """The router over the fake backends, with no policy: every frame is answered with the cheapest candidates.
    Programs run in the router's own process unless ``program_workers`` says otherwise."""
    settings = RouterSettings(database=database, synthesis_backend=None, **{"program_workers": 0, **settings_fields})
    return TestClient(create_app(settings, catalog=BackendCatalog(backends=SPECS), backends=registry()))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(tmp_path / "router.db") as test_client:
        yield test_client


def register(client: TestClient, source: str = PROGRAM, **fields: Any) -> dict[str, Any]:
    response = client.post("/programs", json={"source": source, "kind": "open", "lambda": 0.01, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def sites(program: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {site["id"]: site for site in program["call_sites"]}


def answer(client: TestClient, program_id: str) -> dict[str, Any]:
    image = base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()
    response = client.post("/answer", json={"program_id": program_id, "image": image})
    assert response.status_code == 200, response.text
    return response.json()


def out_of_vocabulary_counts(client: TestClient) -> dict[tuple[str, str, str], float]:
    text = client.get("/metrics").text
    return {
        (s.labels["program"], s.labels["function"], s.labels["backend"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "fmprog_out_of_vocabulary_calls_total"
    }


def test_a_site_no_candidate_can_see_is_registered_with_a_warning_naming_it(client):
    program = register(client)
    assert program["warnings"] == [OCTOPUS_WARNING]
    octopus = sites(program)[OCTOPUS]
    assert octopus["out_of_vocabulary"] == OCTOPUS_REASONS
    assert [c["name"] for c in octopus["candidates"]] == ["detect-people", "detect-coco"]  # all: none can see it


def test_a_sites_candidates_are_the_backends_that_can_see_its_noun(client):
    program = register(client)
    by_site = sites(program)
    assert [(c["name"], c["cost"]) for c in by_site[PERSON]["candidates"]] == [
        ("detect-people", 10),
        ("detect-coco", 50),
    ]
    assert [c["name"] for c in by_site[CAR]["candidates"]] == ["detect-coco"]  # the people detector is dropped
    assert by_site[PERSON]["out_of_vocabulary"] == {} and by_site[CAR]["out_of_vocabulary"] == {}


def test_a_program_every_site_of_which_is_seen_has_no_warnings(client):
    source = 'def execute_command(image):\n    return ImagePatch(image).query("What is this?")\n'
    program = register(client, source)
    assert program["warnings"] == []
    assert sites(program)["query@2:29"]["out_of_vocabulary"] == {}


def test_allowed_backends_that_cannot_see_a_site_are_warned_about(client):
    program = register(client, backends={"detect": ["detect-people"]})
    assert [w.split(": ")[1] for w in program["warnings"]] == [CAR, OCTOPUS]
    assert sites(program)[CAR]["out_of_vocabulary"] == {"detect-people": "'car' names none of the person class"}
    assert [c["name"] for c in sites(program)[CAR]["candidates"]] == ["detect-people"]


def test_the_warnings_survive_the_store(client, tmp_path):
    program = register(client)
    got = client.get(f"/programs/{program['id']}").json()
    assert got["warnings"] == program["warnings"] == [OCTOPUS_WARNING]
    assert sites(got)[OCTOPUS]["out_of_vocabulary"] == OCTOPUS_REASONS
    listed = {p["id"]: p["warnings"] for p in client.get("/programs").json()}
    assert listed == {program["id"]: [OCTOPUS_WARNING]}
    with app_client(tmp_path / "router.db") as again:  # another router over the same database
        stored = again.get(f"/programs/{program['id']}").json()
        assert stored["warnings"] == [OCTOPUS_WARNING]
        assert sites(stored) == sites(program)


def test_a_call_outside_its_backends_vocabulary_is_marked_in_the_trace_and_counted(client):
    program = register(client)
    result = answer(client, program["id"])
    assert result["answer"] == 3
    trace = {call["site"]: call for call in result["trace"]}
    assert {site: call["backend"] for site, call in trace.items()} == {
        PERSON: "detect-people",  # the cheapest candidate that can see each noun
        CAR: "detect-coco",
        OCTOPUS: "detect-people",  # none can: the cheapest
    }
    assert trace[OCTOPUS]["out_of_vocabulary"] == "'octopus' names none of the person class"
    assert "out_of_vocabulary" not in trace[PERSON] and "out_of_vocabulary" not in trace[CAR]
    assert out_of_vocabulary_counts(client) == {(program["id"], "detect", "detect-people"): 1.0}
    answer(client, program["id"])
    assert out_of_vocabulary_counts(client) == {(program["id"], "detect", "detect-people"): 2.0}


def test_a_computed_question_outside_the_vocabulary_is_marked_when_it_runs(client):
    source = """
def execute_command(image):
    p = ImagePatch(image)
    questions = ["What is this?", "What is this person doing?"]
    return [p.query(q) for q in questions]
"""
    program = register(client, source)
    assert program["warnings"] == []  # not known before it runs
    result = answer(client, program["id"])
    assert [call.get("out_of_vocabulary") for call in result["trace"]] == [
        None,
        "'What is this person doing?' is none of the question forms answered "
        "(what, color, is_a, property, choice, exists, count)",
    ]
    assert out_of_vocabulary_counts(client) == {(program["id"], "vqa", "vqa-real"): 1.0}


def test_a_call_outside_the_vocabulary_is_marked_when_programs_run_in_worker_processes(tmp_path):
    assert RouterSettings.model_fields["program_workers"].default > 0
    with app_client(tmp_path / "router.db", program_workers=1) as client:
        program = register(client)
        result = answer(client, program["id"])
        assert result["answer"] == 3 and len(result["trace"]) == 3  # it ran in a worker
        octopus = next(call for call in result["trace"] if call["site"] == OCTOPUS)
        assert octopus.get("out_of_vocabulary") == "'octopus' names none of the person class"
