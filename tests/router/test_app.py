"""The router's HTTP API over in-process fake backends and a recording fake policy.

The real policy service over real HTTP is exercised in tests/test_services_http.py."""

from __future__ import annotations

import base64
import threading
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fmprog.backends import BackendCatalog
from fmprog.contract import Feedback, FeedbackList, FeedbackListReply, PolicyDecision, PolicySpec
from fmprog.images import encode_png
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app
from router.policy_client import PolicyUnavailable
from router.settings import RouterSettings
from services.cluster import free_port
from tests.fakes import box
from tests.router.conftest import example, feedback_each
from tests.servers import serving, wait_until

KEY = "k" * 24
HOSTILE = "def execute_command(image):\n    import os\n"


class RecordingPolicy:
    """Chooses the largest backend everywhere and records what it is sent; can be switched off."""

    def __init__(self) -> None:
        self.up = True
        self.programs: dict[str, Any] = {}
        self.decisions: list[str] = []
        self.received: list[dict[str, Any]] = []

    def _check(self) -> None:
        if not self.up:
            raise PolicyUnavailable("policy down (test)")

    def check(self, spec: PolicySpec) -> None:
        self._check()

    def register(self, program_id: str, spec: PolicySpec) -> None:
        self._check()
        self.programs[program_id] = spec

    def decide(self, program_id: str, decision_id: str, image: bytes | None) -> PolicyDecision:
        self._check()
        self.decisions.append(decision_id)
        spec = self.programs[program_id]
        return PolicyDecision(algorithm=spec.algorithm, backends={s.id: s.largest for s in spec.sites})

    def feedback(self, program_id: str, feedback: Feedback) -> None:
        self._check()
        self.received.append(feedback.model_dump())

    def feedback_batch(self, program_id: str, batch: FeedbackList) -> FeedbackListReply:
        return feedback_each(self.feedback, program_id, batch)

    def delete(self, program_id: str) -> None:
        self._check()
        self.programs.pop(program_id, None)


@pytest.fixture
def policy() -> RecordingPolicy:
    return RecordingPolicy()


@pytest.fixture
def client(tmp_path, zoo, policy):
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    settings = RouterSettings(
        database=tmp_path / "router.db", api_key=KEY, max_request_bytes=200_000, synthesis_backend=None
    )
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry(), policy=policy)
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as test_client:
        yield test_client


def _png_b64() -> str:
    return base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()


def _register(client: TestClient) -> dict[str, Any]:
    response = client.post("/programs", json={"source": example("person_on_bike"), "kind": "binary", "lambda": 0.001})
    assert response.status_code == 201, response.text
    return response.json()


