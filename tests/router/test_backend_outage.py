"""Backends gone: a frame none of whose backends could be reached (no connection, no replica, an
open circuit, a 503) is recorded as a ``backend_error`` and then refused with BackendsUnavailable
(503 and Retry-After over HTTP), not answered 200; a backend that answered badly (a refusal, a
malformed reply) is still an answer with its ``backend_error``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog, BackendRegistry, Detection
from fmprog.images import encode_base64_png, encode_png
from fmprog.program import ExecutionLimits
from router.answering import RETRY_AFTER_S
from router.app import create_app
from router.errors import BackendsUnavailable
from router.outbox import Outbox
from router.service import RouterService
from router.settings import RouterSettings
from router.store import Store
from services.client import HttpBackend
from services.cluster import free_port
from tests.fakes import Zoo
from tests.router.conftest import create
from tests.servers import serving
from tests.services.test_client_deadline import Stalling

FRAME = np.zeros((80, 100, 3), np.uint8)
DETECTORS = ("detect-small", "detect-large")


class Refused:
    """A detector in this process whose server is gone: every call fails to connect."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray, noun: str) -> list[Detection]:
        self.calls += 1
        raise ConnectionRefusedError(111, "Connection refused")


class Garbled:
    """A detector that answers, but not with detections."""

    def detect(self, image: np.ndarray, noun: str) -> Any:
        return ["not a detection"]


class Failing:
    """A detector that answers with an error of its own (not a failure to reach it)."""

    def detect(self, image: np.ndarray, noun: str) -> list[Detection]:
        raise RuntimeError("the engine cannot read this noun")


def _registry(zoo: Zoo, **detectors: object) -> BackendRegistry:
    return BackendRegistry.from_specs(zoo.specs, {**zoo.models, **detectors})


@pytest.fixture
def serve(tmp_path) -> Iterator[Any]:
    """A router service over the given backends (no policy: the fallback decides), closed after."""
    made: list[tuple[RouterService, Store]] = []

    def make(backends: BackendRegistry, **options: Any) -> RouterService:
        store = Store(tmp_path / f"router-{len(made)}.db")
        service = RouterService(
            store,
            BackendCatalog(backends=[backends[name].spec for name in backends]),
            backends,
            policy=None,
            outbox=Outbox(store),
            retry_backoff_s=(0.0, 0.0),
            label_window_s=3600,
            **options,
        )
        made.append((service, store))
        return service

    yield make
    for service, store in made:
        service.close()
        store.close()


def _stored(service: RouterService, program_id: str) -> list[Any]:
    return service.store.list_frames(program_id)


def test_unreachable_backends_refuse_the_frame_and_keep_its_decision(serve):
    zoo = Zoo()
    small, large = Refused(), Refused()
    service = serve(_registry(zoo, **{"detect-small": small, "detect-large": large}))
    program = service.register(create("person_on_bike"))
    with pytest.raises(BackendsUnavailable) as refused:
        service.answer(program.id, encode_png(FRAME))
    message = str(refused.value)
    assert "'detect-small', 'detect-large'" in message and "could be reached" in message
    assert refused.value.retry_after_s == RETRY_AFTER_S  # no client says how long: the default
    assert (small.calls, large.calls) == (2, 1)  # the decided one and its retry, then the alternate
    [stored] = _stored(service, program.id)  # recorded as any answer: nothing accepted is lost
    assert stored.error is not None and stored.error.kind == "backend_error"
    assert stored.id in message
    assert [(i.backend, i.ok) for i in stored.trace] == [
        ("detect-small", False),
        ("detect-small", False),
        ("detect-large", False),
    ]


def test_programs_run_in_worker_processes_are_refused_too(serve):
    """The calls a worker asks for are made in the answering thread: their failures are judged there."""
    zoo = Zoo()
    service = serve(_registry(zoo, **{"detect-small": Refused(), "detect-large": Refused()}), program_workers=1)
    program = service.register(create("person_on_bike"))
    with pytest.raises(BackendsUnavailable, match="'detect-small', 'detect-large'"):
        service.answer(program.id, encode_png(FRAME))
    service = serve(_registry(zoo, **{"detect-small": Refused(), "detect-large": Garbled()}), program_workers=1)
    program = service.register(create("person_on_bike"))
    assert service.answer(program.id, encode_png(FRAME)).error.kind == "backend_error"


def test_decoded_frames_are_refused_too(serve):
    zoo = Zoo()
    service = serve(_registry(zoo, **{"detect-small": Refused(), "detect-large": Refused()}))
    program = service.register(create("person_on_bike"))
    with pytest.raises(BackendsUnavailable):
        service.answer_frame(program.id, FRAME)
    assert len(_stored(service, program.id)) == 1


@pytest.mark.parametrize("other", [Garbled, Failing])
def test_a_backend_that_answered_badly_is_still_an_answer(serve, other):
    """A malformed reply, or an error of the backend's own, is its answer: 200 with the
    backend_error, as before, even when the other backend could not be reached."""
    zoo = Zoo()
    service = serve(_registry(zoo, **{"detect-small": Refused(), "detect-large": other()}))
    program = service.register(create("person_on_bike"))
    result = service.answer(program.id, encode_png(FRAME))
    assert result.error is not None and result.error.kind == "backend_error"
    assert len(_stored(service, program.id)) == 1
    service = serve(_registry(zoo, **{"detect-small": other(), "detect-large": other()}))
    program = service.register(create("person_on_bike"))
    assert service.answer(program.id, encode_png(FRAME)).error.kind == "backend_error"


