"""The router's backend client against a real HTTP server that fails on demand: its circuit breaker
(opens after failures in a row, refuses at once while open, a trial call closes it, 4xx answers do
not count, concurrent calls are not serialised), the executor's retries with backoff and its move
to the alternates when the circuit is open, and the router's metric of open circuits."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog, BackendRegistry, BackendSpec, Function
from fmprog.images import encode_base64_png
from fmprog.program import Executor, compile_program
from fmprog.program import executor as executor_module
from router.app import create_app
from router.settings import RouterSettings
from services.client import BackendCallError, HttpBackend
from tests.fakes import Zoo
from tests.servers import serving

SPEC = BackendSpec(name="detect-small", function=Function.detect, cost=1)
SOURCE = """def execute_command(image):
    image_patch = ImagePatch(image)
    return "yes" if image_patch.exists("circle") else "no"
"""
FRAME = np.zeros((16, 16, 3), np.uint8)


class Flaky:
    """What the fake backend answers: ``status`` (200: no detections); counts requests and the most in
    flight at once. With ``gather`` set, each request waits (up to ``gather_s``, then no request
    waits any more) until that many have been in flight together, so that requests sent concurrently
    are all seen in flight at once however slowly they arrive, and requests sent one after another
    are not."""

    def __init__(self) -> None:
        self.status = 200
        self.requests = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.gather = 0
        self.gather_s = 10.0
        self._changed = threading.Condition()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/readyz")
        def ready() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/{backend}/detect")
        def detect(backend: str, body: dict[str, Any]) -> JSONResponse:
            with self._changed:
                self.requests += 1
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                self._changed.notify_all()
                if not self._changed.wait_for(lambda: self.most_in_flight >= self.gather, timeout=self.gather_s):
                    self.gather = 0  # given up: the others do not wait
                    self._changed.notify_all()
                self.in_flight -= 1
            if self.status != 200:
                return JSONResponse({"detail": f"failing with {self.status}"}, status_code=self.status)
            return JSONResponse({"detections": [], "backend": backend, "batch_size": 1, "compute_s": 0.0})

        return app


@pytest.fixture
def flaky():
    backend = Flaky()
    with serving(backend.app()) as url:
        yield backend, url


def test_the_circuit_opens_after_failures_in_a_row_refuses_at_once_then_a_trial_closes_it(flaky):
    server, url = flaky
    client = HttpBackend(SPEC, url, breaker_failures=3, breaker_reset_s=0.5)
    detect = client.model().detect
    server.status = 503
    for _ in range(3):
        with pytest.raises(BackendCallError, match="HTTP 503") as failed:
            detect(FRAME, "circle")
        assert failed.value.retryable
    assert client.circuit_open()
    with pytest.raises(BackendCallError, match="circuit open after 3 failed calls in a row") as refused:
        detect(FRAME, "circle")
    assert not refused.value.retryable
    assert server.requests == 3  # refused at once: without a request

    server.status = 200
    time.sleep(0.6)
    assert detect(FRAME, "circle") == []  # the trial call
    assert not client.circuit_open()
    assert server.requests == 4
    client.close()


def test_refusals_do_not_open_the_circuit(flaky):
    server, url = flaky
    client = HttpBackend(SPEC, url, breaker_failures=2)
    server.status = 422
    for _ in range(5):
        with pytest.raises(BackendCallError, match="HTTP 422") as refused:
            client.model().detect(FRAME, "circle")
        assert not refused.value.retryable
    assert not client.circuit_open()
    assert server.requests == 5
    client.close()


def test_the_breaker_does_not_serialise_concurrent_calls(flaky):
    server, url = flaky
    server.gather = 4  # each request is held until all four are in flight (or, serialised, gives up)
    client = HttpBackend(SPEC, url)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: client.model().detect(FRAME, "circle"), range(4)))
    assert results == [[]] * 4
    assert server.requests == 4
    assert server.most_in_flight == 4  # sent one after another, only one would ever be in flight
    client.close()


def _registry(client: HttpBackend, zoo: Zoo) -> BackendRegistry:
    specs = [SPEC, BackendSpec(name="detect-large", function=Function.detect, cost=10)]
    models = {"detect-small": client.model(), "detect-large": zoo.models["detect-large"]}
    return BackendRegistry.from_specs(specs, models)


class _Sleeps:
    """The executor module's ``time``, recording each pause it sleeps (and still sleeping it)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_retries_pause_with_jitter_and_an_open_circuit_goes_to_the_alternate_at_once(flaky, monkeypatch):
    server, url = flaky
    server.status = 503
    sleeps = _Sleeps()
    monkeypatch.setattr(executor_module, "time", sleeps)
    client = HttpBackend(SPEC, url, breaker_failures=2, breaker_reset_s=60)
    executor = Executor(_registry(client, Zoo()), retries=1, retry_backoff_s=(0.1, 0.15))
    program = compile_program(SOURCE)
    alternates = {site: ["detect-large"] for site in (s.id for s in program.call_sites)}
    decision = {site: "detect-small" for site in (s.id for s in program.call_sites)}

    started = time.perf_counter()
    trace = executor.run(program, FRAME, decision, alternates=alternates)
    elapsed = time.perf_counter() - started
    assert trace.answer == "no"
    calls = [(i.backend, i.attempt, i.ok) for i in trace.invocations]
    assert calls == [("detect-small", 1, False), ("detect-small", 2, False), ("detect-large", 1, True)]
    assert elapsed >= 0.1  # the pause before the retry happened (at least its lower bound)
    assert len(sleeps.pauses) == 1  # one pause: before the retry, none before the alternate
    assert server.requests == 2
    assert client.circuit_open()

    trace = executor.run(program, FRAME, decision, alternates=alternates)
    calls = [(i.backend, i.attempt, i.ok) for i in trace.invocations]
    assert calls == [("detect-small", 1, False), ("detect-large", 1, True)]
    assert "circuit open" in trace.invocations[0].error
    assert server.requests == 2  # no request to the open circuit
    assert len(sleeps.pauses) == 1  # and no pause: the alternate at once
    assert client.circuit_open()
    client.close()


