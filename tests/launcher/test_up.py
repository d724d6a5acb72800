"""``fmprog up`` end to end over real HTTP: Ray Serve with the vision backends, the policy service
and the router as processes; a program registered, frames answered (JSON and multipart), labels
fed back, the policy's state changed, both services' metrics scraped and parsed, bad input refused,
the whole cluster stopped by SIGTERM, a killed service restarted (and one that keeps dying stopping
everything). Plus the settings' validation, without starting anything."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr, ValidationError

from fmprog.backends.config import ConfigError, load_catalog
from fmprog.images import encode_png
from fmprog.scene import scene_stream
from fmprog.web import is_loopback
from launcher.process import StackProcess, up_arguments
from launcher.settings import StackSettings
from launcher.supervisor import child_env, restart_delay
from router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[2]
CPU = ROOT / "fmprog" / "configs" / "synthetic.yaml"
VISION = ["detect-small", "detect-large", "vqa-small", "vqa-large"]
PROGRAM = (ROOT / "examples" / "programs" / "triangle_left_of_circle.py").read_text()
pytestmark = pytest.mark.timeout(300)


def _settings(state_dir: Path, backends: list[str]) -> StackSettings:
    return StackSettings.on_free_ports(config=CPU, backends=backends, state_dir=state_dir)


def _truth(scene) -> str:
    triangles = [o for o in scene.objects if o.shape == "triangle"]
    circles = [o for o in scene.objects if o.shape == "circle"]
    return "yes" if any(t.center[0] < c.center[0] for t in triangles for c in circles) else "no"


def _metrics(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a service's Prometheus page: name, labels, value."""
    text = httpx.get(f"{url}/metrics").text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def _total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(value for n, have, value in samples if n == name and labels.items() <= have.items())


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _service_pids(settings: StackSettings) -> list[int]:
    """The pids of the policy and router processes now, from their uvicorn logs."""
    pids = []
    for name in ("policy", "router"):
        found = re.findall(r"Started server process \[(\d+)\]", (settings.log_dir / f"{name}.log").read_text())
        assert found, name
        pids.append(int(found[-1]))  # the latest: a restarted service appends to its log
    return pids


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    settings = _settings(tmp_path_factory.mktemp("stack"), VISION)
    with StackProcess(settings) as stack:
        yield settings, stack