def test_a_backend_that_comes_back_answers_again(serve):
    zoo = Zoo()
    small = Refused()
    backends = _registry(zoo, **{"detect-small": small, "detect-large": Refused()})
    service = serve(backends)
    program = service.register(create("person_on_bike"))
    with pytest.raises(BackendsUnavailable):
        service.answer(program.id, encode_png(FRAME))
    small.detect = zoo.models["detect-small"].detect  # type: ignore[method-assign]  # back
    result = service.answer(program.id, encode_png(FRAME))
    assert result.error is None and result.answer == "no"


# -- the backends' real HTTP clients ----------------------------------------------------------------


class Serve:
    """A stand-in for the Serve proxy's backend routes, answering every detection with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/readyz")
        def ready() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/{backend}/detect")
        def detect(backend: str) -> JSONResponse:
            return JSONResponse({"detail": f"failing with {self.status}"}, status_code=self.status)

        return app


def _clients(zoo: Zoo, url: str, **options: Any) -> tuple[BackendRegistry, list[HttpBackend]]:
    clients = [HttpBackend(zoo.specs[[s.name for s in zoo.specs].index(name)], url, **options) for name in DETECTORS]
    return _registry(zoo, **{client.spec.name: client.model() for client in clients}), clients


def test_a_proxy_that_is_gone_refuses_the_frame_until_its_circuit_may_close(serve):
    """Nothing listens where the backends were: each client fails to connect, its circuit opens,
    and the frame may be tried again when the first circuit closes (its cool-down, 60 s here)."""
    zoo = Zoo()
    backends, clients = _clients(zoo, f"http://127.0.0.1:{free_port()}", breaker_failures=1, breaker_reset_s=60)
    service = serve(backends)
    program = service.register(create("person_on_bike"))
    with pytest.raises(BackendsUnavailable) as refused:
        service.answer(program.id, encode_png(FRAME))
    assert all(client.circuit_open() for client in clients)
    assert 50 < refused.value.retry_after_s <= 60
    [stored] = _stored(service, program.id)
    assert "unreachable" in stored.trace[0].error and "circuit open" in stored.trace[1].error
    for client in clients:
        client.close()


def test_503_is_unavailable_and_422_an_answer(serve):
    zoo = Zoo()
    for status, refused in ((503, True), (502, True), (422, False), (500, False)):
        with serving(Serve(status).app()) as url:
            backends, clients = _clients(zoo, url, breaker_failures=5)
            service = serve(backends)
            program = service.register(create("person_on_bike"))
            if refused:
                with pytest.raises(BackendsUnavailable, match="could be reached"):
                    service.answer(program.id, encode_png(FRAME))
            else:
                assert service.answer(program.id, encode_png(FRAME)).error.kind == "backend_error"
            assert len(_stored(service, program.id)) == 1
            for client in clients:
                client.close()


def test_over_http_the_frame_is_refused_with_503_and_retry_after(tmp_path):
    zoo = Zoo()
    backends, clients = _clients(zoo, f"http://127.0.0.1:{free_port()}", breaker_failures=1, breaker_reset_s=60)
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None, backend_retry_backoff_s=(0, 0))
    catalog = BackendCatalog(backends=zoo.specs)
    with TestClient(create_app(settings, catalog=catalog, backends=backends)) as http:
        body = {"source": create("person_on_bike").source, "kind": "binary", "lambda": 0.01}
        program = http.post("/programs", json=body).json()
        reply = http.post("/answer", json={"program_id": program["id"], "image": encode_base64_png(FRAME)})
        assert reply.status_code == 503, reply.text
        assert "'detect-small', 'detect-large'" in reply.json()["detail"]
        assert 50 < int(reply.headers["retry-after"]) <= 60
        decision_id = reply.json()["detail"].split("recorded as decision ")[1].split(",")[0]
        labelled = http.post("/feedback", json={"decision_id": decision_id, "label": "no"})
        assert labelled.status_code == 200, labelled.text  # the decision was kept: its label is taken
    for client in clients:
        client.close()


def test_backends_that_stall_refuse_the_frame_by_its_time_limit(serve):
    """Replicas gone behind a handle or a proxy that hangs: no reply at all. The calls end with the
    run's time (not the client's 60 s), and the frame is refused as unreachable, not answered with
    its timeout."""
    stalling = Stalling()
    zoo = Zoo()
    with serving(stalling.app()) as url:
        clients = {name: HttpBackend(zoo.registry()[name].spec, url, timeout_s=60) for name in DETECTORS}
        detectors = {name: client.model() for name, client in clients.items()}
        service = serve(_registry(zoo, **detectors), limits=ExecutionLimits(timeout_s=1.5), retries=0)
        program = service.register(create("person_on_bike"))
        with pytest.raises(BackendsUnavailable, match="could be reached"):
            service.answer(program.id, encode_png(FRAME))
        [stored] = _stored(service, program.id)
        assert stored.error is not None and stored.error.kind in ("timeout", "backend_error")
        assert stalling.requests >= 1
        stalling.released.set()
        for client in clients.values():
            client.close()