def test_the_router_publishes_open_circuits(flaky, tmp_path):
    server, url = flaky
    server.status = 503
    zoo = Zoo()
    client = HttpBackend(SPEC, url, breaker_failures=2, breaker_reset_s=60)
    registry = _registry(client, zoo)
    catalog = BackendCatalog(backends=[registry[name].spec for name in registry])
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None)
    with TestClient(create_app(settings, catalog=catalog, backends=registry)) as http:
        gauge = 'fmprog_backend_circuit_open{backend="detect-small"}'
        assert f"{gauge} 0.0" in http.get("/metrics").text
        created = http.post("/programs", json={"source": SOURCE, "kind": "binary", "lambda": 0.001})
        assert created.status_code == 201, created.text
        answered = http.post("/answer", json={"program_id": created.json()["id"], "image": encode_base64_png(FRAME)})
        assert answered.status_code == 200, answered.text
        assert answered.json()["answer"] == "no"  # the alternate answered
        assert f"{gauge} 1.0" in http.get("/metrics").text
    client.close()


def test_the_router_settings_of_retries_and_breakers(monkeypatch):
    monkeypatch.setenv("FMPROG_ROUTER_BACKEND_RETRY_BACKOFF_S", "[0.1, 0.3]")
    monkeypatch.setenv("FMPROG_ROUTER_BACKEND_BREAKER_FAILURES", "3")
    settings = RouterSettings()
    assert settings.backend_retry_backoff_s == (0.1, 0.3)
    assert settings.backend_breaker_failures == 3
    with pytest.raises(ValueError, match="backend_retry_backoff_s"):
        RouterSettings(backend_retry_backoff_s=(0.3, 0.1))
    with pytest.raises(ValueError, match="retry_backoff_s"):
        Executor(BackendRegistry([]), retry_backoff_s=(-1, 0))
    with pytest.raises(ValueError, match="breaker_failures"):
        HttpBackend(SPEC, "http://127.0.0.1:1", breaker_failures=0)