def test_answer_feedback_learn_and_metrics(cluster):
    settings, _ = cluster
    router, policy = settings.router_url, settings.policy_url
    http = httpx.Client(timeout=60)
    key = {"authorization": f"Bearer {settings.policy_api_key.get_secret_value()}"}
    registered = http.post(
        f"{router}/programs", json={"source": PROGRAM, "kind": "binary", "lambda": 100.0, "algorithm": "fast"}
    )
    assert registered.status_code == 201, registered.text
    program = registered.json()
    assert {c["name"] for site in program["call_sites"] for c in site["candidates"]} == set(VISION)
    before = http.get(f"{policy}/policies/{program['id']}", headers=key).json()
    assert before["algorithm"] == "fast" and before["observed"] == 0

    answers, labels = [], []
    for i, scene in enumerate(scene_stream(seed=5, count=30)):
        png = encode_png(scene.image)
        if i == 0:  # one multipart upload
            reply = http.post(
                f"{router}/answer", data={"program_id": program["id"]}, files={"image": ("frame.png", png, "image/png")}
            )
        else:
            image = base64.b64encode(png).decode()
            reply = http.post(f"{router}/answer", json={"program_id": program["id"], "image": image})
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["fallback"] is False and answer["error"] is None
        assert answer["answer"] in {"yes", "no"}
        assert answer["cost"] == pytest.approx(sum(call["cost"] for call in answer["trace"]))
        labels.append(_truth(scene))
        feedback = http.post(f"{router}/feedback", json={"decision_id": answer["decision_id"], "label": labels[-1]})
        assert feedback.status_code == 200, feedback.text
        answers.append(answer)
    repeat = http.post(f"{router}/feedback", json={"decision_id": answers[0]["decision_id"], "label": labels[0]})
    assert repeat.status_code == 200 and repeat.json()["repeat"] is True

    # The policy learned from every label: observed went from 0 to 30, and it decided differently.
    deadline = time.monotonic() + 10
    while (after := http.get(f"{policy}/policies/{program['id']}", headers=key).json())["observed"] < len(answers):
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
    assert after["observed"] == len(answers) and after["pending"] == 0
    assert len({json.dumps(a["decision"], sort_keys=True) for a in answers}) >= 2

    # The router's cost counter per program, function and backend is the sum of the traces' costs.
    traced: dict[tuple[str, str], float] = defaultdict(float)
    for answer in answers:
        for call in answer["trace"]:
            traced[(call["function"], call["backend"])] += call["cost"]
    pid, n = program["id"], len(answers)
    router_metrics = _metrics(router)
    for (function, backend), cost in traced.items():
        counted = _total(router_metrics, "fmprog_cost_total", program=pid, function=function, backend=backend)
        assert counted == pytest.approx(cost), (function, backend)
    assert _total(router_metrics, "fmprog_cost_total", program=pid) == pytest.approx(sum(traced.values()))
    assert _total(router_metrics, "fmprog_answers_total", program=pid, fallback="false") == n
    assert _total(router_metrics, "fmprog_feedback_total", program=pid, outcome="new") == n
    assert _total(router_metrics, "fmprog_feedback_total", program=pid, outcome="repeat") == 1
    right = sum(a["answer"] == label for a, label in zip(answers, labels, strict=True))
    assert _total(router_metrics, "fmprog_program_labels_total", program=pid, outcome="right") == right
    assert _total(router_metrics, "fmprog_program_labels_total", program=pid) == n

    policy_metrics = _metrics(policy)
    assert _total(policy_metrics, "fmprog_policy_decisions_total", program=pid, algorithm="fast") == n
    assert _total(policy_metrics, "fmprog_policy_feedback_total", program=pid, outcome="new") == n


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/answer", {"program_id": "0" * 32, "image": "aGVsbG8="}, 404, "program"),
        ("/answer", {"image": "aGVsbG8="}, 422, "program_id"),
        ("/feedback", {"decision_id": "0" * 32, "label": "yes"}, 404, "decision"),
        (
            "/programs",
            {"source": "import os\ndef execute_command(image):\n    return 1\n", "kind": "binary", "lambda": 1},
            422,
            "import",
        ),
        # the policy service checks the policy before the router stores the program
        (
            "/programs",
            {"source": PROGRAM, "kind": "binary", "lambda": 1, "algorithm": "fast", "hyperparameters": {"nu": -1}},
            422,
            "policy rejected: hyperparameters.nu",
        ),
        ("/programs", {"source": PROGRAM, "kind": "binary", "lambda": 1, "algorithm": "oracle"}, 422, "'oracle'"),
        # the router offers only the backends fmprog up serves: no llm here
        (
            "/programs",
            {"source": (ROOT / "examples/programs/landmark_city.py").read_text(), "kind": "open", "lambda": 1},
            422,
            "llm",
        ),
    ],
)
def test_bad_requests_are_4xx_over_the_real_stack(cluster, path, body, status, message):
    settings, _ = cluster
    reply = httpx.post(f"{settings.router_url}{path}", json=body, timeout=30)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["detail"]


def test_non_image_bytes_are_422(cluster):
    settings, _ = cluster
    router = settings.router_url
    program = httpx.post(f"{router}/programs", json={"source": PROGRAM, "kind": "binary", "lambda": 1}).json()
    as_json = {"program_id": program["id"], "image": base64.b64encode(b"not an image").decode()}
    assert httpx.post(f"{router}/answer", json=as_json).status_code == 422
    upload = httpx.post(
        f"{router}/answer", data={"program_id": program["id"]}, files={"image": ("x.png", b"\x89PNG nope", "image/png")}
    )
    assert upload.status_code == 422 and "image" in upload.json()["detail"]
    assert httpx.get(f"{router}/readyz").status_code == 200  # still serving


def test_the_policy_needs_its_key_and_everything_listens_on_loopback(cluster):
    """The policy refuses requests without the key fmprog up gave it (the router has it); nothing of
    the cluster, Ray's own processes included, listens beyond 127.0.0.1."""
    settings, stack = cluster
    policy = settings.policy_url
    assert httpx.get(f"{policy}/policies").status_code == 401
    assert httpx.delete(f"{policy}/policies/{'0' * 32}").status_code == 401
    assert httpx.get(f"{policy}/readyz").status_code == 200
    pids = _tree(stack.process.pid)
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    listening = {(line.split()[3], line.split()[5]) for line in ss if any(f"pid={pid}," in line for pid in pids)}
    assert len(listening) > 5  # the router, the policy, the proxy, Ray's GCS, raylet, agents ...
    # Ray Serve 2.60 binds each replica's inter-deployment gRPC server to [::]:0 in its code (replica.py),
    # whatever the node's address: the one exception, named in docs/operations.md.
    outside = [(a, who) for a, who in listening if not is_loopback(a.rsplit(":", 1)[0].strip("[]"))]
    assert outside and all("ray::ServeRepli" in who for _, who in outside), sorted(outside)


def _tree(pid: int) -> set[int]:
    """``pid`` and all its descendants."""
    pids, todo = set(), [pid]
    while todo:
        pids.add(current := todo.pop())
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in children.read_text().split()]
    return pids


