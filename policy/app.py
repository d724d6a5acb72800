"""The policy service's HTTP API (FastAPI): thin routes over ``PolicyService``.

uvicorn --factory policy.app:create_app     # settings from FMPROG_POLICY_* variables
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fmprog.images import ImageError, decode_base64_image
from fmprog.web import BodyLimit, add_operations_routes, error_responses, every, validation_error_handler
from policy.schemas import DecisionOut, Feedback, PolicySpec
from policy.service import (
    DuplicateDecision,
    FeedbackConflict,
    PolicyInfo,
    PolicyService,
    UnknownDecision,
    UnknownPolicy,
)
from policy.settings import PolicySettings


class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(min_length=1, max_length=64, description="The router's id for this decision.")
    image: str = Field(min_length=1, description="The frame: base64 PNG or JPEG.")


class FeedbackAccepted(BaseModel):
    decision_id: str
    repeat: bool


def _service(request: Request) -> PolicyService:
    return request.app.state.service


def create_app(settings: PolicySettings | None = None) -> FastAPI:
    settings = settings or PolicySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = PolicyService(settings)
        service.restore()
        app.state.service = service

        def train_and_expire() -> None:
            service.train_once()
            service.expire()

        try:
            with every(settings.train_interval_s, train_and_expire, name="policy-trainer"):
                yield
        finally:
            service.close()

    app = FastAPI(title="fmprog policy", description="Per-program backend choice, learned online.", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_exception_handler(RequestValidationError, validation_error_handler)

    @app.exception_handler(UnknownPolicy)
    @app.exception_handler(UnknownDecision)
    async def _not_found(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(FeedbackConflict)
    @app.exception_handler(DuplicateDecision)
    async def _conflict(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(ValueError)
    async def _invalid(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.put("/policies/{program_id}", response_model=PolicyInfo, responses=error_responses(422))
    async def put_policy(request: Request, program_id: str, spec: PolicySpec) -> PolicyInfo:
        return await run_in_threadpool(_service(request).put, program_id, spec)

    @app.get("/policies", response_model=list[PolicyInfo])
    async def list_policies(request: Request) -> list[PolicyInfo]:
        service = _service(request)
        return [service.info(p) for p in service.programs()]

    @app.get("/policies/{program_id}", response_model=PolicyInfo, responses=error_responses(404))
    async def get_policy(request: Request, program_id: str) -> PolicyInfo:
        return _service(request).info(program_id)

    @app.delete("/policies/{program_id}", status_code=204, responses=error_responses(404))
    async def delete_policy(request: Request, program_id: str) -> Response:
        await run_in_threadpool(_service(request).delete, program_id)
        return Response(status_code=204)

    @app.post("/policies/{program_id}/decisions", response_model=DecisionOut, responses=error_responses(404, 409, 422))
    async def decide(request: Request, program_id: str, body: DecideRequest) -> DecisionOut:
        try:
            frame = decode_base64_image(body.image)
        except ImageError as exc:
            raise ValueError(f"image: {exc}") from None
        return await run_in_threadpool(_service(request).decide, program_id, body.decision_id, frame)

    @app.post(
        "/policies/{program_id}/feedback", response_model=FeedbackAccepted, responses=error_responses(404, 409, 422)
    )
    async def feedback(request: Request, program_id: str, body: Feedback) -> FeedbackAccepted:
        repeat = await run_in_threadpool(_service(request).feedback, program_id, body)
        return FeedbackAccepted(decision_id=body.decision_id or "", repeat=repeat)

    add_operations_routes(app, lambda service: {"policies": len(service.programs())})
    return app
