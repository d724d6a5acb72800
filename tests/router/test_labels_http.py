"""Learning without a label on every frame, over real HTTP between the router and the policy
service (``cascade``; fake models): label budgets and the labels asked for, the teacher's runs,
the label window's expiry (410 afterwards, the policy told) and lists of labels with mixed outcomes."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fmprog.backends import BackendCatalog
from fmprog.images import encode_png
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app
from router.settings import RouterSettings
from router.store import Store
from tests.fakes import COSTS, box
from tests.router.conftest import example
from tests.servers import serving

pytestmark = pytest.mark.timeout(180)
FRAME = base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()


@contextlib.contextmanager
def cluster(tmp_path, zoo, **settings: Any) -> Iterator[tuple[httpx.Client, str]]:
    """The policy service and a router on it, each served over HTTP; a client of the router and
    the policy's URL. The fake zoo finds a person on a bicycle; the small VQA says no, the large yes."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.models["vqa-small"].answer = lambda image, question: "no"
    zoo.models["vqa-large"].answer = lambda image, question: "yes"
    policy_app = create_policy_app(PolicySettings(state_dir=tmp_path / "policy", train_interval_s=3600))
    with serving(policy_app) as policy_url:
        router_settings = RouterSettings(
            database=tmp_path / "router.db",
            policy_url=policy_url,
            synthesis_backend=None,
            outbox_retry_s=0.2,
            policy_timeout_s=30,  # a loaded machine must not turn the decision into the fallback
            **settings,
        )
        app = create_app(router_settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
        with serving(app) as router_url, httpx.Client(base_url=router_url, timeout=60) as client:
            yield client, policy_url


def register(client: httpx.Client, **fields: Any) -> str:
    body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.001, "algorithm": "cascade", **fields}
    reply = client.post("/programs", json=body)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def answer(client: httpx.Client, program_id: str, fallback: bool | None = False) -> dict[str, Any]:
    """Answer a frame of the program; its answer must have been decided by the policy (``fallback``
    False), by the fallback (True), or either (None)."""
    reply = client.post("/answer", json={"program_id": program_id, "image": FRAME})
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["error"] is None and fallback in (None, result["fallback"])
    return result


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def learned(policy_url: str, program_id: str) -> dict[str, Any]:
    return httpx.get(f"{policy_url}/policies/{program_id}").json()


def drained(client: httpx.Client) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz").json()["policy_outbox"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get("/readyz").json()["policy_outbox"] == 0


def wait_for(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_label_budget_asks_for_a_share_of_the_labels_and_takes_any(tmp_path, zoo):
    with cluster(tmp_path, zoo) as (client, policy_url):
        program_id = register(client, labels={"fraction": 0.25})
        assert client.get(f"/programs/{program_id}").json()["labels"] == {"fraction": 0.25, "per_hour": None}
        answers = [answer(client, program_id) for _ in range(40)]
        requested = [a for a in answers if a["label_requested"]]
        # one token at the start, 0.25 a frame: at most 11 over 40 frames; the quantile threshold
        # over the doubts lets about a quarter through
        assert 5 <= len(requested) <= 11, len(requested)
        assert metric(client, "fmprog_labels_requested_total", program=program_id) == len(requested)
        for result in requested:
            reply = client.post("/feedback", json={"decision_id": result["decision_id"], "label": "yes"})
            assert reply.status_code == 200 and reply.json()["source"] == "client"
        unasked = next(a for a in answers if not a["label_requested"])  # still taken, and learned
        assert client.post("/feedback", json={"decision_id": unasked["decision_id"], "label": "yes"}).status_code == 200
        drained(client)
        assert learned(policy_url, program_id)["observed"] == len(requested) + 1
        # without a budget every label is asked for
        everything = register(client)
        assert all(answer(client, everything)["label_requested"] for _ in range(5))


@pytest.mark.parametrize("pick", ["random", "doubt"])
def test_a_teacher_labels_its_share_with_its_own_runs_charged_apart(tmp_path, zoo, pick):
    with cluster(tmp_path, zoo) as (client, policy_url):
        program_id = register(client, teacher={"fraction": 0.5, "pick": pick}, labels={"fraction": 0.01})
        answers = [answer(client, program_id) for _ in range(12)]
        taught = [a for a in answers if a["teacher"]]
        assert taught and not any(a["label_requested"] for a in taught)
        wait_for(lambda: metric(client, "fmprog_teacher_labels_total", program=program_id) == len(taught))
        assert metric(client, "fmprog_teacher_labels_total", program=program_id, outcome="labelled") == len(taught)
        # the teacher runs the dearest candidates: detect-large twice (bicycle, person), vqa-large once
        run_cost = 2 * COSTS["detect-large"] + COSTS["vqa-large"]
        assert metric(client, "fmprog_teacher_cost_total", program=program_id) == pytest.approx(len(taught) * run_cost)
        assert metric(client, "fmprog_teacher_cost_total", program=program_id, backend="vqa-large") == pytest.approx(
            len(taught) * COSTS["vqa-large"]
        )
        with Store(tmp_path / "router.db") as store:
            stored = store.get_feedback(taught[0]["decision_id"])
        assert stored is not None and stored.source == "teacher" and stored.label == "yes"
        assert stored.teacher is not None and stored.teacher.cost == pytest.approx(run_cost)
        assert {call.backend for call in stored.teacher.trace} == {"detect-large", "vqa-large"}
        # a client's label for a taught frame: the same is a repeat, another a conflict naming the teacher
        same = client.post("/feedback", json={"decision_id": taught[0]["decision_id"], "label": "yes"})
        assert same.status_code == 200 and same.json()["repeat"] and same.json()["source"] == "teacher"
        other = client.post("/feedback", json={"decision_id": taught[0]["decision_id"], "label": "no"})
        assert other.status_code == 409 and "teacher" in other.json()["detail"]
        # the teacher's labels teach the policy, but are not ground truth in the quality counts
        drained(client)
        assert learned(policy_url, program_id)["observed"] == len(taught)
        assert metric(client, "fmprog_program_labels_total", program=program_id) == 0
        assert metric(client, "fmprog_feedback_total", program=program_id, outcome="teacher") == len(taught)


def test_a_teacher_naming_a_backend_no_site_can_use_is_refused(tmp_path, zoo):
    with cluster(tmp_path, zoo) as (client, _):
        body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.001, "algorithm": "cascade"}
        reply = client.post("/programs", json={**body, "teacher": {"fraction": 0.1, "backends": {"vqa": "vqa-tiny"}}})
        assert reply.status_code == 422 and "vqa-tiny" in reply.json()["detail"]
        reply = client.post("/programs", json={**body, "labels": {"fraction": 0.1, "per_hour": 5}})
        assert reply.status_code == 422 and "exactly one" in reply.json()["detail"]


