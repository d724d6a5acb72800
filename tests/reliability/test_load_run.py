"""The load run's client (``benchmarks/load.py``) counts what it sent, what failed and what was
labelled, against a router (with the fake zoo's backends) and a policy, both over real HTTP."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest

from benchmarks.load import latency, load, logged_problems
from fmprog.backends import BackendCatalog
from fmprog.images import encode_png
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app
from router.settings import RouterSettings
from tests.fakes import Zoo, box
from tests.router.conftest import example
from tests.servers import serving, wait_until

FRAME = base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()
FRAMES = [(FRAME, "yes"), (FRAME, "no")]


@pytest.fixture
def cluster(tmp_path, zoo: Zoo):
    """The router's and the policy's URLs, and a registered program that the policy learns for."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    with serving(create_policy_app(PolicySettings(state_dir=tmp_path / "policy", train_interval_s=3600))) as policy:
        settings = RouterSettings(
            database=tmp_path / "router.db", policy_url=policy, synthesis_backend=None, program_workers=0
        )
        app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
        with serving(app) as router:
            body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.1, "algorithm": "fast"}
            program = httpx.post(f"{router}/programs", json=body, timeout=30)
            assert program.status_code == 201, program.text
            yield router, policy, program.json()["id"]


def _observed(policy: str, program_id: str) -> int:
    return httpx.get(f"{policy}/policies/{program_id}").json()["observed"]


def test_every_frame_is_answered_then_labelled_and_counted(cluster):
    router, policy, program_id = cluster
    tally, elapsed = asyncio.run(load(router, program_id, FRAMES, 20, 4))
    assert elapsed > 0 and not tally.failures and not tally.program_errors
    assert tally.answers == 20 and len(tally.answer_s) == 20 and len(tally.feedback_s) == 20
    assert tally.acknowledged == tally.for_the_policy == 20 and tally.fallback_answers == 0
    wait_until(lambda: _observed(policy, program_id) == 20, "every label delivered", timeout_s=30, poll_s=0.05)


def test_a_warm_up_answers_without_labelling(cluster):
    router, policy, program_id = cluster
    tally, _ = asyncio.run(load(router, program_id, FRAMES, 6, 3, feedback=False))
    assert tally.answers == 6 and tally.acknowledged == 0 and tally.feedback_s == []
    assert _observed(policy, program_id) == 0


def test_refused_requests_are_errors_by_route_and_status(cluster):
    router, _, _ = cluster
    tally, _ = asyncio.run(load(router, "0" * 32, FRAMES, 5, 2))
    assert tally.answers == 0 and dict(tally.failures) == {"/answer 404": 5} and len(tally.failed_at_s) == 5


def test_what_the_services_logged_as_going_wrong(tmp_path):
    (tmp_path / "router.log").write_text(
        'INFO:     127.0.0.1:5 - "POST /answer HTTP/1.1" 200 OK\n'
        'INFO:     127.0.0.1:5 - "POST /answer HTTP/1.1" 503 Service Unavailable\n'
        "WARNING:router.service:the policy failed 5 decisions in a row\n"
        "INFO:     Started server process [7]\n"
    )
    problems = logged_problems(tmp_path, "router")
    assert len(problems) == 2 and all(line.startswith("router: ") for line in problems)
    assert problems[0].endswith('"POST /answer HTTP/1.1" 503 Service Unavailable') and "WARNING" in problems[1]
    assert logged_problems(tmp_path, "policy") == []


def test_latency_in_milliseconds():
    assert latency([0.001] * 99 + [1.0]) == {"p50_ms": 1.0, "p99_ms": 11.0, "mean_ms": 11.0, "max_ms": 1000.0}
    assert latency([]) == {}
