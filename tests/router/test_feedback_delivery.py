"""Labels reach the policy off the request path, over real HTTP between the router and the policy
service, on SQLite and on PostgreSQL: ``POST /feedback`` returns once the label is stored, never
waiting for the policy; the outbox's delivery thread sends the labels queued meanwhile in one
request, each learned once; a label the policy refuses is a dead letter on its own; the thread
retries while the policy is down and stops when the router closes."""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fmprog.backends import BackendCatalog
from fmprog.contract import FeedbackList, FeedbackListReply
from fmprog.images import encode_png
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from policy.state import PolicyState
from router.app import create_app
from router.policy_client import HttpPolicyClient, PolicyUnavailable
from router.settings import RouterSettings
from tests.fakes import box
from tests.router.conftest import example
from tests.servers import serving, wait_until

pytestmark = pytest.mark.timeout(120)
FRAME = base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()


class Gated:
    """The policy service's client, whose feedback lists wait for ``gate`` (``entered`` says one
    is waiting) and are recorded (``lists``: the decision ids each carried); ``down`` makes them fail
    as an unreachable policy would."""

    def __init__(self, inner: HttpPolicyClient) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.down = False
        self.lists: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def feedback_batch(self, program_id: str, batch: FeedbackList) -> FeedbackListReply:
        self.entered.set()
        assert self.gate.wait(60)
        if self.down:
            raise PolicyUnavailable("policy down (test)")
        self.lists.append([f.decision_id or "" for f in batch.feedback])
        return self.inner.feedback_batch(program_id, batch)


