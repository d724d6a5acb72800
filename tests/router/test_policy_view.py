"""``GET /programs/{id}/policy``: the policy's recent choices per call site and context bucket,
over the router's HTTP API with the real policy service (over real HTTP) deciding."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog
from fmprog.images import encode_png
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app
from router.policy_view import MAX_WINDOW
from router.settings import RouterSettings
from tests.fakes import box
from tests.router.conftest import example
from tests.servers import serving

FRAMES = 6


@pytest.fixture(scope="module")
def real_policy(tmp_path_factory):
    settings = PolicySettings(state_dir=tmp_path_factory.mktemp("policy"), train_interval_s=3600)
    with serving(create_policy_app(settings)) as url:
        yield url


@pytest.fixture
def client(tmp_path, zoo, real_policy):
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    settings = RouterSettings(
        database=tmp_path / "router.db", policy_url=real_policy, synthesis_backend=None, outbox_retry_s=3600
    )
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with TestClient(app) as test_client:
        yield test_client


def _frame() -> str:
    return base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()


def _answered(client: TestClient, algorithm: str, frames: int = FRAMES) -> dict[str, Any]:
    """A program registered with ``algorithm``, ``frames`` frames answered and labelled."""
    body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.001, "algorithm": algorithm}
    created = client.post("/programs", json=body)
    assert created.status_code == 201, created.text
    program = created.json()
    for i in range(frames):
        answer = client.post("/answer", json={"program_id": program["id"], "image": _frame(), "frame_id": f"f{i}"})
        assert answer.status_code == 200 and answer.json()["fallback"] is False, answer.text
        label = client.post("/feedback", json={"decision_id": answer.json()["decision_id"], "label": "yes"})
        assert label.status_code == 200, label.text
    return program


def _check_shares(view: dict[str, Any], program: dict[str, Any]) -> None:
    """Every bucket lists each candidate of its site, cheapest first, and its shares sum to 1."""
    sites = {site["id"]: site for site in program["call_sites"]}
    assert [site["site"] for site in view["sites"]] == list(sites)
    for site in view["sites"]:
        candidates = sorted(sites[site["site"]]["candidates"], key=lambda c: c["cost"])
        assert site["calls"] == sum(bucket["calls"] for bucket in site["buckets"])
        for bucket in site["buckets"]:
            assert [share["backend"] for share in bucket["backends"]] == [c["name"] for c in candidates]
            assert sum(share["share"] for share in bucket["backends"]) == pytest.approx(1.0)
            assert sum(share["calls"] for share in bucket["backends"]) == bucket["calls"]


def test_gated_decisions_are_broken_down_by_the_patch_each_call_acted_on(client):
    program = _answered(client, "cascade")
    response = client.get(f"/programs/{program['id']}/policy")
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["program_id"] == program["id"] and view["last"] == 500
    assert view["decisions"] == view["policy_decisions"] == FRAMES and view["fallback_decisions"] == 0
    _check_shares(view, program)
    by_site = {site["site"]: site for site in view["sites"]}
    # exists("bicycle") looks at the whole frame; verify_property asks about each person found
    exists, verify = by_site["exists@3:23"], by_site["verify_property@9:18"]
    assert [b["bucket"] for b in exists["buckets"]] == ["other/large"] and exists["calls"] == FRAMES
    assert exists["buckets"][0]["patch"] == "other" and exists["buckets"][0]["area"] == "large"
    # the person box (30 x 50 of a 100 x 80 frame) is 19% of it
    assert [b["bucket"] for b in verify["buckets"]] == ["detected/medium"] and verify["calls"] == FRAMES
    # the cascade asks its dearest VQA backend only as an escalation, never first
    assert verify["buckets"][0]["backends"][-1] == {"backend": "vqa-large", "calls": 0, "share": 0.0}
    assert 0 <= verify["buckets"][0]["escalated"] <= 1


def test_decisions_made_up_front_are_one_bucket_and_the_window_is_the_last_decisions(client):
    program = _answered(client, "random")
    view = client.get(f"/programs/{program['id']}/policy").json()
    _check_shares(view, program)
    for site in view["sites"]:
        assert [b["bucket"] for b in site["buckets"]] == ["all"]
        assert site["buckets"][0]["patch"] is None and site["buckets"][0]["area"] is None
        assert site["buckets"][0]["escalated"] == 0
    # one decision per frame for these sites: each ran once a frame
    assert all(site["calls"] == FRAMES for site in view["sites"])

    recent = client.get(f"/programs/{program['id']}/policy", params={"last": 2}).json()
    assert recent["last"] == 2 and recent["decisions"] == 2
    assert all(site["calls"] == 2 for site in recent["sites"])
    _check_shares(recent, program)


def test_unknown_program_is_404_and_a_bad_window_422(client):
    assert client.get(f"/programs/{'0' * 32}/policy").status_code == 404
    program = _answered(client, "random", frames=0)
    for last in (0, -1, MAX_WINDOW + 1, "many"):
        response = client.get(f"/programs/{program['id']}/policy", params={"last": last})
        assert response.status_code == 422, (last, response.text)
        assert "last" in response.json()["detail"]
    empty = client.get(f"/programs/{program['id']}/policy").json()
    assert empty["decisions"] == 0 and all(site["calls"] == 0 and site["buckets"] == [] for site in empty["sites"])


def test_fallback_decisions_are_counted_apart(tmp_path, zoo):
    """Without a policy every decision is the router's fallback: none of them is the policy's."""
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None)
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with TestClient(app) as client:
        body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.001}
        program = client.post("/programs", json=body).json()
        for _ in range(3):
            assert client.post("/answer", json={"program_id": program["id"], "image": _frame()}).status_code == 200
        view = client.get(f"/programs/{program['id']}/policy").json()
    assert (view["decisions"], view["policy_decisions"], view["fallback_decisions"]) == (3, 0, 3)
    assert all(site["calls"] == 0 for site in view["sites"])
