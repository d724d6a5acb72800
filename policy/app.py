"""The policy service's HTTP API (FastAPI): the routes of ``policy.routes`` over ``PolicyService``.

uvicorn --factory policy.app:create_app     # settings from FMPROG_POLICY_* variables
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

from fastapi import FastAPI

from fmprog.web import add_error_shape, add_security, every
from policy.routes import decisions, feedback, operations, policies, reuse
from policy.routes.common import ERROR_STATUSES
from policy.service import PolicyService
from policy.settings import PolicySettings


def create_app(settings: PolicySettings | None = None) -> FastAPI:
    settings = settings or PolicySettings()
    description = "Per-program backend choice, learned online."
    lifespan = functools.partial(_serving, settings=settings)
    app = FastAPI(title="fmprog policy", description=description, lifespan=lifespan)
    add_security(app, settings)
    add_error_shape(app, ERROR_STATUSES)
    for routes in (policies, decisions, feedback, reuse, operations):
        app.include_router(routes.router)
    return app


@contextlib.asynccontextmanager
async def _serving(app: FastAPI, *, settings: PolicySettings) -> AsyncIterator[None]:
    """The app's lifespan: build the service (on ``app.state``), restored from its state, train it
    and expire its old decisions in the background while the app serves, and close it after."""
    service = PolicyService(settings)
    service.restore()
    service.metrics.restarts.inc(settings.restarts)
    app.state.service = service

    def train_and_expire() -> None:
        service.train_once()
        service.expire()

    try:
        with every(settings.train_interval_s, train_and_expire, name="policy-trainer"):
            yield
    finally:
        service.close()
