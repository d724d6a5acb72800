"""Gated decisions in the router: one policy round trip per frame, the gates evaluated at each
invocation, and feedback that carries a record per gated invocation.

End to end over real HTTP with the real policy service running ``cascade``; the checks of a
reply that does not fit use a fake policy."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fmprog.backends import BackendCatalog
from fmprog.contract import (
    CONTEXT_FEATURES,
    ESCALATION_FEATURES,
    Feedback,
    FeedbackList,
    FeedbackListReply,
    PolicyDecision,
    PolicySpec,
    SiteGate,
)
from fmprog.images import encode_png
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from policy.state import PolicyState
from router.app import create_app
from router.settings import RouterSettings
from router.store import Store
from tests.fakes import box
from tests.router.conftest import example, feedback_each
from tests.servers import serving, wait_until

N, M = len(CONTEXT_FEATURES), len(ESCALATION_FEATURES)


def _png_b64() -> str:
    return base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()


def _zoo(zoo) -> None:
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.models["vqa-small"].answer = lambda image, question: "no"
    zoo.models["vqa-large"].answer = lambda image, question: "yes"


def test_a_cascade_policy_gates_each_invocation_and_learns_from_the_records(tmp_path, zoo):
    _zoo(zoo)
    state = tmp_path / "policy"
    with serving(create_policy_app(PolicySettings(state_dir=state, train_interval_s=3600))) as policy_url:
        settings = RouterSettings(
            database=tmp_path / "router.db",
            policy_url=policy_url,
            synthesis_backend=None,
            outbox_retry_s=3600,
            policy_timeout_s=30,  # a loaded machine must not turn the decision into the fallback
        )
        app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
        with TestClient(app) as client:
            body = {
                "source": example("person_on_bike"),
                "kind": "binary",
                "lambda": 0.001,
                "algorithm": "cascade",
                "hyperparameters": {"base_rate": 0.2},
            }
            created = client.post("/programs", json=body)
            assert created.status_code == 201, created.text
            program = created.json()
            candidates = {s["id"]: {c["name"] for c in s["candidates"]} for s in program["call_sites"]}
            escalations = []
            for _ in range(12):
                answer = client.post("/answer", json={"program_id": program["id"], "image": _png_b64()})
                assert answer.status_code == 200, answer.text
                result = answer.json()
                assert result["fallback"] is False
                trace = result["trace"]
                assert trace and all(i["backend"] in candidates[i["site"]] for i in trace)
                assert all("features" in i for i in trace)  # what each gate saw, stored and shown
                vqa = [i for i in trace if i["function"] == "vqa"]
                assert vqa[0]["backend"] == "vqa-small" and "escalated_from" not in vqa[0]
                escalations.append(len(vqa) == 2)
                if len(vqa) == 2:  # re-asked: the program got the dear answer
                    assert vqa[1]["backend"] == "vqa-large" and vqa[1]["escalated_from"] == "vqa-small"
                    assert result["answer"] == "yes"
                else:
                    assert result["answer"] == "no"
                with Store(tmp_path / "router.db") as store:  # the features are stored with the trace
                    assert [i.model_dump(mode="json") for i in store.get_frame(result["decision_id"]).trace] == trace
                label = {"decision_id": result["decision_id"], "label": "yes"}
                assert client.post("/feedback", json=label).status_code == 200
                # delivered in the background: the next frame is decided once the policy learned it
                wait_until(lambda: _outbox(client) == 0, "the label delivered", timeout_s=10, poll_s=0.01)
            # every label is yes, so re-asking the cheap "no" pays (+1100 - 73): learned within frames
            assert all(escalations[6:]), escalations
            escalated = sum(escalations)
        assert httpx.get(f"{policy_url}/policies/{program['id']}").json()["observed"] == 12

    logged = PolicyState(state).feedback_after(program["id"], 0)
    assert len(logged) == 12
    records = [r for _, decision, feedback in logged for r in feedback.invocations or ()]
    assert all(decision.gates for _, decision, _ in logged)
    pairs = [r for r in records if r.escalated_from is not None]
    assert len(pairs) == escalated
    assert all(len(r.features) == M and r.reward == 1000.0 for r in pairs)  # "yes" against the label yes
    firsts = [r for r in records if r.escalated_from is None]
    assert all(len(r.features) == N for r in firsts)
    assert {r.reward for r in firsts if r.site in {p.site for p in pairs}} >= {-100.0}  # the cheap "no": FN


class GatingPolicy:
    """Replies with fixed gates; records the feedback it is sent."""

    def __init__(self, gates: dict[str, Any]) -> None:
        self.gates = gates
        self.programs: dict[str, PolicySpec] = {}
        self.received: list[Feedback] = []

    def check(self, spec: PolicySpec) -> None:
        pass

    def register(self, program_id: str, spec: PolicySpec) -> None:
        self.programs[program_id] = spec

    def decide(self, program_id: str, decision_id: str, image: bytes | None) -> PolicyDecision:
        spec = self.programs[program_id]
        gates = {s.id: SiteGate.model_validate(self.gates[s.function.value]) for s in spec.sites}
        return PolicyDecision(algorithm="fake", backends={s.id: s.cheapest for s in spec.sites}, gates=gates)

    def feedback(self, program_id: str, feedback: Feedback) -> None:
        self.received.append(feedback)

    def feedback_batch(self, program_id: str, batch: FeedbackList) -> FeedbackListReply:
        return feedback_each(self.feedback, program_id, batch)

    def delete(self, program_id: str) -> None:
        pass


def _outbox(client: TestClient) -> int:
    return client.get("/readyz").json()["policy_outbox"]


def _weights(size: int, bias: float) -> list[float]:
    return [bias] + [0.0] * (size - 1)


def _client(tmp_path, zoo, policy) -> TestClient:
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None, outbox_retry_s=3600)
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry(), policy=policy)
    return TestClient(app)


CASCADE = {
    "detect": {"choice": {"detect-small": _weights(N, 0.0), "detect-large": _weights(N, 1.0)}},
    "vqa": {"choice": {"vqa-small": _weights(N, 1.0)}, "escalate_to": "vqa-large", "escalation": _weights(M, 1.0)},
}


def test_gates_run_the_program_and_the_feedback_carries_the_records(tmp_path, zoo):
    _zoo(zoo)
    policy = GatingPolicy(CASCADE)
    with _client(tmp_path, zoo, policy) as client:
        program = client.post("/programs", json={"source": example("person_on_bike"), "kind": "binary", "lambda": 0})
        result = client.post("/answer", json={"program_id": program.json()["id"], "image": _png_b64()}).json()
        assert result["fallback"] is False and result["answer"] == "yes"
        assert [(i["backend"], i.get("escalated_from")) for i in result["trace"]] == [
            ("detect-large", None),
            ("detect-large", None),
            ("vqa-small", None),
            ("vqa-large", "vqa-small"),
        ]
        assert set(result["decision"].values()) == {"detect-small", "vqa-small"}  # the up-front backends, kept
        program_id = program.json()["id"]
        counted = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
        }
        assert counted[("fmprog_gated_answers_total", (("program", program_id),))] == 1
        escalation = (
            ("backend", "vqa-large"),
            ("from_backend", "vqa-small"),
            ("function", "vqa"),
            ("program", program_id),
        )
        assert counted[("fmprog_escalations_total", escalation)] == 1
        client.post("/feedback", json={"decision_id": result["decision_id"], "label": "no"})
    (feedback,) = policy.received
    assert [(r.backend, r.escalated_from, r.reward) for r in feedback.invocations] == [
        ("detect-large", None, None),
        ("detect-large", None, None),
        ("vqa-small", None, 1.0),  # "no" against the label no: a true negative
        ("vqa-large", "vqa-small", -100.0),  # "yes": a false positive
    ]
    assert feedback.invocations[3].features[N:] == [0.0, 1.0, 0.0, 1.0, 0.0]  # a "no" about a found person


@pytest.mark.parametrize(
    "gates",
    [
        {**CASCADE, "vqa": {**CASCADE["vqa"], "escalate_to": "llm-large"}},  # not a candidate
        {**CASCADE, "detect": {**CASCADE["detect"], "escalate_to": "detect-large", "escalation": _weights(M, 1.0)}},
    ],
    ids=["not-a-candidate", "a-detection-escalates"],
)
def test_gates_that_do_not_fit_fall_back(tmp_path, zoo, gates):
    _zoo(zoo)
    with _client(tmp_path, zoo, GatingPolicy(gates)) as client:
        program = client.post("/programs", json={"source": example("person_on_bike"), "kind": "binary", "lambda": 0})
        result = client.post("/answer", json={"program_id": program.json()["id"], "image": _png_b64()}).json()
        assert result["fallback"] is True
        assert all("features" not in i for i in result["trace"])
        metrics = client.get("/metrics").text
        assert 'reason="policy_decision_rejected"' in metrics
