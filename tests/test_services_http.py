"""The router and the policy service over real HTTP, with real zoo models in process and SQLite
state on disk: register, answer, feed back, learn; the policy killed with SIGKILL and restarted;
the router answering with its fallback meanwhile and delivering queued feedback afterwards."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from fmprog.backends import BackendCatalog, BackendRegistry, load_catalog
from fmprog.engines import build_engine, local_model
from fmprog.images import encode_png
from fmprog.scene import scene_stream
from router.app import create_app
from router.settings import RouterSettings
from services.cluster import free_port
from tests.servers import wait_until

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def _wait(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _start_policy(state_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "FMPROG_POLICY_STATE_DIR": str(state_dir), "FMPROG_POLICY_TRAIN_INTERVAL_S": "0.1"}
    command = [sys.executable, "-m", "uvicorn", "--factory", "policy.app:create_app", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait(f"http://127.0.0.1:{port}/readyz")
    return process


@pytest.fixture
def stack(tmp_path):
    vision = [
        s
        for s in load_catalog(ROOT / "fmprog" / "configs" / "synthetic.yaml").backends
        if s.function in ("detect", "vqa")
    ]
    catalog = BackendCatalog(backends=vision)
    engines = {s.name: build_engine(s) for s in vision}
    for engine in engines.values():
        engine.load()
    backends = BackendRegistry.from_specs(vision, {n: local_model(e) for n, e in engines.items()})
    policy_port, router_port = free_port(), free_port()
    policy = _start_policy(tmp_path / "policy", policy_port)
    settings = RouterSettings(
        database=tmp_path / "router.db",
        policy_url=f"http://127.0.0.1:{policy_port}",
        outbox_retry_s=3600,  # the test wakes the outbox's delivery itself
        port=router_port,
    )
    app = create_app(settings, catalog=catalog, backends=backends)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=router_port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait(f"http://127.0.0.1:{router_port}/healthz")
    state = {"policy": policy, "policy_port": policy_port, "tmp": tmp_path, "app": app}
    yield f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{policy_port}", state
    server.should_exit = True
    thread.join(timeout=10)
    state["policy"].kill()
    state["policy"].wait()


def _truth(scene) -> str:
    triangles = [o for o in scene.objects if o.shape == "triangle"]
    circles = [o for o in scene.objects if o.shape == "circle"]
    return "yes" if any(t.center[0] < c.center[0] for t in triangles for c in circles) else "no"


def test_learn_online_over_http_and_survive_a_policy_kill(stack):
    router, policy, state = stack
    source = (ROOT / "examples" / "programs" / "triangle_left_of_circle.py").read_text()
    program = httpx.post(
        f"{router}/programs", json={"source": source, "kind": "binary", "lambda": 0.001, "algorithm": "fast"}
    ).json()
    assert httpx.get(f"{policy}/policies/{program['id']}").json()["algorithm"] == "fast"
    # the triangles' detector: it runs on every frame; the labels below pay for its large backend
    site = next(s["id"] for s in program["call_sites"] if s["function"] == "detect")
    scenes = list(scene_stream(seed=3, count=40))
    probe = base64.b64encode(encode_png(scenes[-1].image)).decode()  # a frame never answered

    def large_share(decision_id: str) -> float:
        """The probability the policy gives the large detector at ``site`` on the probe frame
        (the closed form of its Thompson draw: no sampling noise)."""
        body = {"decision_id": decision_id, "image": probe}
        reply = httpx.post(f"{policy}/policies/{program['id']}/decisions", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()["propensities"][site]["detect-large"]

    def answer_and_label(scene, label_for=lambda scene, body: _truth(scene)) -> dict:
        image = base64.b64encode(encode_png(scene.image)).decode()
        result = httpx.post(f"{router}/answer", json={"program_id": program["id"], "image": image}, timeout=60)
        assert result.status_code == 200, result.text
        body = result.json()
        if label_for is not None:
            label = {"decision_id": body["decision_id"], "label": label_for(scene, body)}
            response = httpx.post(f"{router}/feedback", json=label)
            assert response.status_code == 200, response.text
        return body

    def right_only_with_large(scene, body: dict) -> str:
        """A label that makes the answer right when ``site`` ran on detect-large, wrong otherwise."""
        said_yes = body["answer"] == "yes"
        return "yes" if said_yes == (body["decision"][site] == "detect-large") else "no"

    assert large_share("probe-before") == pytest.approx(0.5)  # nothing learned: a coin flip
    answers = [answer_and_label(scene, right_only_with_large) for scene in scenes[:30]]
    assert not any(a["fallback"] for a in answers)
    assert {a["decision"][site] for a in answers} == {"detect-small", "detect-large"}  # both tried
    observed = lambda: httpx.get(f"{policy}/policies/{program['id']}").json()["observed"]  # noqa: E731
    wait_until(lambda: observed() == 30, "the 30 labels delivered in the background", timeout_s=30, poll_s=0.05)
    assert large_share("probe-after") > 0.9  # learned online: the rewarded backend is now the choice
    unlabelled = answer_and_label(scenes[30], label_for=None)  # decided by the policy, pending at the kill

    state["policy"].send_signal(signal.SIGKILL)
    state["policy"].wait()
    late = httpx.post(f"{router}/feedback", json={"decision_id": unlabelled["decision_id"], "label": "no"})
    assert late.status_code == 200, late.text  # accepted by the router, queued for the policy
    assert httpx.get(f"{router}/readyz").json()["policy_outbox"] == 1
    during = answer_and_label(scenes[31])  # the router answers with its fallback decision
    assert during["fallback"] is True
    assert httpx.get(f"{router}/readyz").json()["policy_outbox"] == 1  # a fallback teaches the policy nothing

    state["policy"] = _start_policy(state["tmp"] / "policy", state["policy_port"])
    assert httpx.get(f"{policy}/policies/{program['id']}").json()["observed"] == 30  # nothing lost to SIGKILL
    state["app"].state.service.deliver_soon()
    wait_until(lambda: observed() == 31, "the pending decision learned", timeout_s=30, poll_s=0.05)
    assert httpx.get(f"{router}/readyz").json()["policy_outbox"] == 0
    assert answer_and_label(scenes[32])["fallback"] is False
    metrics = httpx.get(f"{router}/metrics").text
    assert f'fmprog_fallbacks_total{{program="{program["id"]}",reason="policy_unavailable"}} 1.0' in metrics