@pytest.mark.parametrize("expiry_reward", [None, 0.0])
def test_decisions_left_unlabelled_expire_and_their_late_labels_get_410(tmp_path, zoo, expiry_reward):
    window = {"label_window_s": 1.0, "expire_interval_s": 0.1, "expiry_reward": expiry_reward}
    with cluster(tmp_path, zoo, **window) as (client, policy_url):
        program_id = register(client)
        first, late, never = (answer(client, program_id) for _ in range(3))
        assert client.post("/feedback", json={"decision_id": first["decision_id"], "label": "yes"}).status_code == 200
        wait_for(lambda: metric(client, "fmprog_decisions_expired_total", program=program_id) == 2)
        reply = client.post("/feedback", json={"decision_id": late["decision_id"], "label": "yes"})
        assert reply.status_code == 410 and "label window has closed" in reply.json()["detail"]
        assert metric(client, "fmprog_feedback_total", program=program_id, outcome="expired") == 1
        drained(client)
        state = learned(policy_url, program_id)
        assert state["pending"] == 0  # the policy was told: nothing waits for labels that cannot come
        # forgotten, or learned from with the default reward and the answers' real costs
        assert state["observed"] == (1 if expiry_reward is None else 3)
        with Store(tmp_path / "router.db") as store:
            assert store.get_frame(never["decision_id"]).status == "expired"
            assert store.get_feedback(never["decision_id"]) is None


def test_a_list_of_labels_is_answered_label_by_label(tmp_path, zoo):
    with cluster(tmp_path, zoo, label_window_s=1.0, expire_interval_s=0.1) as (client, policy_url):
        program_id = register(client)
        old = answer(client, program_id)
        wait_for(lambda: metric(client, "fmprog_decisions_expired_total", program=program_id) == 1)
        one, two = answer(client, program_id), answer(client, program_id)
        batch = [
            {"decision_id": one["decision_id"], "label": "yes"},
            {"decision_id": one["decision_id"], "label": "yes"},
            {"decision_id": one["decision_id"], "label": "no"},
            {"decision_id": "0" * 32, "label": "yes"},
            {"decision_id": two["decision_id"], "label": "maybe"},
            {"decision_id": two["decision_id"], "label": "no"},
            {"decision_id": old["decision_id"], "label": "yes"},
        ]
        reply = client.post("/feedback", json=batch)
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        assert [r["outcome"] for r in results] == [
            "accepted",
            "repeat",
            "conflict",
            "unknown",
            "rejected",
            "accepted",
            "expired",
        ]
        assert [r["decision_id"] for r in results] == [item["decision_id"] for item in batch]
        assert results[0]["feedback"]["reward"] == 1000.0 and results[5]["feedback"]["label"] == "no"
        assert all(r["feedback"] is None and r["detail"] for r in results[2:5] + results[6:])
        drained(client)
        assert learned(policy_url, program_id)["observed"] == 2
        # the list itself must be well formed: a bad item, an empty list or too long a list is a 422
        bad = client.post("/feedback", json=[batch[0], {"decision_id": "nope", "label": "yes"}])
        assert bad.status_code == 422 and "body.1.decision_id" in bad.json()["detail"]
        assert client.post("/feedback", json=[]).status_code == 422
        assert client.post("/feedback", json=[batch[0]] * 1001).status_code == 422
        assert client.post("/feedback", content=b"[", headers={"content-type": "application/json"}).status_code == 422