def test_sigterm_stops_everything(cluster):
    """Last in this module: SIGTERM, exit 0, every service's port closed, its processes gone."""
    settings, stack = cluster
    pids = _service_pids(settings)
    urls = [settings.router_url, settings.policy_url, settings.serve_url]
    assert all(_listening(url) for url in urls)
    started = time.monotonic()
    assert stack.stop(timeout_s=90) == 0, stack.output(30)
    assert time.monotonic() - started < 60
    assert not any(_listening(url) for url in urls)
    assert not any(_alive(pid) for pid in pids)
    assert "SIGTERM: everything stopped" in stack.output()


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_killed_policy_is_restarted_and_nothing_acknowledged_is_lost(tmp_path):
    """SIGKILL the policy under fmprog up: the router keeps answering (fallback decisions) and
    acknowledging feedback, fmprog up restarts the policy, the outbox delivers what waited, and the
    policy learned from every label; the router was never restarted."""
    settings = _settings(tmp_path, ["detect-small", "vqa-small"])
    env = {**os.environ, "FMPROG_ROUTER_OUTBOX_RETRY_S": "0.5"}
    key = {"authorization": f"Bearer {settings.policy_api_key.get_secret_value()}"}
    router, policy = settings.router_url, settings.policy_url
    http = httpx.Client(timeout=60)
    with StackProcess(settings, env=env) as stack:
        policy_pid, router_pid = _service_pids(settings)
        body = {"source": PROGRAM, "kind": "binary", "lambda": 1.0, "algorithm": "fast"}
        program = http.post(f"{router}/programs", json=body).json()
        frames = [base64.b64encode(encode_png(s.image)).decode() for s in scene_stream(seed=3, count=5)]
        answers = [http.post(f"{router}/answer", json={"program_id": program["id"], "image": f}).json() for f in frames]
        assert not any(a["fallback"] for a in answers[:4])
        first = {"decision_id": answers[0]["decision_id"], "label": "no"}
        assert http.post(f"{router}/feedback", json=first).status_code == 200

        os.kill(policy_pid, signal.SIGKILL)
        _wait_for(lambda: not _alive(policy_pid), 10, "the policy did not die")
        for answer in answers[1:4]:  # acknowledged while the policy is dead
            reply = http.post(f"{router}/feedback", json={"decision_id": answer["decision_id"], "label": "yes"})
            assert reply.status_code == 200, reply.text
        served = http.post(f"{router}/answer", json={"program_id": program["id"], "image": frames[4]})
        assert served.status_code == 200  # the router keeps serving, with a fallback decision

        _wait_for(lambda: "policy restarted" in stack.output(), 90, stack.output(30))
        assert stack.returncode is None
        assert "restarting the policy in" in stack.output() and "exited on its own" in stack.output()
        _wait_for(lambda: http.get(f"{router}/readyz").json()["policy_outbox"] == 0, 30, "the outbox did not drain")
        ready = http.get(f"{router}/readyz").json()
        assert ready["policy_dead_letters"] == 0
        state = http.get(f"{policy}/policies/{program['id']}", headers=key).json()
        assert state["observed"] == 4, state  # every acknowledged label reached the policy
        assert _total(_metrics(policy), "fmprog_service_restarts_total") == 1
        assert _total(_metrics(router), "fmprog_service_restarts_total") == 0
        new_policy_pid, new_router_pid = _service_pids(settings)
        assert new_policy_pid != policy_pid and new_router_pid == router_pid and _alive(router_pid)
        decided = http.post(f"{router}/answer", json={"program_id": program["id"], "image": frames[0]}).json()
        assert decided["fallback"] is False  # the policy decides again
    assert stack.returncode == 0


def test_a_service_that_keeps_dying_stops_the_rest_with_exit_1(tmp_path):
    settings = StackSettings.on_free_ports(config=CPU, backends=["detect-small"], state_dir=tmp_path, max_restarts=1)
    with StackProcess(settings) as stack:
        policy_pid, router_pid = _service_pids(settings)
        os.kill(router_pid, signal.SIGKILL)
        _wait_for(lambda: "router restarted" in stack.output(), 60, stack.output(30))
        _, second_router_pid = _service_pids(settings)
        assert second_router_pid != router_pid and _listening(settings.router_url)
        signal_sent = time.monotonic()
        os.kill(second_router_pid, signal.SIGKILL)
        assert stack.process.wait(90) == 1
        assert time.monotonic() - signal_sent < 60
    output = stack.output()
    assert "the router died 2 times within 300 s (--max-restarts 1): stopping everything" in output
    assert not _alive(policy_pid)
    assert not any(_listening(url) for url in (settings.router_url, settings.policy_url, settings.serve_url))