def test_register_answer_feedback_round_trip(client, policy):
    program = _register(client)
    assert program["call_sites"] and all(site["candidates"] for site in program["call_sites"])
    assert program["id"] in policy.programs
    assert client.get(f"/programs/{program['id']}").json()["source"] == program["source"]
    assert [p["id"] for p in client.get("/programs").json()] == [program["id"]]

    answer = client.post("/answer", json={"program_id": program["id"], "image": _png_b64(), "frame_id": "f1"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["fallback"] is False
    assert policy.decisions == [result["decision_id"]]
    assert result["trace"] and result["cost"] == pytest.approx(sum(c["cost"] for c in result["trace"]))
    assert {c["backend"] for c in result["trace"]} <= {"detect-large", "vqa-large"}

    label = "yes" if "yes" in str(result["answer"]).lower() else "no"
    first = client.post("/feedback", json={"decision_id": result["decision_id"], "label": label})
    assert first.status_code == 200, first.text
    assert first.json()["repeat"] is False
    assert first.json()["reward"] in {1000.0, 1.0}
    wait_until(lambda: policy.received, "the label delivered to the policy", timeout_s=10, poll_s=0.01)
    assert policy.received[-1]["decision_id"] == result["decision_id"]
    assert policy.received[-1]["executed_sites"] == first.json()["executed_sites"]
    again = client.post("/feedback", json={"decision_id": result["decision_id"], "label": label})
    assert again.json()["repeat"] is True
    assert len(policy.received) == 1
    other = "no" if label == "yes" else "yes"
    assert client.post("/feedback", json={"decision_id": result["decision_id"], "label": other}).status_code == 409
    assert client.post("/feedback", json={"decision_id": "0" * 32, "label": "yes"}).status_code == 404

    metrics = client.get("/metrics", headers={"Authorization": ""}).text
    assert f'fmprog_answers_total{{fallback="false",program="{program["id"]}"}} 1.0' in metrics
    assert "fmprog_cost_total" in metrics
    assert f'fmprog_program_labels_total{{outcome="right",program="{program["id"]}"}} 1.0' in metrics
    assert f'fmprog_program_labels_total{{outcome="wrong",program="{program["id"]}"}} 0.0' in metrics

    assert client.delete(f"/programs/{program['id']}").status_code == 204
    assert client.get(f"/programs/{program['id']}").status_code == 404


@pytest.fixture
def real_policy(tmp_path):
    """The policy service over real HTTP (uvicorn in a thread)."""
    settings = PolicySettings(state_dir=tmp_path / "policy", train_interval_s=3600)
    with serving(create_policy_app(settings)) as url:
        yield url


def _router(tmp_path, zoo, policy_url: str, **fields: Any) -> TestClient:
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    settings = RouterSettings(
        database=tmp_path / "router.db", policy_url=policy_url, synthesis_backend=None, outbox_retry_s=3600, **fields
    )
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    return TestClient(app)


def test_the_policy_service_checks_the_policy_before_the_program_is_stored(tmp_path, zoo, real_policy):
    """Over real HTTP: the router asks the policy service (``POST /policies/check``); a spec it
    refuses is a 422 naming the problem, and neither the router nor the policy keeps anything."""
    source = example("person_on_bike")
    cases = [
        ({"algorithm": "oracle"}, "unknown algorithm 'oracle'"),
        ({"algorithm": "fast", "hyperparameters": {"nu": -1}}, "hyperparameters.nu"),
        ({"algorithm": "fast", "hyperparameters": {"learning_rate": 0.1}}, "learning_rate"),
        ({"algorithm": "static", "hyperparameters": {"mode": "map", "backends": {"nope": "x"}}}, "unknown call site"),
    ]
    with _router(tmp_path, zoo, real_policy) as client:
        for fields, message in cases:
            response = client.post("/programs", json={"source": source, "kind": "binary", "lambda": 0.1, **fields})
            assert response.status_code == 422, response.text
            assert "policy rejected" in response.json()["detail"] and message in response.json()["detail"]
        assert client.get("/programs").json() == [] and httpx.get(f"{real_policy}/policies").json() == []

        body = {"source": source, "kind": "binary", "lambda": 0.1, "algorithm": "fast", "hyperparameters": {"nu": 0.5}}
        created = client.post("/programs", json=body)
        assert created.status_code == 201 and created.json()["hyperparameters"] == {"nu": 0.5}
        program_id = created.json()["id"]
        assert httpx.get(f"{real_policy}/policies/{program_id}").json()["algorithm"] == "fast"

        # the frame goes to the policy as raw bytes; its decision is used and its feedback delivered
        answer = client.post("/answer", json={"program_id": program_id, "image": _png_b64()})
        assert answer.status_code == 200 and answer.json()["fallback"] is False, answer.text
        label = {"decision_id": answer.json()["decision_id"], "label": "yes"}
        assert client.post("/feedback", json=label).status_code == 200
        outbox = lambda: client.get("/readyz").json()["policy_outbox"]  # noqa: E731
        wait_until(lambda: outbox() == 0, "the label delivered to the policy", timeout_s=10, poll_s=0.02)
        assert httpx.get(f"{real_policy}/policies/{program_id}").json()["observed"] == 1


def test_with_the_policy_unreachable_a_program_is_stored_and_checked_on_delivery(tmp_path, zoo):
    """The policy cannot say whether it can build the policy: the program is registered and its
    registration waits in the outbox; the policy checks the spec when it is delivered, and answers
    use the fallback decision meanwhile."""
    body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.1, "algorithm": "oracle"}
    with _router(tmp_path, zoo, f"http://127.0.0.1:{free_port()}", policy_timeout_s=0.5) as client:
        created = client.post("/programs", json=body)
        assert created.status_code == 201, created.text
        assert client.get("/readyz").json()["policy_outbox"] == 1
        answer = client.post("/answer", json={"program_id": created.json()["id"], "image": _png_b64()})
        assert answer.status_code == 200 and answer.json()["fallback"] is True


def test_multipart_upload_is_answered(client):
    program = _register(client)
    files = {"image": ("frame.png", encode_png(np.zeros((80, 100, 3), np.uint8)), "image/png")}
    response = client.post("/answer", data={"program_id": program["id"], "frame_id": "up"}, files=files)
    assert response.status_code == 200, response.text
    assert response.json()["frame_id"] == "up"


def test_an_unreachable_policy_means_fallback_and_queued_feedback(client, policy):
    program = _register(client)
    decided = client.post("/answer", json={"program_id": program["id"], "image": _png_b64()}).json()
    assert decided["fallback"] is False
    policy.up = False
    fallback = client.post("/answer", json={"program_id": program["id"], "image": _png_b64()}).json()
    assert fallback["fallback"] is True
    assert {c["backend"] for c in fallback["trace"]} <= {"detect-small", "vqa-small"}
    for result in (decided, fallback):
        response = client.post("/feedback", json={"decision_id": result["decision_id"], "label": "no"})
        assert response.status_code == 200
    assert policy.received == []
    # only the policy's own decision waits for it: a fallback decision teaches it nothing
    assert client.get("/readyz").json()["policy_outbox"] == 1
    policy.up = True
    client.app.state.service.deliver_soon()
    wait_until(lambda: policy.received, "the label delivered once the policy is back", timeout_s=10, poll_s=0.01)
    assert [m["decision_id"] for m in policy.received] == [decided["decision_id"]]
    assert client.get("/readyz").json()["policy_outbox"] == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/programs", {"query": "is there a cat?", "kind": "binary", "lambda": 0}, 422, "synthesis"),
        ("/programs", {"source": HOSTILE, "kind": "open", "lambda": 0}, 422, "line 2"),
        ("/programs", {"source": "x", "kind": "maybe", "lambda": 0}, 422, "body.kind"),
        ("/answer", {"program_id": "0" * 32, "image": "AAAA"}, 404, ""),
        ("/feedback", {"decision_id": "nope", "label": "yes"}, 422, "body.decision_id"),
    ],
)
def test_bad_requests_get_a_clear_4xx(client, path, body, status, message):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_bad_images_are_422(client):
    program = _register(client)
    for image, message in [("%%%", "not valid base64"), (base64.b64encode(b"hello").decode(), "not a PNG or JPEG")]:
        response = client.post("/answer", json={"program_id": program["id"], "image": image})
        assert response.status_code == 422
        assert message in response.json()["detail"]


