"""SIGKILL mid-stream under ``fmprog up``: of the router (the supervisor restarts it) and of a
backend's Ray Serve replica (Serve replaces it). A client streams frames with a label for each
throughout, sending again what the cluster did not answer; afterwards every label the router
acknowledged has been learned by the policy exactly once, and the cluster serves again. The
policy's SIGKILL is in ``tests/launcher/test_up.py``."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from launcher.process import StackProcess
from launcher.settings import StackSettings
from tests.launcher.test_up import CPU, PROGRAM, _alive, _metrics, _service_pids, _total, _wait_for
from tests.reliability.streaming import FrameStream, children, command_line, labelled_frames, learned_by_the_policy

pytestmark = pytest.mark.timeout(300)
DETECTOR = "detect-small"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    settings = StackSettings.on_free_ports(
        config=CPU, backends=[DETECTOR, "vqa-small"], state_dir=tmp_path_factory.mktemp("stack")
    )
    # Undelivered labels are retried every 0.5 s, and a backend skipped after failures in a row
    # (its circuit open) is tried again after 1 s, so that the cluster heals within the test.
    env = {**os.environ, "FMPROG_ROUTER_OUTBOX_RETRY_S": "0.5", "FMPROG_ROUTER_BACKEND_BREAKER_RESET_S": "1"}
    with StackProcess(settings, env=env) as stack:
        yield settings, stack


def _register(settings: StackSettings) -> str:
    body = {"source": PROGRAM, "kind": "binary", "lambda": 1.0, "algorithm": "fast"}
    reply = httpx.post(f"{settings.router_url}/programs", json=body, timeout=60)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def _replicas(stack: StackProcess, backend: str) -> list[int]:
    """The pids of ``backend``'s live Serve replicas (Ray names each replica actor's process)."""
    assert stack.process is not None
    name = f"ray::ServeReplica:{backend}:"
    return sorted(pid for pid in children(stack.process.pid) if command_line(pid).startswith(name) and _alive(pid))


def _learned_exactly_once(settings: StackSettings, program_id: str, stream: FrameStream) -> None:
    """Once the router's outbox is empty, the policy learned each acknowledged label once: as many
    labels observed, and as many taken as new, as the router acknowledged for its decisions."""
    router, policy = settings.router_url, settings.policy_url
    key = {"authorization": f"Bearer {settings.policy_api_key.get_secret_value()}"}
    _wait_for(lambda: httpx.get(f"{router}/readyz").json()["policy_outbox"] == 0, 60, "the outbox did not drain")
    assert httpx.get(f"{router}/readyz").json()["policy_dead_letters"] == 0
    expected = learned_by_the_policy(stream)
    assert len(expected) == len(set(expected)) > 0
    state = httpx.get(f"{policy}/policies/{program_id}", headers=key).json()
    assert state["observed"] == len(expected), state
    assert _total(_metrics(policy), "fmprog_policy_feedback_total", program=program_id, outcome="new") == len(expected)


def test_a_killed_router_is_restarted_and_every_acknowledged_label_is_learned_once(cluster):
    settings, stack = cluster
    program_id = _register(settings)
    policy_pid, router_pid = _service_pids(settings)
    restarted = stack.output().count("router restarted")
    restarts = _total(_metrics(settings.router_url), "fmprog_service_restarts_total")
    with FrameStream(settings.router_url, program_id, labelled_frames(seed=11, count=24)) as stream:
        _wait_for(lambda: len(stream.labelled) >= 5 or not stream.running, 120, "the stream did not start")
        os.kill(router_pid, signal.SIGKILL)
        killed = time.monotonic()
        _wait_for(lambda: not _alive(router_pid), 10, "the router did not die")
        _wait_for(lambda: stack.output().count("router restarted") > restarted, 120, stack.output(30))
        _wait_for(lambda: len(stream.labelled_since(killed)) >= 5 or not stream.running, 120, "the stream stalled")
    assert stream.failure is None, stream.failure
    assert stream.retried > 0  # the client met the router gone and sent again
    assert stack.returncode is None  # fmprog up kept the rest running
    new_policy_pid, new_router_pid = _service_pids(settings)
    assert new_router_pid != router_pid and _alive(new_router_pid)
    assert new_policy_pid == policy_pid and _alive(policy_pid)  # the policy was never restarted
    assert _total(_metrics(settings.router_url), "fmprog_service_restarts_total") == restarts + 1
    after = stream.labelled_since(killed)
    assert any(done.answer["error"] is None and not done.answer["fallback"] for done in after)  # serving again
    _learned_exactly_once(settings, program_id, stream)


def test_a_killed_backend_replica_is_replaced_and_every_acknowledged_label_is_learned_once(cluster):
    settings, stack = cluster
    program_id = _register(settings)
    _, router_pid = _service_pids(settings)
    [replica] = _replicas(stack, DETECTOR)

    def answered_by_the_detector(since: float) -> bool:
        return any(
            done.answer["error"] is None
            and any(call["backend"] == DETECTOR and call["ok"] for call in done.answer["trace"])
            for done in stream.labelled_since(since)
        )

    with FrameStream(settings.router_url, program_id, labelled_frames(seed=12, count=24)) as stream:
        _wait_for(lambda: len(stream.labelled) >= 5 or not stream.running, 120, "the stream did not start")
        os.kill(replica, signal.SIGKILL)
        _wait_for(lambda: not _alive(replica), 10, "the replica did not die")
        _wait_for(lambda: _replicas(stack, DETECTOR) not in ([], [replica]), 120, "Serve started no new replica")
        replaced = time.monotonic()
        _wait_for(lambda: answered_by_the_detector(replaced) or not stream.running, 120, "no answer from the detector")
    assert stream.failure is None, stream.failure
    assert stack.returncode is None
    [new_replica] = _replicas(stack, DETECTOR)
    assert new_replica != replica and _alive(new_replica)
    assert _service_pids(settings)[1] == router_pid  # the router carried on through it
    assert answered_by_the_detector(replaced)  # answers resumed, from the new replica
    _learned_exactly_once(settings, program_id, stream)
