"""A backend call never outlives the run that makes it (``fmprog.backends.deadline``): against a
real HTTP backend that stalls and through a Serve handle that never answers, a call made under a
run's deadline ends at it; one cut short before ``STALL_S`` does not count against the backend's
circuit (a program calling at the end of its time cannot open another tenant's circuits), one that
waited longer does; with no time left no request is sent; and a run of the executor whose backend
stalls ends by its own time limit."""

from __future__ import annotations

import threading
from time import perf_counter
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI

from fmprog.backends import BackendRegistry, BackendSpec, Function
from fmprog.backends.base import Backend
from fmprog.backends.deadline import STALL_S, call_timeout, run_deadline
from fmprog.images import encode_base64_png
from fmprog.program import ExecutionLimits, Executor, compile_program
from services.client import BackendCallError, HandleBackend, HttpBackend
from tests.servers import serving

SPEC = BackendSpec(name="detect-small", function=Function.detect, cost=1)
FRAME = np.zeros((16, 16, 3), np.uint8)


class Stalling:
    """A backend that takes each request and answers none until released."""

    def __init__(self) -> None:
        self.requests = 0
        self.released = threading.Event()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/readyz")
        def ready() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/{backend}/detect")
        def detect(backend: str) -> dict[str, Any]:
            self.requests += 1
            self.released.wait(30)
            return {"detections": [], "batch_size": 1, "compute_s": 0.0}

        return app


@pytest.fixture
def stalling():
    backend = Stalling()
    with serving(backend.app()) as url:
        yield backend, url
        backend.released.set()


def _call(client: HttpBackend) -> None:
    client.reply(Function.detect, {"image": encode_base64_png(FRAME), "query": "circle"})


def test_call_timeout_is_the_runs_time_left_when_that_is_less():
    assert call_timeout(60) == (60, False)
    with run_deadline(perf_counter() + 5):
        left, cut = call_timeout(60)
        assert cut and 0 < left <= 5
        assert call_timeout(1) == (1, False)
    assert call_timeout(60) == (60, False)  # the block is over


def test_a_call_cut_short_early_does_not_count_against_the_backend(stalling):
    backend, url = stalling
    client = HttpBackend(SPEC, url, timeout_s=60, breaker_failures=1)
    with run_deadline(perf_counter() + 0.3), pytest.raises(BackendCallError, match="left of the run") as failed:
        _call(client)
    assert not failed.value.retryable and backend.requests == 1
    assert not client.circuit_open()  # one failure would have opened it
    with run_deadline(perf_counter() - 1), pytest.raises(BackendCallError, match="no time left"):
        _call(client)
    assert backend.requests == 1  # nothing sent
    client.close()


def test_a_call_that_stalls_past_stall_s_counts_against_the_backend(stalling):
    _, url = stalling
    client = HttpBackend(SPEC, url, timeout_s=60, breaker_failures=1)
    with run_deadline(perf_counter() + STALL_S + 0.2), pytest.raises(BackendCallError) as failed:
        _call(client)
    assert failed.value.retryable and failed.value.status is None
    assert client.circuit_open()
    client.close()


class _NeverAnswered:
    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def result(self, timeout_s: float) -> Any:
        self.timeouts.append(timeout_s)
        raise TimeoutError

    def cancel(self) -> None:
        pass


class _Handle:
    """A Serve handle whose replicas are gone: every request waits for its timeout."""

    def __init__(self) -> None:
        self.response = _NeverAnswered()
        self.calls = self

    def remote(self, *_: Any) -> _NeverAnswered:
        return self.response


def test_a_handle_call_waits_no_longer_than_the_run_and_at_least_stall_s():
    handle = _Handle()
    client = HandleBackend(SPEC, handle, timeout_s=60, breaker_failures=1, put=lambda frame: frame)
    with run_deadline(perf_counter() + 0.2), pytest.raises(BackendCallError):
        client.reply(Function.detect, FRAME, "circle")
    # The request (which may carry other runs' calls) waited STALL_S, not 60 s nor 0.2 s.
    assert handle.response.timeouts == [pytest.approx(STALL_S)]
    assert client.circuit_open()  # it waited STALL_S: a backend that stalls


def test_a_run_whose_backend_stalls_ends_by_its_time_limit(stalling):
    _, url = stalling
    client = HttpBackend(SPEC, url, timeout_s=60)
    backends = BackendRegistry([Backend(SPEC, client.model())])
    executor = Executor(backends, ExecutionLimits(timeout_s=0.5), retries=0)
    program = compile_program("def execute_command(image):\n    return ImagePatch(image).exists('circle')\n")
    trace = executor.run(program, FRAME, {site.id: "detect-small" for site in program.call_sites})
    assert trace.error is not None and trace.error.kind in ("timeout", "backend_error")
    assert "left of the run" in str(trace.invocations[0].error)
    client.close()