def test_auth_and_size_limits(client):
    assert client.get("/programs", headers={"Authorization": "Bearer wrong-key-wrong-key"}).status_code == 401
    assert client.get("/programs", headers={"Authorization": ""}).status_code == 401
    assert client.get("/healthz", headers={"Authorization": ""}).status_code == 200
    big = {"program_id": "0" * 32, "image": "A" * 300_000}
    response = client.post("/answer", json=big)
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["detail"]


def test_settings_refuse_unsafe_defaults():
    with pytest.raises(ValueError, match="without an api_key"):
        RouterSettings(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 16"):
        RouterSettings(api_key="short")


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        (b'{"source": "def execute_command(image', "application/json", "JSON"),
        (b"[1, 2", "application/json", "JSON"),
        (b"\xff\xfe\x00garbage", "application/json", "JSON"),
    ],
)
def test_malformed_json_is_422_and_the_router_keeps_serving(client, content, content_type, message):
    for path in ("/programs", "/answer", "/feedback"):
        response = client.post(path, content=content, headers={"content-type": content_type})
        assert response.status_code == 422, (path, response.text)
        assert message in response.json()["detail"]
    program = _register(client)
    assert client.post("/answer", json={"program_id": program["id"], "image": _png_b64()}).status_code == 200


def test_multipart_without_a_file_or_program_is_422(client):
    program = _register(client)
    no_file = client.post("/answer", data={"program_id": program["id"], "image": "just text"}, files={"x": ("a", b"")})
    assert no_file.status_code == 422 and "image must be an uploaded file" in no_file.json()["detail"]
    files = {"image": ("frame.png", b"not an image at all", "image/png")}
    no_program = client.post("/answer", files=files)
    assert no_program.status_code == 422 and "program_id is required" in no_program.json()["detail"]
    not_image = client.post("/answer", data={"program_id": program["id"]}, files=files)
    assert not_image.status_code == 422 and "not a PNG or JPEG" in not_image.json()["detail"]


