"""Tenants over HTTP: each key sees, answers, labels, evaluates and deletes only its tenant's
programs and streams (another's is a 404), an admin key sees all, the shared key is the default
tenant, revoked and unknown keys are refused, quotas answer 429 with Retry-After, and the metrics
carry the tenant."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog
from fmprog.images import encode_png
from router.app import create_app
from router.settings import RouterSettings
from router.store import Store
from tests.fakes import Zoo, box

SHARED = "s" * 24
PROGRAM = "def execute_command(image):\n    return len(ImagePatch(image).find('person')) > 0\n"
IMAGE = base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()


class Tenants:
    """A router over a real SQLite file with the shared key and three stored keys, and a client per key."""

    def __init__(self, tmp_path: Path, zoo: Zoo, **settings: object):
        database = tmp_path / "router.db"
        with Store(database) as store:
            self.keys = {name: store.add_key(name)[0] for name in ("acme", "globex")}
            self.keys["ops"], self.ops_record = store.add_key("ops", admin=True)
        self.keys["shared"] = SHARED
        zoo.set_boxes({"person": [box(10, 10, 40, 60)]})
        options = {"database": database, "api_key": SHARED, "synthesis_backend": None, "program_workers": 0}
        self.app = create_app(
            RouterSettings(**{**options, "outbox_retry_s": 3600, **settings}),
            catalog=BackendCatalog(backends=zoo.specs),
            backends=zoo.registry(),
        )
        self.base = TestClient(self.app)

    def client(self, name: str) -> TestClient:
        return TestClient(self.app, headers={"Authorization": f"Bearer {self.keys[name]}"})

    def register(self, name: str) -> str:
        reply = self.client(name).post("/programs", json={"source": PROGRAM, "kind": "binary", "lambda": 0})
        assert reply.status_code == 201, reply.text
        assert reply.json()["tenant"] == ("default" if name == "shared" else name)
        return reply.json()["id"]

    def answer(self, name: str, program_id: str) -> tuple[int, dict]:
        reply = self.client(name).post("/answer", json={"program_id": program_id, "image": IMAGE})
        return reply.status_code, reply.json() | {"headers": dict(reply.headers)}


@pytest.fixture
def tenants(tmp_path: Path, zoo: Zoo) -> Iterator[Tenants]:
    world = Tenants(tmp_path, zoo)
    with world.base:
        yield world


def test_a_tenant_sees_only_its_programs(tenants: Tenants):
    mine, theirs, default = tenants.register("acme"), tenants.register("globex"), tenants.register("shared")
    acme = tenants.client("acme")
    assert [p["id"] for p in acme.get("/programs").json()] == [mine]
    assert [p["id"] for p in tenants.client("shared").get("/programs").json()] == [default]
    assert {p["id"] for p in tenants.client("ops").get("/programs").json()} == {mine, theirs, default}
    assert acme.get(f"/programs/{mine}").status_code == 200
    for method, path, body in (
        ("GET", f"/programs/{theirs}", None),
        ("GET", f"/programs/{theirs}/policy", None),
        ("POST", f"/programs/{theirs}/evaluate", {"targets": [{"kind": "random"}]}),
        ("POST", f"/programs/{theirs}/streams", {"source": "file:///nowhere.avi"}),
        ("DELETE", f"/programs/{theirs}", None),
    ):
        reply = acme.request(method, path, json=body)
        assert reply.status_code == 404, (method, path, reply.text)
        assert theirs in reply.json()["detail"]
    assert tenants.answer("acme", theirs)[0] == 404
    assert tenants.client("globex").get(f"/programs/{theirs}").status_code == 200  # still there
    assert tenants.client("ops").get(f"/programs/{theirs}").status_code == 200  # admin sees all


def test_a_tenant_cannot_label_another_tenants_decision(tenants: Tenants):
    theirs = tenants.register("globex")
    status, answer = tenants.answer("globex", theirs)
    assert status == 200, answer
    label = {"decision_id": answer["decision_id"], "label": "yes"}
    acme = tenants.client("acme")
    assert acme.post("/feedback", json=label).status_code == 404
    batch = acme.post("/feedback", json=[label]).json()["results"]
    assert [item["outcome"] for item in batch] == ["unknown"]
    assert tenants.app.state.service.store.get_feedback(answer["decision_id"]) is None
    assert tenants.client("globex").post("/feedback", json=label).status_code == 200


def test_an_admin_key_answers_labels_and_deletes_any_program(tenants: Tenants):
    theirs = tenants.register("globex")
    status, answer = tenants.answer("ops", theirs)
    assert status == 200
    ops = tenants.client("ops")
    assert ops.post("/feedback", json={"decision_id": answer["decision_id"], "label": "no"}).status_code == 200
    assert ops.delete(f"/programs/{theirs}").status_code == 204
    assert tenants.client("globex").get(f"/programs/{theirs}").status_code == 404


def test_unknown_revoked_and_missing_keys_are_refused(tenants: Tenants):
    tenants.register("acme")
    wrong = TestClient(tenants.app, headers={"Authorization": "Bearer fmp_000000000000_" + "x" * 43})
    assert wrong.get("/programs").status_code == 401
    assert tenants.base.get("/programs").status_code == 401
    assert tenants.base.get("/healthz").status_code == 200  # open paths stay open
    store: Store = tenants.app.state.service.store
    acme_id = next(key.id for key in store.list_keys("acme"))
    store.revoke_key(acme_id)
    tenants.app.state.keys.cache_s = 0  # the default keeps a key 5 s
    tenants.app.state.keys._callers.clear()
    assert tenants.client("acme").get("/programs").status_code == 401
    assert tenants.client("globex").get("/programs").status_code == 200


def test_tenant_keys_alone_need_a_key_even_on_loopback(tmp_path: Path, zoo: Zoo):
    with Store(tmp_path / "router.db") as store:
        key, _ = store.add_key("acme")
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None, program_workers=0)
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with TestClient(app) as client:
        assert client.get("/programs").status_code == 401
        assert client.get("/programs", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_metrics_carry_the_tenant(tenants: Tenants):
    program = tenants.register("acme")
    assert tenants.answer("acme", program)[0] == 200
    text = tenants.base.get("/metrics").text
    assert 'fmprog_tenant_answers_total{tenant="acme"} 1.0' in text
    assert 'fmprog_tenant_cost_total{tenant="acme"}' in text


def test_past_a_quota_frames_and_streams_get_429_with_retry_after(tmp_path: Path, zoo: Zoo):
    quotas = {"acme": {"frames_per_s": 0.5, "max_streams": 0}}
    world = Tenants(tmp_path, zoo, tenant_quotas=quotas)
    with world.base:
        mine, theirs = world.register("acme"), world.register("globex")
        assert world.answer("acme", mine)[0] == 200
        status, refused = world.answer("acme", mine)
        assert status == 429, refused
        assert "frames_per_s" in refused["detail"] and "acme" in refused["detail"]
        assert int(refused["headers"]["retry-after"]) == 2
        assert world.answer("globex", theirs)[0] == 200  # another tenant is not held back
        stream = world.client("acme").post(f"/programs/{mine}/streams", json={"source": "file:///nowhere.avi"})
        assert stream.status_code == 429, stream.text
        assert "max_streams" in stream.json()["detail"]
        metrics = world.base.get("/metrics").text
        assert 'fmprog_refused_total{reason="QuotaExceeded",tenant="acme"} 1.0' in metrics
