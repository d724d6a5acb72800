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
from pydantic import ValidationError

from fmprog.contract import (
    ExpiredDecisions,
    Feedback,
    FeedbackList,
    FeedbackListReply,
    PolicyDecision,
    PolicySpec,
    ReuseOutcome,
    ReuseReply,
    ReuseRequest,
)
from fmprog.images import ImageError, base64_bytes, decode_image
from fmprog.web import (
    BearerAuth,
    BodyLimit,
    JsonGuard,
    LoopbackOnly,
    add_operations_routes,
    declare_error_shape,
    error_responses,
    every,
    validation_error_handler,
)
from policy.schemas import DecideRequest, ExpiredAccepted, FeedbackAccepted, PolicyInfo, SpecAccepted
from policy.service import DuplicateDecision, FeedbackConflict, PolicyService, UnknownDecision, UnknownPolicy
from policy.settings import PolicySettings

OPEN_PATHS = ("/healthz", "/readyz", "/metrics")
RAW_IMAGE_TYPES = ("application/octet-stream", "image/png", "image/jpeg")
DECIDE_BODY = {
    "requestBody": {
        "content": {
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in RAW_IMAGE_TYPES},
            "application/json": {"schema": DecideRequest.model_json_schema()},
        },
        "required": True,
    }
}


def _service(request: Request) -> PolicyService:
    return request.app.state.service


def create_app(settings: PolicySettings | None = None) -> FastAPI:
    settings = settings or PolicySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

    app = FastAPI(title="fmprog policy", description="Per-program backend choice, learned online.", lifespan=lifespan)
    app.add_middleware(JsonGuard)  # inside BodyLimit: it reads no more than the limit
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    if settings.api_key is not None:
        app.add_middleware(BearerAuth, key=settings.api_key.get_secret_value(), open_paths=OPEN_PATHS)
    else:
        app.add_middleware(LoopbackOnly, setting="FMPROG_POLICY_API_KEY")
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    declare_error_shape(app)

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

    @app.post("/policies/check", response_model=SpecAccepted, responses=error_responses(400, 401, 413, 422))
    async def check_policy(request: Request, spec: PolicySpec) -> SpecAccepted:
        """Whether a policy can be built from this spec; nothing is stored (422 names the problem)."""
        return _service(request).check(spec)

    @app.put("/policies/{program_id}", response_model=PolicyInfo, responses=error_responses(400, 401, 413, 422))
    async def put_policy(request: Request, program_id: str, spec: PolicySpec) -> PolicyInfo:
        return await run_in_threadpool(_service(request).put, program_id, spec)

    @app.get("/policies", response_model=list[PolicyInfo], responses=error_responses(401))
    async def list_policies(request: Request) -> list[PolicyInfo]:
        service = _service(request)
        return [service.info(p) for p in service.programs()]

    @app.get("/policies/{program_id}", response_model=PolicyInfo, responses=error_responses(401, 404))
    async def get_policy(request: Request, program_id: str) -> PolicyInfo:
        return _service(request).info(program_id)

    @app.delete("/policies/{program_id}", status_code=204, responses=error_responses(401, 404))
    async def delete_policy(request: Request, program_id: str) -> Response:
        await run_in_threadpool(_service(request).delete, program_id)
        return Response(status_code=204)

    @app.post(
        "/policies/{program_id}/decisions",
        response_model=PolicyDecision,
        responses=error_responses(401, 404, 409, 413, 422),
        openapi_extra=DECIDE_BODY,
    )
    async def decide(request: Request, program_id: str) -> PolicyDecision:
        """A backend per call site for one frame: the PNG or JPEG bytes as the body with
        ``?decision_id=``, or JSON ``{decision_id, image: base64}``."""
        decision_id, image = await _read_decide_request(request)
        return await run_in_threadpool(_decide, _service(request), program_id, decision_id, image)

    @app.post(
        "/policies/{program_id}/feedback",
        response_model=FeedbackAccepted,
        responses=error_responses(400, 401, 404, 409, 413, 422),
    )
    async def feedback(request: Request, program_id: str, body: Feedback) -> FeedbackAccepted:
        repeat = await run_in_threadpool(_service(request).feedback, program_id, body)
        return FeedbackAccepted(decision_id=body.decision_id or "", repeat=repeat)

    @app.post(
        "/policies/{program_id}/feedback/batch",
        response_model=FeedbackListReply,
        responses=error_responses(400, 401, 404, 413, 422),
    )
    async def feedback_batch(request: Request, program_id: str, body: FeedbackList) -> FeedbackListReply:
        """Several feedback of the program in one request, each learned on its own and in order (a
        repeat is learned once); each answered with its outcome, a refused one with why."""
        return await run_in_threadpool(_service(request).feedback_list, program_id, body)

    @app.post(
        "/policies/{program_id}/expired",
        response_model=ExpiredAccepted,
        responses=error_responses(400, 401, 404, 413, 422),
    )
    async def expired(request: Request, program_id: str, body: ExpiredDecisions) -> ExpiredAccepted:
        """Forget decisions whose label window closed at the router: nothing is learned from them."""
        dropped = await run_in_threadpool(_service(request).forget, program_id, body)
        return ExpiredAccepted(dropped=dropped)

    @app.post(
        "/policies/{program_id}/reuse",
        response_model=ReuseReply,
        responses=error_responses(400, 401, 404, 413, 422),
    )
    async def reuse(request: Request, program_id: str, body: ReuseRequest) -> ReuseReply:
        """Whether a camera's frame reuses the camera's last answer, from how it differs from the
        frame that ran; the outcome of the camera's last run, when the body brings it, is learned first."""
        return await run_in_threadpool(_service(request).reuse, program_id, body)

    @app.post(
        "/policies/{program_id}/reuse/outcomes",
        status_code=204,
        responses=error_responses(400, 401, 404, 413, 422),
    )
    async def reuse_outcome(request: Request, program_id: str, body: ReuseOutcome) -> Response:
        """An outcome for a camera's reuse gate on its own: a label said whether a reused answer was right."""
        await run_in_threadpool(_service(request).reuse_outcome, program_id, body)
        return Response(status_code=204)

    add_operations_routes(app, lambda service: {"policies": len(service.programs())})
    return app


def _decide(service: PolicyService, program_id: str, decision_id: str, image: bytes) -> PolicyDecision:
    """Decode the frame (once, off the event loop) and decide on it."""
    try:
        frame = decode_image(image)
    except ImageError as exc:
        raise ValueError(f"image: {exc}") from None
    return service.decide(program_id, decision_id, frame)


async def _read_decide_request(request: Request) -> tuple[str, bytes]:
    """The decision id and the frame's bytes, from a raw body (``?decision_id=``) or JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in RAW_IMAGE_TYPES:
        decision_id = request.query_params.get("decision_id", "")
        if not 1 <= len(decision_id) <= 64:
            raise ValueError("query parameter decision_id is required (1 to 64 characters) with a raw image body")
        return decision_id, await request.body()
    try:
        body = DecideRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    try:
        return body.decision_id, base64_bytes(body.image)
    except ImageError as exc:
        raise ValueError(f"image: {exc}") from None
