"""The router's answer-size limit (``FMPROG_ROUTER_MAX_ANSWER_BYTES``) over HTTP: an answer over it
is the run's ``resource_limit`` error in the /answer reply, and nothing of it is stored; in the
router's process and in its program workers."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog
from fmprog.images import encode_png
from router.app import create_app
from router.settings import RouterSettings
from tests.fakes import Zoo, box

KEY = "k" * 24
PROGRAM = (
    "def execute_command(image):\n"
    "    n = len(ImagePatch(image).find('person'))\n"
    "    rows = ['x' * {width}] * {rows}\n"
    "    return list(map(str, [rows, n]))\n"
)
PROBE = PROGRAM.format(width=9999, rows=6000)  # a 60 MB answer, past the rendering guard


@pytest.fixture(params=[0, 2], ids=["in-process", "workers"])
def settings(request: pytest.FixtureRequest, tmp_path, monkeypatch: pytest.MonkeyPatch) -> RouterSettings:
    monkeypatch.setenv("FMPROG_ROUTER_MAX_ANSWER_BYTES", "2000")
    return RouterSettings(
        database=tmp_path / "router.db",
        api_key=KEY,
        synthesis_backend=None,
        program_workers=request.param,
        outbox_retry_s=3600,
    )


def _client(settings: RouterSettings, zoo: Zoo) -> TestClient:
    zoo.set_boxes({"person": [box(10, 10, 40, 60)]})
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    return TestClient(app, headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture
def client(settings: RouterSettings, zoo: Zoo) -> Iterator[TestClient]:
    with _client(settings, zoo) as client:
        yield client


def _answer(client: TestClient, source: str) -> dict:
    program = client.post("/programs", json={"source": source, "kind": "open", "lambda": 0})
    assert program.status_code == 201, program.text
    image = base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()
    reply = client.post("/answer", json={"program_id": program.json()["id"], "image": image})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_limit_is_a_router_setting(settings: RouterSettings):
    assert settings.max_answer_bytes == 2000
    assert settings.execution_limits().max_answer_bytes == 2000
    assert RouterSettings.model_fields["max_answer_bytes"].default == 65_536
    with pytest.raises(ValueError, match="max_answer_bytes"):
        RouterSettings(max_answer_bytes=8)
    with pytest.raises(ValueError, match="max_answer_bytes"):
        RouterSettings(max_answer_bytes=2**30)


def test_an_answer_over_the_limit_is_an_error_and_is_not_stored(client: TestClient):
    result = _answer(client, PROGRAM.format(width=100, rows=20))  # about 2,100 bytes of JSON
    assert result["answer"] is None
    assert result["error"]["kind"] == "resource_limit"
    assert "(limit 2,000 bytes)" in result["error"]["message"]
    assert result["trace"] and result["cost"] > 0  # the detection it made is still charged
    stored = client.app.state.service.store.get_frame(result["decision_id"])  # type: ignore[attr-defined]
    assert stored.answer is None and stored.error is not None and stored.error.kind == "resource_limit"


def test_an_answer_under_the_limit_is_answered_and_stored(client: TestClient):
    result = _answer(client, PROGRAM.format(width=100, rows=10))  # about 1,100 bytes of JSON
    assert result["error"] is None and result["answer"][1] == "1"
    stored = client.app.state.service.store.get_frame(result["decision_id"])  # type: ignore[attr-defined]
    assert stored.answer == result["answer"]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "workers"])
def test_the_probe_s_60_mb_answer_is_refused_by_default(tmp_path, zoo: Zoo, workers: int):
    settings = RouterSettings(
        database=tmp_path / "router.db", api_key=KEY, synthesis_backend=None, program_workers=workers
    )
    with _client(settings, zoo) as client:
        result = _answer(client, PROBE)
    assert result["answer"] is None and result["error"]["kind"] == "resource_limit"
    assert "(limit 65,536 bytes)" in result["error"]["message"]
    stored = sum(path.stat().st_size for path in tmp_path.glob("router.db*"))
    assert stored < 5 * 2**20  # not +57 MB a request