def test_backend_settings_reach_the_clients_and_the_executor(tmp_path, zoo):
    """The backoff between retries reaches the executor, and the breaker's threshold the clients of
    the served backends (here on a port nothing listens on: every call fails to connect)."""
    from router.transport import connect
    from services.cluster import free_port

    settings = RouterSettings(
        database=tmp_path / "router.db",
        synthesis_backend=None,
        serve_url=f"http://127.0.0.1:{free_port()}",
        backend_retry_backoff_s=(0.01, 0.02),
        backend_breaker_failures=2,
        backend_breaker_reset_s=60,
    )
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with TestClient(app):
        assert app.state.service.answerer.executor.retry_backoff_s == (0.01, 0.02)
    transport = connect(BackendCatalog(backends=zoo.specs), settings)
    assert set(transport.kinds.values()) == {"http"}
    detect = transport.backends["detect-small"].model
    image = np.zeros((8, 8, 3), np.uint8)
    for _ in range(2):
        with pytest.raises(Exception, match="unreachable"):
            detect.detect(image, "cup")
    with pytest.raises(Exception, match="circuit open"):
        detect.detect(image, "cup")
    transport.close()


def test_a_label_is_acknowledged_once_stored_even_when_delivering_it_fails(client, policy, monkeypatch):
    """The label and its message for the policy are committed together; a failure while sending
    the message is the outbox's to retry, not the client's."""
    program = _register(client)
    answer = client.post("/answer", json={"program_id": program["id"], "image": _png_b64()}).json()
    tried = threading.Event()

    def broken(program_id: str, batch: FeedbackList) -> FeedbackListReply:
        tried.set()
        raise RuntimeError("the connection broke mid-delivery")

    monkeypatch.setattr(policy, "feedback_batch", broken)
    reply = client.post("/feedback", json={"decision_id": answer["decision_id"], "label": "yes"})
    assert reply.status_code == 200, reply.text
    assert tried.wait(10)
    assert client.get("/readyz").json()["policy_outbox"] == 1  # kept for the next round
    monkeypatch.undo()
    client.app.state.service.deliver_soon()
    wait_until(lambda: policy.received, "the label delivered on the next round", timeout_s=10, poll_s=0.01)
    assert policy.received[-1]["decision_id"] == answer["decision_id"]
    assert client.get("/readyz").json()["policy_outbox"] == 0


def _program_info(client: TestClient) -> dict[str, tuple[str, str]]:
    """``fmprog_program_info`` as scraped: each program's (name, tenant)."""
    text = client.get("/metrics", headers={"Authorization": ""}).text
    families = [f for f in text_string_to_metric_families(text) if f.name == "fmprog_program_info"]
    return {s.labels["program"]: (s.labels["name"], s.labels["tenant"]) for f in families for s in f.samples}


def test_a_program_s_name_is_in_every_read_and_in_the_metrics(client):
    source = example("person_on_bike")
    response = client.post("/programs", json={"source": source, "kind": "binary", "name": "Bikes at gate 3"})
    assert response.status_code == 201, response.text
    program = response.json()
    assert program["name"] == "Bikes at gate 3"
    assert client.get(f"/programs/{program['id']}").json()["name"] == "Bikes at gate 3"
    assert [p["name"] for p in client.get("/programs").json()] == ["Bikes at gate 3"]
    unnamed = client.post("/programs", json={"source": source, "kind": "binary"}).json()
    assert unnamed["name"] is None
    assert _program_info(client) == {program["id"]: ("Bikes at gate 3", "default"), unnamed["id"]: ("", "default")}
    assert client.delete(f"/programs/{program['id']}").status_code == 204
    assert _program_info(client) == {unnamed["id"]: ("", "default")}
    refused = client.post("/programs", json={"source": source, "kind": "binary", "name": "bikes/cars"})
    assert refused.status_code == 422 and "body.name" in refused.json()["detail"]


def test_a_typo_and_a_program_without_a_routed_call_are_422_naming_the_problem(client):
    typo = 'def execute_command(image):\n    image_patch = ImagePatch(image)\n    return image_patch.fnd("car")\n'
    response = client.post("/programs", json={"source": typo, "kind": "open"})
    assert response.status_code == 422
    assert response.json()["detail"] == "program rejected: line 3: ImagePatch has no method 'fnd'; did you mean 'find'?"
    response = client.post(
        "/programs", json={"source": 'def execute_command(image):\n    return "no"\n', "kind": "binary"}
    )
    assert response.status_code == 422 and "makes no routed call" in response.json()["detail"]
    assert client.get("/programs").json() == []
