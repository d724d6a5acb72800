"""What running a service takes besides its own routes: the operations routes (metrics, liveness,
readiness), which need no key, and background work that runs while the service does."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fmprog.web.errors import error_responses

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
"""The paths that answer without a key: the operations routes (a probe or a scraper has none) and
the API's description (FastAPI's interactive docs and the OpenAPI schema: what can be called is
public; calling it still takes a key)."""


def operations_router(readiness: Callable[[Any], dict[str, Any]]) -> APIRouter:
    """``GET /metrics`` (the registry at ``app.state.service.metrics.registry``), ``GET /healthz``
    (the process answers) and ``GET /readyz`` (503 until ``app.state.service`` exists, then
    ``readiness(service)``)."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        registry = request.app.state.service.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Whether the process answers (liveness)."""
        return {"status": "ok"}

    @router.get("/readyz", responses=error_responses(503))
    async def readyz(request: Request) -> Any:
        """Whether the service is ready to take requests (503 while it starts), with its counts."""
        service = getattr(request.app.state, "service", None)
        if service is None:
            return JSONResponse({"detail": "starting"}, status_code=503)
        return {"status": "ready", **readiness(service)}

    return router


@contextlib.contextmanager
def every(interval_s: float, work: Callable[[], object], *, name: str, join_timeout_s: float = 30) -> Iterator[None]:
    """Run ``work`` every ``interval_s`` in a daemon thread while the block runs (an app's
    background trainer or courier); stop it and wait for the round in progress on exit."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            work()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=join_timeout_s)