# -- settings, validated before anything starts ----------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"router_port": 0}, "greater than or equal to 1"),
        ({"serve_port": 70000}, "less than or equal to 65535"),
        ({"router_port": 9000, "policy_port": 9000}, "router and policy ports are both 9000"),
        ({"host": "0.0.0.0"}, "refusing to listen on 0.0.0.0 without an api_key"),
        ({"host": "0.0.0.0", "api_key": "short"}, "at least 16 characters"),
        ({"backends": ["detect-small", "nope"]}, "unknown backends ['nope']"),
        ({"backends": ["Bad Name"]}, "String should match pattern"),
        ({"backends": []}, "at least 1 item"),
        ({"config": "absent.yaml"}, "cannot read backend configuration"),
        ({"num_cpus": 0}, "greater than 0"),
    ],
)
def test_stack_settings_refuse(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        StackSettings(**{"config": CPU, **fields})


def test_restarts_back_off_exponentially_with_jitter():
    settings = StackSettings(config=CPU, restart_backoff_s=0.5, restart_backoff_max_s=4)
    middle = [restart_delay(deaths, settings, draw=lambda: 0.5) for deaths in range(1, 7)]
    assert middle == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert restart_delay(1, settings, draw=lambda: 0.0) == 0.25 and restart_delay(3, settings, draw=lambda: 0.999) < 3


def test_stack_settings_on_free_ports_are_distinct_and_free(monkeypatch, tmp_path):
    import launcher.settings

    draws = iter([21000, 21000, 21001, 21000, 21002])  # a port drawn twice is drawn again
    monkeypatch.setattr(launcher.settings, "free_port", lambda: next(draws))
    settings = StackSettings.on_free_ports(config=CPU, state_dir=tmp_path)
    assert (settings.router_port, settings.policy_port, settings.serve_port) == (21000, 21001, 21002)
    assert settings.state_dir == tmp_path


def test_stack_settings_wire_the_services_together(tmp_path):
    settings = StackSettings(
        config=CPU,
        host="0.0.0.0",
        api_key=SecretStr("k" * 16),
        backends=["vqa-small"],
        router_port=1,
        policy_port=2,
        serve_port=3,
        state_dir=tmp_path,
    )
    router = settings.router_settings()
    assert router.policy_url == "http://127.0.0.1:2" and router.serve_url == "http://127.0.0.1:3"
    assert router.database == tmp_path.resolve() / "router.sqlite3" and router.backends == ["vqa-small"]
    assert settings.policy_settings().state_dir == tmp_path.resolve() / "policy"
    assert settings.policy_settings().host == "127.0.0.1"  # the policy has no auth: loopback only
    assert [spec.name for spec in settings.catalog().backends] == ["vqa-small"]
    arguments = up_arguments(settings)
    assert "k" * 16 not in " ".join(arguments)  # the key travels in the environment, not on the command line
    assert arguments[arguments.index("--backends") + 1] == "vqa-small"


def test_child_env_sets_and_removes():
    base = {"FMPROG_ROUTER_BACKENDS": '["x"]', "FMPROG_ROUTER_FALLBACK": "largest", "PATH": "/bin"}
    env = child_env("FMPROG_ROUTER_", {"backends": None, "api_key": SecretStr("s" * 16), "port": 1}, base)
    assert env == {
        "FMPROG_ROUTER_FALLBACK": "largest",
        "PATH": "/bin",
        "FMPROG_ROUTER_API_KEY": "s" * 16,
        "FMPROG_ROUTER_PORT": "1",
    }
    assert json.loads(child_env("P_", {"backends": ["a", "b"]}, {})["P_BACKENDS"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "backends"),
    [
        ('["vqa-large", "detect-small"]', ["vqa-large", "detect-small"]),
        ("vqa-large, detect-small", ["vqa-large", "detect-small"]),
        ("", None),
    ],
)
def test_router_backends_from_the_environment(monkeypatch, value, backends):
    monkeypatch.setenv("FMPROG_ROUTER_BACKENDS_CONFIG", str(CPU))
    monkeypatch.setenv("FMPROG_ROUTER_BACKENDS", value)
    settings = RouterSettings()
    assert settings.backends == backends
    offered = [s.name for s in settings.load_catalog().backends]
    assert offered == (["detect-small", "vqa-large"] if backends else [s.name for s in load_catalog(CPU).backends])


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (
            '["vqa-large", "nope"]',
            ConfigError,
            r"unknown backends \['nope'\]; .*synthetic.yaml defines \['detect-small'",
        ),
        ("vqa-large,vqa-large", ValidationError, "'vqa-large' is listed twice"),
        ("[]", ValidationError, "at least 1 item"),
    ],
)
def test_router_refuses_backends_it_cannot_offer(monkeypatch, value, error, message):
    monkeypatch.setenv("FMPROG_ROUTER_BACKENDS_CONFIG", str(CPU))
    monkeypatch.setenv("FMPROG_ROUTER_BACKENDS", value)
    with pytest.raises(error, match=message):
        RouterSettings().load_catalog()
