"""The policy service's HTTP API (in process, through FastAPI's test client): create, decide, feed
back, stats, metrics; and bad input answered with a clear 4xx while the service keeps serving."""

from __future__ import annotations

import base64
import uuid

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fmprog.images import encode_png
from policy.app import create_app
from policy.settings import PolicySettings
from tests.servers import serving

PROGRAM = "c" * 32
SPEC = {
    "sites": [
        {"id": "find@3:4", "function": "detect", "backends": [{"name": "ds", "cost": 1}, {"name": "dl", "cost": 5}]},
        {"id": "query@4:8", "function": "vqa", "backends": [{"name": "vs", "cost": 2}, {"name": "vl", "cost": 9}]},
    ],
    "lambda": 0.01,
    "algorithm": "fast",
}


@pytest.fixture
def client(tmp_path):
    settings = PolicySettings(state_dir=tmp_path / "policy", max_request_bytes=100_000, train_interval_s=3600)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def image(seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    return base64.b64encode(encode_png(pixels)).decode()


def decide(client: TestClient, seed: int = 0) -> tuple[str, dict]:
    decision_id = uuid.uuid4().hex
    response = client.post(f"/policies/{PROGRAM}/decisions", json={"decision_id": decision_id, "image": image(seed)})
    assert response.status_code == 200, response.text
    return decision_id, response.json()


def test_create_decide_feed_back_and_scrape(client):
    created = client.put(f"/policies/{PROGRAM}", json=SPEC)
    assert created.status_code == 200, created.text
    decision_id, decision = decide(client)
    assert set(decision["backends"]) == {"find@3:4", "query@4:8"}
    feedback = {
        "decision_id": decision_id,
        "reward": -1.0,
        "executed_sites": ["find@3:4"],
        "costs": {"find@3:4": 1.0},
    }
    first = client.post(f"/policies/{PROGRAM}/feedback", json=feedback)
    again = client.post(f"/policies/{PROGRAM}/feedback", json=feedback)
    assert (first.json()["repeat"], again.json()["repeat"]) == (False, True)
    conflict = client.post(f"/policies/{PROGRAM}/feedback", json={**feedback, "reward": 1.0})
    assert conflict.status_code == 409 and "different feedback" in conflict.json()["detail"]
    info = client.get(f"/policies/{PROGRAM}").json()
    assert info["observed"] == 1 and info["pending"] == 0
    samples = {
        (s.name, s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == "fmprog_policy_feedback_total"
    }
    assert samples == {("fmprog_policy_feedback_total", "new"): 1.0, ("fmprog_policy_feedback_total", "repeat"): 1.0}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("put", f"/policies/{PROGRAM}", {**SPEC, "algorithm": "oracle"}, 422, "unknown algorithm 'oracle'"),
        ("put", f"/policies/{PROGRAM}", {**SPEC, "lambda": -1}, 422, "lambda"),
        ("put", f"/policies/{PROGRAM}", {**SPEC, "sites": []}, 422, "sites"),
        ("post", f"/policies/{'d' * 32}/decisions", {"decision_id": "x", "image": image()}, 404, "d" * 32),
        ("post", f"/policies/{PROGRAM}/decisions", {"decision_id": "x", "image": "%%%"}, 422, "base64"),
        ("post", f"/policies/{PROGRAM}/decisions", {"decision_id": "x", "image": "aGVsbG8="}, 422, "PNG or JPEG"),
        ("post", f"/policies/{PROGRAM}/decisions", {"image": image()}, 422, "decision_id"),
        ("post", f"/policies/{PROGRAM}/feedback", {"decision_id": "nope", "reward": 1.0}, 404, "nope"),
        ("post", f"/policies/{PROGRAM}/feedback", {"decision_id": "x", "reward": "high"}, 422, "reward"),
        (
            "post",
            f"/policies/{'d' * 32}/feedback/batch",
            {"feedback": [{"decision_id": "x", "reward": 1}]},
            404,
            "d" * 32,
        ),
        ("post", f"/policies/{PROGRAM}/feedback/batch", {"feedback": []}, 422, "feedback"),
        ("post", f"/policies/{PROGRAM}/feedback/batch", {"feedback": [{"reward": 1.0}]}, 422, "decision_id"),
        ("delete", f"/policies/{'d' * 32}", None, 404, "d" * 32),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_the_service_keeps_serving(client, method, path, body, status, message):
    assert client.put(f"/policies/{PROGRAM}", json=SPEC).status_code == 200
    response = client.request(method.upper(), path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    decide(client)  # still serving


def test_malformed_and_oversized_bodies(client):
    assert client.put(f"/policies/{PROGRAM}", json=SPEC).status_code == 200
    truncated = client.post(
        f"/policies/{PROGRAM}/decisions",
        content=b'{"decision_id": "x", "ima',
        headers={"content-type": "application/json"},
    )
    assert truncated.status_code == 422 and "JSON" in truncated.json()["detail"]
    huge = client.post(f"/policies/{PROGRAM}/decisions", json={"decision_id": "x", "image": "A" * 200_000})
    assert huge.status_code == 413 and "exceeds the limit" in huge.json()["detail"]
    decide(client)


def test_a_decision_id_used_twice_is_409(client):
    assert client.put(f"/policies/{PROGRAM}", json=SPEC).status_code == 200
    decision_id, _ = decide(client)
    again = client.post(f"/policies/{PROGRAM}/decisions", json={"decision_id": decision_id, "image": image(1)})
    assert again.status_code == 409 and "was used before" in again.json()["detail"]
    assert client.get(f"/policies/{PROGRAM}").json()["pending"] == 1


@pytest.fixture
def served(tmp_path):
    """The policy service over real HTTP (uvicorn in a thread)."""
    settings = PolicySettings(state_dir=tmp_path / "served", max_request_bytes=100_000, train_interval_s=3600)
    with serving(create_app(settings)) as url:
        yield url


def test_a_spec_is_checked_without_being_stored_over_http(served):
    accepted = httpx.post(f"{served}/policies/check", json={**SPEC, "hyperparameters": {"nu": 0.5}})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["algorithm"] == "fast" and accepted.json()["hyperparameters"]["nu"] == 0.5
    refused = [
        ({**SPEC, "algorithm": "oracle"}, "unknown algorithm 'oracle'"),
        ({**SPEC, "hyperparameters": {"nu": -1}}, "hyperparameters.nu"),
        ({**SPEC, "hyperparameters": {"bogus": 1}}, "hyperparameters.bogus"),
        (
            {**SPEC, "algorithm": "static", "hyperparameters": {"mode": "map", "backends": {"x": "ds"}}},
            "unknown call site",
        ),
        ({**SPEC, "lambda": -1}, "lambda"),
    ]
    for body, message in refused:
        response = httpx.post(f"{served}/policies/check", json=body)
        assert response.status_code == 422 and message in response.json()["detail"], response.text
    assert httpx.get(f"{served}/policies").json() == []
    assert httpx.put(f"{served}/policies/{PROGRAM}", json={**SPEC, "algorithm": "oracle"}).status_code == 422
    assert httpx.get(f"{served}/policies").json() == []


def test_decide_takes_the_raw_image_bytes_over_http(served):
    assert httpx.put(f"{served}/policies/{PROGRAM}", json=SPEC).status_code == 200
    png = base64.b64decode(image())
    url = f"{served}/policies/{PROGRAM}/decisions"
    for content_type in ("application/octet-stream", "image/png"):
        decision_id = uuid.uuid4().hex
        reply = httpx.post(
            url, params={"decision_id": decision_id}, content=png, headers={"content-type": content_type}
        )
        assert reply.status_code == 200, reply.text
        assert set(reply.json()["backends"]) == {"find@3:4", "query@4:8"} and "context" not in reply.json()
    raw = {"content-type": "application/octet-stream"}
    no_id = httpx.post(url, content=png, headers=raw)
    assert no_id.status_code == 422 and "decision_id" in no_id.json()["detail"]
    not_image = httpx.post(url, params={"decision_id": "y"}, content=b"not an image", headers=raw)
    assert not_image.status_code == 422 and "PNG or JPEG" in not_image.json()["detail"]
    feedback = {"decision_id": decision_id, "reward": 1.0, "executed_sites": ["find@3:4"], "costs": {"find@3:4": 1}}
    assert httpx.post(f"{served}/policies/{PROGRAM}/feedback", json=feedback).json()["repeat"] is False
    assert httpx.get(f"{served}/policies/{PROGRAM}").json()["pending"] == 1  # the first raw decision


def test_an_empty_raw_body_is_a_decision_without_the_frame(client):
    """A raw body with no bytes asks for a decision on no frame: a policy that reads no pixels makes
    it, one that reads them refuses it (422); a raw body that is not an image is still a 422."""
    raw = {"content-type": "application/octet-stream"}
    blind, seeing = "b" * 32, PROGRAM
    assert client.put(f"/policies/{blind}", json={**SPEC, "algorithm": "ucb1"}).status_code == 200
    assert client.put(f"/policies/{seeing}", json=SPEC).status_code == 200
    decided = client.post(f"/policies/{blind}/decisions", params={"decision_id": "d1"}, content=b"", headers=raw)
    assert decided.status_code == 200, decided.text
    assert set(decided.json()["backends"]) == {"find@3:4", "query@4:8"}
    assert client.get(f"/policies/{blind}").json()["pending"] == 1
    refused = client.post(f"/policies/{seeing}/decisions", params={"decision_id": "d2"}, content=b"", headers=raw)
    assert refused.status_code == 422 and "reads the frame" in refused.json()["detail"]
    not_image = client.post(f"/policies/{blind}/decisions", params={"decision_id": "d3"}, content=b"\0", headers=raw)
    assert not_image.status_code == 422 and "PNG or JPEG" in not_image.json()["detail"]
    too_long = client.post(f"/policies/{blind}/decisions", params={"decision_id": "x" * 65}, content=b"", headers=raw)
    assert too_long.status_code == 422 and "decision_id" in too_long.json()["detail"]
    assert client.get(f"/policies/{blind}").json()["pending"] == 1


def test_the_router_client_speaks_the_contract_over_http(served):
    """The router's client of the policy: check, register, decide on raw bytes, feedback (one, and
    a list answered per item), delete."""
    from fmprog.contract import Feedback, FeedbackList, PolicySpec
    from router.policy_client import HttpPolicyClient, PolicyRejected

    client = HttpPolicyClient(served)
    spec = PolicySpec.model_validate(SPEC)
    client.check(spec)
    with pytest.raises(PolicyRejected, match="unknown algorithm") as refused:
        client.check(spec.model_copy(update={"algorithm": "oracle"}))
    assert refused.value.detail.startswith("unknown algorithm 'oracle'")
    client.register(PROGRAM, spec)
    decision = client.decide(PROGRAM, "d1", base64.b64decode(image()))
    assert decision.algorithm == "fast" and set(decision.backends) == {"find@3:4", "query@4:8"}
    client.feedback(PROGRAM, Feedback(decision_id="d1", loss=0.0, executed_sites=["find@3:4"], costs={"find@3:4": 1}))
    assert httpx.get(f"{served}/policies/{PROGRAM}").json()["observed"] == 1
    for decision_id in ("d2", "d3"):
        client.decide(PROGRAM, decision_id, base64.b64decode(image()))
    labels = [
        Feedback(decision_id=d, reward=1.0, executed_sites=["find@3:4"], costs={"find@3:4": 1})
        for d in ("d1", "d2", "d3", "nope")
    ]
    reply = client.feedback_batch(PROGRAM, FeedbackList(feedback=labels))
    assert [r.outcome for r in reply.results] == ["conflict", "accepted", "accepted", "unknown"]
    assert httpx.get(f"{served}/policies/{PROGRAM}").json()["observed"] == 3
    with pytest.raises(PolicyRejected, match="no policy"):
        client.feedback_batch("0" * 32, FeedbackList(feedback=labels[:1]))
    client.delete(PROGRAM)
    assert httpx.get(f"{served}/policies").json() == []
    client.close()