@contextlib.contextmanager
def cluster(tmp_path: Path, zoo, database: str | Path, **settings: Any) -> Iterator[tuple[str, str, Gated]]:
    """The policy service and a router on it (its store in ``database``), each served over HTTP;
    the router's URL, the policy's, and the router's gated client of the policy."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    policy_app = create_policy_app(PolicySettings(state_dir=tmp_path / "policy", train_interval_s=3600))
    with serving(policy_app) as policy_url:
        client = Gated(HttpPolicyClient(policy_url, timeout_s=30))
        router_settings = RouterSettings(database=str(database), synthesis_backend=None, **settings)
        router_app = create_app(
            router_settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry(), policy=client
        )
        try:
            with serving(router_app) as router_url:
                yield router_url, policy_url, client
        finally:
            client.inner.close()


def _answers(router: str, count: int) -> tuple[str, list[str]]:
    """A program registered (its policy knows it on return) and ``count`` frames it answered."""
    body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.001, "algorithm": "fast"}
    program = httpx.post(f"{router}/programs", json=body, timeout=30)
    assert program.status_code == 201, program.text
    program_id = program.json()["id"]
    decisions = []
    for _ in range(count):
        answer = httpx.post(f"{router}/answer", json={"program_id": program_id, "image": FRAME}, timeout=30)
        assert answer.status_code == 200 and answer.json()["fallback"] is False, answer.text
        decisions.append(answer.json()["decision_id"])
    return program_id, decisions


def _label(router: str, decision_id: str) -> None:
    reply = httpx.post(f"{router}/feedback", json={"decision_id": decision_id, "label": "yes"}, timeout=10)
    assert reply.status_code == 200 and reply.json()["repeat"] is False, reply.text


def _outbox(router: str) -> int:
    return httpx.get(f"{router}/readyz").json()["policy_outbox"]


def _samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return {tuple(sorted(s.labels.items())): s.value for f in families for s in f.samples if s.name == name}


def test_labels_are_acknowledged_while_the_policy_waits_and_then_learned_once_in_one_request(tmp_path, zoo, database):
    """While the policy holds the first label's request, nine more labels are acknowledged (they
    would wait for it if delivered on the request path); once it answers, the nine go in one
    request, and the policy has learned each of the ten once."""
    with cluster(tmp_path, zoo, database) as (router, policy, client):
        program_id, decisions = _answers(router, 10)
        client.gate.clear()
        _label(router, decisions[0])
        assert client.entered.wait(30)  # the delivery thread is in the policy's request
        for decision_id in decisions[1:]:
            _label(router, decision_id)  # acknowledged: stored, not delivered
        assert _outbox(router) == 10 and _samples(router, "fmprog_policy_outbox")[()] >= 1
        assert httpx.get(f"{policy}/policies/{program_id}").json()["observed"] == 0

        client.gate.set()
        wait_until(lambda: _outbox(router) == 0, "the labels delivered", timeout_s=30, poll_s=0.02)
        assert client.lists == [decisions[:1], decisions[1:]]
        assert httpx.get(f"{policy}/policies/{program_id}").json()["observed"] == 10
        learned = _samples(policy, "fmprog_policy_feedback_total")
        assert learned[(("outcome", "new"), ("program", program_id))] == 10
        assert (("outcome", "repeat"), ("program", program_id)) not in learned
        wait_until(lambda: _samples(router, "fmprog_policy_outbox")[()] == 0, "the gauge follows the outbox")


def test_a_label_the_policy_refuses_is_a_dead_letter_alone_and_the_rest_of_its_request_is_learned(
    tmp_path, zoo, database
):
    with cluster(tmp_path, zoo, database) as (router, policy, client):
        program_id, decisions = _answers(router, 4)
        client.gate.clear()
        _label(router, decisions[0])
        assert client.entered.wait(30)
        # the policy forgets one decision behind the router's back: it will refuse its label
        forgotten = httpx.post(f"{policy}/policies/{program_id}/expired", json={"decision_ids": [decisions[2]]})
        assert forgotten.json()["dropped"] == 1
        for decision_id in decisions[1:]:
            _label(router, decision_id)
        client.gate.set()
        wait_until(lambda: _outbox(router) == 0, "the labels delivered", timeout_s=30, poll_s=0.02)
        assert client.lists == [decisions[:1], decisions[1:]]

        [letter] = httpx.get(f"{router}/dead-letters").json()
        assert letter["kind"] == "feedback" and letter["payload"]["decision_id"] == decisions[2]
        assert "no pending decision" in letter["reason"]
        assert _samples(router, "fmprog_policy_dead_letters_total")[(("kind", "feedback"),)] == 1
        assert httpx.get(f"{policy}/policies/{program_id}").json()["observed"] == 3


def test_labels_wait_while_the_policy_is_down_and_are_retried_without_a_new_one(tmp_path, zoo, db_path):
    with cluster(tmp_path, zoo, db_path, outbox_retry_s=0.2) as (router, policy, client):
        program_id, decisions = _answers(router, 3)
        client.down = True
        for decision_id in decisions:
            _label(router, decision_id)
        assert client.entered.wait(30) and _outbox(router) == 3
        client.down = False  # no label comes after: the thread's own retry delivers them
        wait_until(lambda: _outbox(router) == 0, "the labels retried", timeout_s=30, poll_s=0.05)
        assert httpx.get(f"{policy}/policies/{program_id}").json()["observed"] == 3


def test_closing_the_router_delivers_what_it_took_and_stops_the_delivery_thread(tmp_path, zoo, db_path):
    before = {t for t in threading.enumerate() if t.name == "policy-outbox"}
    with cluster(tmp_path, zoo, db_path, outbox_retry_s=3600) as (router, _, client):
        [thread] = [t for t in threading.enumerate() if t.name == "policy-outbox" and t not in before]
        program_id, decisions = _answers(router, 2)
        client.gate.clear()
        _label(router, decisions[0])
        assert client.entered.wait(30)
        _label(router, decisions[1])
        threading.Timer(0.5, client.gate.set).start()  # the policy answers while the router closes
    assert not thread.is_alive()
    assert client.lists == [decisions[:1], decisions[1:]]
    logged = PolicyState(tmp_path / "policy").feedback_after(program_id, 0)
    assert [feedback.decision_id for _, _, feedback in logged] == decisions
