"""Bad input to the router and the policy service is a 4xx naming the problem, never a 500:
decompression-bomb frames, JSON nested thousands deep, lone surrogates (text that is not Unicode)
in a request or in a program's answer. Real HTTP through FastAPI's test client, real Pillow images."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog
from fmprog.contract import Feedback, FeedbackList, FeedbackListReply, PolicyDecision, PolicySpec
from fmprog.images import MAX_IMAGE_PIXELS, encode_png
from fmprog.web import MAX_JSON_DEPTH, json_body_problem
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app as create_router_app
from router.settings import RouterSettings
from tests.bad_frames import BOMBS
from tests.fakes import box
from tests.router.conftest import example, feedback_each

PROGRAM = "c" * 32
SPEC = {
    "sites": [
        {"id": "find@3:4", "function": "detect", "backends": [{"name": "ds", "cost": 1}, {"name": "dl", "cost": 5}]}
    ],
    "lambda": 0.01,
    "algorithm": "fast",
}
DEEP = "[" * 5000 + "]" * 5000
JSON = {"content-type": "application/json"}


class AskedPolicy:
    """A policy that chooses the largest backends and records the decisions it was asked for."""

    def __init__(self) -> None:
        self.specs: dict[str, PolicySpec] = {}
        self.decisions: list[str] = []

    def check(self, spec: PolicySpec) -> None:
        pass

    def register(self, program_id: str, spec: PolicySpec) -> None:
        self.specs[program_id] = spec

    def decide(self, program_id: str, decision_id: str, image: bytes | None) -> PolicyDecision:
        self.decisions.append(decision_id)
        spec = self.specs[program_id]
        return PolicyDecision(algorithm=spec.algorithm, backends={s.id: s.largest for s in spec.sites})

    def feedback(self, program_id: str, feedback: Feedback) -> None:
        pass

    def feedback_batch(self, program_id: str, batch: FeedbackList) -> FeedbackListReply:
        return feedback_each(self.feedback, program_id, batch)

    def delete(self, program_id: str) -> None:
        self.specs.pop(program_id, None)


@pytest.fixture
def asked() -> AskedPolicy:
    return AskedPolicy()


def _router(tmp_path, zoo, policy: AskedPolicy, **settings: Any) -> TestClient:
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    config = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None, **settings)
    app = create_router_app(config, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry(), policy=policy)
    return TestClient(app)


@pytest.fixture
def router(tmp_path, zoo, asked) -> Iterator[TestClient]:
    with _router(tmp_path, zoo, asked, program_workers=0) as client:
        yield client


@pytest.fixture
def policy(tmp_path) -> Iterator[TestClient]:
    settings = PolicySettings(state_dir=tmp_path / "policy", train_interval_s=3600)
    with TestClient(create_policy_app(settings)) as client:
        assert client.put(f"/policies/{PROGRAM}", json=SPEC).status_code == 200
        yield client


def _register(client: TestClient, source: str | None = None, kind: str = "binary") -> str:
    body = {"source": source or example("person_on_bike"), "kind": kind, "lambda": 0.001}
    reply = client.post("/programs", json=body)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def _png() -> bytes:
    return encode_png(np.zeros((80, 100, 3), np.uint8))


def _size_refused(reply: Any, size: str) -> None:
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert f"image is {size}, more than the limit of {MAX_IMAGE_PIXELS} pixels" in detail, detail


# -- decompression bombs --------------------------------------------------------------------------


@pytest.mark.parametrize("way", ["json", "body", "form"])
@pytest.mark.parametrize("bomb", BOMBS)
def test_the_router_refuses_a_bomb_frame_itself_before_asking_the_policy(router, asked, bomb, way):
    make, size = BOMBS[bomb]
    data = make()
    program_id = _register(router)
    if way == "json":
        reply = router.post("/answer", json={"program_id": program_id, "image": base64.b64encode(data).decode()})
    elif way == "body":
        reply = router.post(f"/answer?program_id={program_id}", content=data, headers={"content-type": "image/png"})
    else:
        reply = router.post("/answer", data={"program_id": program_id}, files={"image": ("f.png", data, "image/png")})
    _size_refused(reply, size)
    assert asked.decisions == []  # refused from the frame's header: the policy was never asked
    good = router.post("/answer", json={"program_id": program_id, "image": base64.b64encode(_png()).decode()})
    assert good.status_code == 200 and good.json()["fallback"] is False, good.text


def test_a_batch_answers_a_bomb_frame_with_its_own_422(router):
    program_id = _register(router)
    frames = [
        ("image", ("a.png", _png(), "image/png")),
        ("image", ("b.png", BOMBS["png-20000x20000"][0](), "image/png")),
    ]
    reply = router.post("/answer", data={"program_id": program_id}, files=frames)
    assert reply.status_code == 200, reply.text
    first, second = reply.json()["results"]
    assert first["status"] == 200 and first["result"] is not None
    assert second["status"] == 422 and "image is 20000x20000, more than the limit" in second["detail"]


@pytest.mark.parametrize("bomb", BOMBS)
def test_the_policy_refuses_a_bomb_frame_with_a_422(policy, bomb):
    make, size = BOMBS[bomb]
    data = make()
    raw = policy.post(
        f"/policies/{PROGRAM}/decisions?decision_id={uuid.uuid4().hex}",
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    _size_refused(raw, size)
    body = {"decision_id": uuid.uuid4().hex, "image": base64.b64encode(data).decode()}
    _size_refused(policy.post(f"/policies/{PROGRAM}/decisions", json=body), size)
    good = {"decision_id": uuid.uuid4().hex, "image": base64.b64encode(_png()).decode()}
    assert policy.post(f"/policies/{PROGRAM}/decisions", json=good).status_code == 200


# -- JSON nested too deep ------------------------------------------------------------------------


def _too_deep(reply: Any) -> None:
    assert reply.status_code == 422, reply.text
    assert f"more than the limit of {MAX_JSON_DEPTH}" in reply.json()["detail"], reply.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/feedback", '{"decision_id": "' + "0" * 32 + '", "label": ' + DEEP + "}"),
        ("/feedback", DEEP),
        ("/programs", '{"source": "x", "kind": "binary", "backends": ' + DEEP + "}"),
        ("/answer", '{"program_id": "x", "image": "x", "camera": ' + DEEP + "}"),
        ("/programs/" + "0" * 32 + "/evaluate", '{"targets": ' + DEEP + "}"),
    ],
)
def test_the_router_refuses_json_nested_thousands_deep(router, path, body):
    _too_deep(router.post(path, content=body, headers=JSON))
    _too_deep(router.post(path, content=body, headers={"content-type": "text/plain"}))  # read as JSON all the same


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/policies/{PROGRAM}/feedback", '{"decision_id": "x", "reward": 1, "executed_sites": ' + DEEP + "}"),
        ("/policies/check", '{"sites": ' + DEEP + "}"),
        (f"/policies/{PROGRAM}", '{"sites": [{"id": ' + DEEP + "}]}"),
        (f"/policies/{PROGRAM}/decisions", '{"decision_id": ' + DEEP + "}"),
        (f"/policies/{PROGRAM}/feedback/batch", '{"feedback": ' + DEEP + "}"),
    ],
)
def test_the_policy_refuses_json_nested_thousands_deep(policy, path, body):
    method = policy.put if path == f"/policies/{PROGRAM}" else policy.post
    _too_deep(method(path, content=body, headers=JSON))


def test_json_within_the_depth_limit_is_read_as_before(router):
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)  # inside the body's object
    reply = router.post(
        "/feedback", content='{"decision_id": "' + "0" * 32 + '", "label": ' + nested + "}", headers=JSON
    )
    assert reply.status_code == 422 and "label" in reply.json()["detail"]  # the schema's refusal, not the depth's


# -- lone surrogates --------------------------------------------------------------------------------


def _not_unicode(reply: Any) -> None:
    assert reply.status_code == 422, reply.text
    assert "lone surrogate" in reply.json()["detail"], reply.text


def test_a_program_source_with_a_lone_surrogate_is_a_422(router):
    body = {"source": "def execute_command(image):\n    return '\ud800'\n", "kind": "open", "lambda": 0.001}
    reply = router.post("/programs", content=json.dumps(body), headers=JSON)  # json.dumps writes "\ud800"
    _not_unicode(reply)
    assert "\\ud800" in reply.json()["detail"]
    assert router.get("/programs").json() == []


@pytest.mark.parametrize(
    "body",
    [
        {"source": example("person_on_bike"), "kind": "binary", "hyperparameters": {"x": "\udc00"}},
        {"source": example("person_on_bike"), "kind": "binary", "hyperparameters": {"a \ud800": 1}},
        [{"decision_id": "0" * 32, "label": "\ud800"}],
    ],
)
def test_the_router_refuses_lone_surrogates_anywhere_in_json(router, body):
    path = "/feedback" if isinstance(body, list) else "/programs"
    _not_unicode(router.post(path, content=json.dumps(body), headers=JSON))


def test_the_router_refuses_a_lone_surrogate_in_an_evaluation_target(router):
    program_id = _register(router)
    body = {"targets": [{"kind": "static", "backends": {"\ud800": "detect-large"}}]}
    _not_unicode(router.post(f"/programs/{program_id}/evaluate", content=json.dumps(body), headers=JSON))


def test_the_policy_refuses_lone_surrogates_in_json(policy):
    body = {**SPEC, "hyperparameters": {"x": "\ud800"}}
    _not_unicode(policy.post("/policies/check", content=json.dumps(body), headers=JSON))
    feedback = {"decision_id": "\udfff", "reward": 1, "executed_sites": []}
    _not_unicode(policy.post(f"/policies/{PROGRAM}/feedback", content=json.dumps(feedback), headers=JSON))


def test_escaped_backslashes_and_surrogate_pairs_are_text(router):
    """``\\\\ud800`` is a backslash and five letters, and ``\\ud83d\\ude00`` one character (an emoji)."""
    source = (
        "def execute_command(image):\n    p = ImagePatch(image)\n    return p.simple_query('\\ud800 \U0001f600?')\n"
    )
    reply = router.post("/programs", content=json.dumps({"source": source, "kind": "open"}), headers=JSON)
    assert reply.status_code == 201, reply.text
    assert reply.json()["source"] == source


# -- a program's answer that is not Unicode ---------------------------------------------------------

NOT_TEXT = (
    "def execute_command(image) -> str:\n"
    "    image_patch = ImagePatch(image)\n"
    "    if image_patch.exists('person'):\n"
    "        print('seen \\ud800')\n"
    "        return {{'{key}': '{value}'}}\n"
    "    raise ValueError('nobody \\udfff')\n"
)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_answer_holding_a_lone_surrogate_is_an_error_of_the_run(tmp_path, zoo, asked, workers):
    """The source holds only escapes (ASCII); the program builds lone surrogates as it runs. The
    frame is answered (200) with the run's error, in the router's process and in a program worker."""
    with _router(tmp_path, zoo, asked, program_workers=workers) as router:
        image = base64.b64encode(_png()).decode()
        for key, value in [("a", "\\ud800"), ("\\udc00", "b")]:
            program_id = _register(router, NOT_TEXT.format(key=key, value=value), kind="open")
            reply = router.post("/answer", json={"program_id": program_id, "image": image})
            assert reply.status_code == 200, reply.text
            result = reply.json()
            assert result["answer"] is None
            assert result["error"]["kind"] == "runtime_error" and "lone surrogate" in result["error"]["message"]
            assert router.get(f"/programs/{program_id}").status_code == 200
        zoo.set_boxes({})  # nobody: the program raises an error whose message holds a lone surrogate
        reply = router.post("/answer", json={"program_id": program_id, "image": image})
        assert reply.status_code == 200, reply.text
        assert reply.json()["error"] == {"kind": "runtime_error", "message": "ValueError: nobody \\udfff", "line": 6}


# -- the check itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"a": [1, {"b": "[[[[[[[["}]}', None),
        (b'{"a": "\\"[[[[[[[[["}', None),
        (b'"\\\\ud800"', None),
        (b'{"a": "\\ud83d\\ude00"}', None),
        (b'{"a": "\\uD83D\\uDE00 \\u00e9"}', None),
        (b"[" * 5 + b"]" * 5, None),
        (b"[" * 6 + b"]" * 6, "JSON nested 6 levels deep, more than the limit of 5"),
        (b"[" * 9, "JSON nested 9 levels deep, more than the limit of 5"),
        (b'{"a": "\\ud800"}', "lone surrogate (\\ud800)"),
        (b'{"a": "x \\\\\\udc00"}', "lone surrogate (\\udc00)"),
        (b'{"\\uDBFF": 1}', "lone surrogate (\\udbff)"),
        (b'{"a": "\\ud800', None),  # not JSON at all: the route says so
    ],
)
def test_json_body_problem(body, problem):
    found = json_body_problem(body, max_depth=5)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


def test_json_body_problem_reads_hostile_bodies_without_parsing_them():
    """Millions of escapes, pairs or brackets: counted, not parsed (a parse would recurse or crawl;
    how long it takes is a benchmark's question, not this test's)."""
    assert json_body_problem(b'"' + b'\\"' * 2_000_000, MAX_JSON_DEPTH) is None
    assert json_body_problem(b"[]" * 2_000_000, MAX_JSON_DEPTH) is None
    assert json_body_problem(b'["' + b"a" * 8_000_000 + b'"]', MAX_JSON_DEPTH) is None
    problem = json_body_problem(b"[" * 4_000_000, MAX_JSON_DEPTH)
    assert problem == f"body: JSON nested 4000000 levels deep, more than the limit of {MAX_JSON_DEPTH}"
