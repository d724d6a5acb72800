"""Over real HTTP (the router and the policy service, each in uvicorn): a policy spec that would make
the policy unusable is refused at registration, and a message the policy refuses is kept as a dead
letter (logged, counted, listed), never silently dropped."""

from __future__ import annotations

import base64
import logging
from typing import Any

import httpx
import numpy as np
import pytest

from fmprog.backends import BackendCatalog
from fmprog.images import encode_png
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app
from router.settings import RouterSettings
from tests.fakes import box
from tests.router.conftest import example
from tests.servers import serving, wait_until


@pytest.fixture
def cluster(tmp_path, zoo):
    """(router URL, policy URL), both served over HTTP."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    policy_settings = PolicySettings(state_dir=tmp_path / "policy", train_interval_s=3600)
    with serving(create_policy_app(policy_settings)) as policy_url:
        settings = RouterSettings(
            database=tmp_path / "router.db", policy_url=policy_url, synthesis_backend=None, outbox_retry_s=3600
        )
        router = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
        with serving(router) as router_url:
            yield router_url, policy_url


def _program(lam: float) -> dict[str, Any]:
    return {"source": example("person_on_bike"), "kind": "binary", "lambda": lam, "algorithm": "fast"}


def _frame() -> str:
    return base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()


def test_a_lambda_that_drowns_the_task_term_is_refused_at_registration(cluster):
    router, policy = cluster
    response = httpx.post(f"{router}/programs", json=_program(1e308), timeout=60)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "lambda 1e+308" in detail and "largest candidate cost" in detail and "1e+12" in detail
    assert httpx.get(f"{router}/programs").json() == [] and httpx.get(f"{policy}/policies").json() == []

    spec = {"sites": [{"id": "s", "function": "detect", "backends": [{"name": "detect-large", "cost": 200}]}]}
    direct = httpx.put(f"{policy}/policies/p", json={**spec, "lambda": 1e11}, timeout=60)
    assert direct.status_code == 422 and "choose a smaller lambda" in direct.json()["detail"]
    assert httpx.put(f"{policy}/policies/p", json={**spec, "lambda": 1e9}, timeout=60).status_code == 200


def test_feedback_the_policy_refuses_is_kept_as_a_dead_letter(cluster, caplog):
    router, policy = cluster
    program = httpx.post(f"{router}/programs", json=_program(0.1)).json()
    answered = httpx.post(f"{router}/answer", json={"program_id": program["id"], "image": _frame()}).json()
    assert answered["fallback"] is False
    # the policy forgets the program behind the router's back: it will refuse the feedback (404)
    assert httpx.delete(f"{policy}/policies/{program['id']}").status_code == 204

    with caplog.at_level(logging.WARNING, logger="router.outbox"):
        feedback = httpx.post(f"{router}/feedback", json={"decision_id": answered["decision_id"], "label": "yes"})
        assert feedback.status_code == 200, feedback.text  # acknowledged, delivered in the background ...
        dead = lambda: httpx.get(f"{router}/readyz").json()["policy_dead_letters"]  # noqa: E731
        wait_until(lambda: dead() == 1, "the refused label kept as a dead letter", timeout_s=10, poll_s=0.02)
    assert any("dead letter" in r.getMessage() and program["id"] in r.getMessage() for r in caplog.records)

    ready = httpx.get(f"{router}/readyz").json()  # ... and not lost: kept aside, visible, counted
    assert ready["policy_outbox"] == 0 and ready["policy_dead_letters"] == 1
    [letter] = httpx.get(f"{router}/dead-letters").json()
    assert letter["kind"] == "feedback" and letter["program_id"] == program["id"]
    assert letter["payload"]["decision_id"] == answered["decision_id"] and "no policy" in letter["reason"]
    metrics = httpx.get(f"{router}/metrics").text
    assert 'fmprog_policy_dead_letters_total{kind="feedback"} 1.0' in metrics
    assert httpx.get(f"{router}/dead-letters", params={"offset": 1}).json() == []
