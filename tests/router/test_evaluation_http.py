"""Off-policy evaluation over real HTTP between the router and the policy service (fake models):
the propensity logged with every answer, ``POST /programs/{id}/evaluate`` on a cascade's and a
random policy's labelled decisions (the logging policy reweighted to itself; another lambda; a
static target against a live static program on the same frames) and its 404 and 422 replies."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from router.store import Store
from tests.router.test_labels_http import answer, cluster, register

pytestmark = pytest.mark.timeout(300)


def labelled(client: httpx.Client, program_id: str, frames: int) -> list[dict[str, Any]]:
    """Answer ``frames`` frames of the program and label each (yes on two of three)."""
    results = []
    for n in range(frames):
        result = answer(client, program_id)
        label = "no" if n % 3 == 0 else "yes"
        reply = client.post("/feedback", json={"decision_id": result["decision_id"], "label": label})
        assert reply.status_code == 200, reply.text
        results.append(result)
    return results


def evaluate(client: httpx.Client, program_id: str, *targets: dict[str, Any], **fields: Any) -> dict[str, Any]:
    reply = client.post(f"/programs/{program_id}/evaluate", json={"targets": list(targets), **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_a_cascade_logs_propensities_and_its_own_lambda_reweights_to_its_log(tmp_path, zoo):
    with cluster(tmp_path, zoo) as (client, _):
        program_id = register(client)  # cascade, lambda 0.001
        results = labelled(client, program_id, 60)
        assert all(0 < r["propensity"] <= 1 for r in results), [r["propensity"] for r in results]
        with Store(tmp_path / "router.db") as store:
            stored = store.get_frame(results[-1]["decision_id"])
        assert stored.propensity == results[-1]["propensity"]
        assert stored.policy_decision is not None and stored.policy_decision.gates

        report = evaluate(
            client,
            program_id,
            {"kind": "lambda", "lambda": 0.001},
            {"kind": "lambda", "lambda": 1000.0},
            {"kind": "static", "backends": "cheapest"},
            {"kind": "static", "backends": "largest"},
        )
        assert (report["algorithm"], report["lambda"]) == ("cascade", 0.001)
        assert (report["decisions"], report["labelled"], report["fallbacks"]) == (60, 60, 0)
        own, dearer, cheapest, largest = report["evaluations"]
        assert own["target"] == "lambda=0.001"
        assert own["runs"] == own["matched"] == 60 and own["max_weight"] == 1.0
        for estimator in ("ips", "snips", "dr"):
            for outcome in ("cost_per_frame", "task_reward", "accuracy", "f1"):
                assert own[estimator][outcome] == pytest.approx(own["logged"][outcome], abs=1e-9)
        logged_cost = own["logged"]["cost_per_frame"]
        assert logged_cost == pytest.approx(sum(r["cost"] for r in results) / 60)
        # cost a thousand times a million dearer: the gates turn to the cheaper backends
        assert dearer["ips"]["cost_per_frame"] <= logged_cost
        assert dearer["snips"]["cost_per_frame"] is None or dearer["snips"]["cost_per_frame"] <= logged_cost
        # a static target: an estimate where some run agrees with it, else no weight at all
        if cheapest["matched"]:
            assert math.isfinite(cheapest["snips"]["cost_per_frame"])
        else:
            assert cheapest["ips"]["cost_per_frame"] == 0 and cheapest["snips"]["cost_per_frame"] is None
        # the cascade's gate at the VQA site asks vqa-small first: vqa-large first is never logged
        assert largest["matched"] == 0
        assert any("vqa-large" in gap for gap in largest["uncovered"]), largest["uncovered"]


def test_a_random_policy_estimates_the_static_cheapest_program(tmp_path, zoo):
    with cluster(tmp_path, zoo) as (client, _):
        logging = register(client, algorithm="random")
        results = labelled(client, logging, 96)
        # the random policy draws each of the three sites of 2 backends uniformly: 1/8 per run
        assert all(r["propensity"] == pytest.approx(1 / 8) for r in results)
        static = register(client, algorithm="static", hyperparameters={"mode": "cheapest"})
        live = labelled(client, static, 6)
        assert all(r["propensity"] == 1.0 for r in live)
        cost = live[0]["cost"]
        assert all(r["cost"] == cost for r in live)  # one configuration, the same frame: one cost

        [estimate] = evaluate(client, logging, {"kind": "static", "backends": "cheapest"})["evaluations"]
        assert estimate["runs"] == 96 and estimate["uncovered"] == []
        matched = sum(r["decision"] == live[0]["decision"] for r in results)
        assert estimate["matched"] == matched > 0
        assert estimate["max_weight"] == pytest.approx(8.0)
        assert estimate["snips"]["cost_per_frame"] == pytest.approx(cost)  # every matched run cost the same
        assert estimate["ips"]["cost_per_frame"] == pytest.approx(cost * matched * 8 / 96)
        assert 0.5 * cost <= estimate["ips"]["cost_per_frame"] <= 1.6 * cost  # about 12 matched runs of 96
        # the static program's own log: every run its own, weight 1
        [itself] = evaluate(client, static, {"kind": "static", "backends": "cheapest"})["evaluations"]
        assert itself["matched"] == 6 and itself["snips"]["cost_per_frame"] == pytest.approx(cost)


def test_evaluations_the_log_cannot_support_or_malformed_are_refused(tmp_path, zoo):
    with cluster(tmp_path, zoo) as (client, _):
        program_id = register(client, algorithm="random")
        labelled(client, program_id, 3)
        cheapest = {"kind": "static", "backends": "cheapest"}
        unknown = client.post(f"/programs/{'0' * 32}/evaluate", json={"targets": [cheapest]})
        assert unknown.status_code == 404 and "0" * 32 in unknown.json()["detail"]
        other_lambda = client.post(
            f"/programs/{program_id}/evaluate", json={"targets": [{"kind": "lambda", "lambda": 1}]}
        )
        assert other_lambda.status_code == 422 and "lambda" in other_lambda.json()["detail"]
        assert "gated" in other_lambda.json()["detail"]
        stray = {"kind": "static", "backends": {"vqa": "vqa-huge"}}
        no_backend = client.post(f"/programs/{program_id}/evaluate", json={"targets": [stray]})
        assert no_backend.status_code == 422 and "vqa-huge" in no_backend.json()["detail"]
        no_site = {"kind": "static", "backends": {"nowhere": "vqa-small"}}
        no_site_reply = client.post(f"/programs/{program_id}/evaluate", json={"targets": [no_site]})
        assert no_site_reply.status_code == 422 and "nowhere" in no_site_reply.json()["detail"]
        for body, where in [
            ({"targets": []}, "targets"),
            ({"targets": [cheapest] * 17}, "targets"),
            ({"targets": [cheapest], "last": 0}, "last"),
            ({"targets": [cheapest], "draws": 10}, "draws"),
            ({"targets": [{"kind": "static"}]}, "backends"),
            ({"targets": [{"kind": "lambda", "lambda": -1}]}, "lambda"),
            ({"targets": [cheapest], "other": 1}, "other"),
        ]:
            reply = client.post(f"/programs/{program_id}/evaluate", json=body)
            assert reply.status_code == 422 and where in reply.json()["detail"], (body, reply.text)


def test_structured_logs_its_score_spreads_and_its_own_lambda_reweights_to_its_log(tmp_path, zoo):
    with cluster(tmp_path, zoo) as (client, _):
        program_id = register(client, algorithm="structured", hyperparameters={"reward_scale": 100.0})
        results = labelled(client, program_id, 24)
        assert all(0 < r["propensity"] <= 1 for r in results)
        with Store(tmp_path / "router.db") as store:
            stored = store.get_frame(results[-1]["decision_id"]).policy_decision
        assert stored is not None and stored.score_spreads and stored.propensities
        own, cheaper = evaluate(
            client, program_id, {"kind": "lambda", "lambda": 0.001}, {"kind": "lambda", "lambda": 10.0}
        )["evaluations"]
        assert own["matched"] == own["runs"] == 24 and own["max_weight"] == pytest.approx(1.0)
        assert own["snips"]["cost_per_frame"] == pytest.approx(own["logged"]["cost_per_frame"])
        # at a lambda ten thousand times dearer every site's cheapest backend wins the draw
        assert cheaper["ips"]["cost_per_frame"] <= own["logged"]["cost_per_frame"]
