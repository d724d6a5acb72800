"""Reuse is the policy service's decision: a router and a policy over real HTTP, a camera's frames
posted as JPEG bodies (real frames of OpenCV's ``vtest.avi``, a stub detector).

The router asks the policy (``POST /policies/{id}/reuse``) for each camera frame after the first;
the outcome of each run rides along with the next request and the policy's gate learns it; a label
for a reused frame reaches the gate through the outbox; the gates outlive a policy restart; and
when the policy cannot be asked, the frame runs (never a guess)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from benchmarks.router_replicas import PROGRAM, stub_backends
from fmprog.contract import PolicySpec, ReuseObservation, ReuseRequest
from fmprog.images import encode_jpeg
from fmprog.vision.video import SAMPLE_VIDEOS, VideoFrames
from policy.app import create_app as create_policy_app
from policy.service import PolicyService
from policy.settings import PolicySettings
from router.app import create_app
from router.settings import RouterSettings
from tests.servers import serving, wait_until

pytestmark = pytest.mark.timeout(120)
VIDEO = SAMPLE_VIDEOS / "vtest.avi"

if not VIDEO.is_file():
    pytest.skip(f"{VIDEO} is missing (Debian's opencv-doc)", allow_module_level=True)


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    video = VideoFrames(VIDEO)
    return [encode_jpeg(video[i]) for i in (0, 1, 2, 3, 4, 300)]


def policy_settings(tmp_path: Path) -> PolicySettings:
    return PolicySettings(state_dir=tmp_path / "policy", train_interval_s=0.2, reuse={"exploration": 0.0})


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    catalog, backends = stub_backends()
    with serving(create_policy_app(policy_settings(tmp_path))) as policy_url:
        settings = RouterSettings(database=tmp_path / "router.db", policy_url=policy_url, synthesis_backend=None)
        with TestClient(create_app(settings, catalog=catalog, backends=backends)) as client:
            yield client, policy_url


def register(client: TestClient) -> str:
    body = {"source": PROGRAM.read_text(), "kind": "binary", "lambda": 0.001, "algorithm": "fast"}
    response = client.post("/programs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def post(client: TestClient, program: str, image: bytes, camera: str = "gate-7") -> dict[str, Any]:
    response = client.post(
        "/answer",
        params={"program_id": program, "camera": camera},
        content=image,
        headers={"content-type": "image/jpeg"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def reuse_decisions(policy_url: str) -> dict[str, float]:
    text = httpx.get(f"{policy_url}/metrics").text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fmprog_policy_reuse_decisions_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            counts[reason] = counts.get(reason, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_the_policy_decides_reuse_learns_outcomes_and_labels_and_keeps_its_gates(cluster, frames, tmp_path):
    client, policy_url = cluster
    program = register(client)
    first = post(client, program, frames[0])
    assert not first["reused"] and reuse_decisions(policy_url) == {}  # a camera's first frame: nothing to ask
    again = post(client, program, frames[0])  # the same picture: the default gate reuses it
    assert again["reused"] and again["reused_from"] == first["decision_id"] and again["cost"] == 0
    assert reuse_decisions(policy_url) == {"unchanged": 1}
    moved = post(client, program, frames[5])  # 30 s later: people moved
    assert not moved["reused"] and moved["cost"] > 0
    assert reuse_decisions(policy_url)["changed"] == 1

    # the run's outcome (did the answer change?) rides along with the camera's next request
    post(client, program, frames[5])
    service_gates = httpx.get(f"{policy_url}/metrics").text
    assert "fmprog_policy_reuse_decisions_total" in service_gates

    label = client.post("/feedback", json={"decision_id": again["decision_id"], "label": first["answer"]})
    assert label.status_code == 200, label.text
    outbox = lambda: client.get("/readyz").json()["policy_outbox"]  # noqa: E731
    wait_until(lambda: outbox() == 0, "the label's outcome delivered", timeout_s=10, poll_s=0.02)

    stored = client.get("/programs/" + program + "/policy").json()
    assert stored["reuse"]["decisions"] >= 3 and stored["reuse"]["reused"] >= 1


def test_the_gates_outlive_a_policy_restart(tmp_path):
    settings = policy_settings(tmp_path)
    service = PolicyService(settings)
    service.restore()
    spec = PolicySpec.model_validate(
        {"sites": [{"id": "s", "function": "detect", "backends": [{"name": "d", "cost": 1}]}]}
    )
    service.put("p" * 32, spec)
    request = ReuseRequest(camera="cam", features=ReuseObservation(mean_diff=0.1, changed=0.0, age=1))
    for _ in range(5):
        service.reuse("p" * 32, request)
    learned = service.reuse_gates.summary("p" * 32)["cam"]
    service.close()

    restarted = PolicyService(settings)
    restarted.restore()
    assert restarted.reuse_gates.summary("p" * 32)["cam"] == learned
    restarted.close()


def test_a_frame_runs_when_the_policy_cannot_be_asked(tmp_path, frames):
    catalog, backends = stub_backends()
    settings = RouterSettings(
        database=tmp_path / "router.db",
        policy_url="http://127.0.0.1:9",  # nothing listens there
        policy_timeout_s=0.5,
        synthesis_backend=None,
    )
    with TestClient(create_app(settings, catalog=catalog, backends=backends)) as client:
        program = register(client)
        answers = [post(client, program, frames[0]) for _ in range(3)]
    assert not any(answer["reused"] for answer in answers)  # the safe choice: every frame runs
    assert all(answer["fallback"] for answer in answers)
