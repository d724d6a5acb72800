"""The router's HTTP API (FastAPI): thin routes over ``RouterService``.

uvicorn --factory router.app:create_app     # settings from FMPROG_ROUTER_* variables
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Annotated

import anyio
from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import BackendCatalog, ConfigError
from fmprog.images import ImageError, base64_bytes
from fmprog.web import (
    BodyLimit,
    JsonGuard,
    add_operations_routes,
    declare_error_shape,
    error_responses,
    every,
    validation_error_handler,
)
from router.admission import Admission
from router.auth import KeyRing, TenantAuth
from router.errors import (
    BudgetExhausted,
    Conflict,
    Expired,
    FrameRejected,
    NotFound,
    QuotaExceeded,
    RouterError,
    Unavailable,
    UnsupportedMedia,
)
from router.outbox import Outbox
from router.policy_client import HttpPolicyClient, PolicyPort
from router.policy_view import DEFAULT_WINDOW, MAX_WINDOW, PolicyView, program_policy_view
from router.schemas import (
    MAX_FEEDBACK_BATCH,
    AnswerBatch,
    AnswerItem,
    AnswerResult,
    Camera,
    DeadLetter,
    EvaluationReport,
    EvaluationRequest,
    FeedbackBatch,
    FeedbackIn,
    FeedbackResult,
    ProgramCreate,
    ProgramPublic,
    StreamCreate,
    StreamDeadLetter,
    StreamPublic,
)
from router.service import RouterService
from router.settings import RouterSettings
from router.store import Store
from router.stream_events import event_stream
from router.streams import StreamManager
from router.synthesis import ChatModel, EngineChatModel, ProgramSynthesizer, synthesis_model
from router.tenants import Caller
from router.transport import connect

logger = logging.getLogger(__name__)
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")
MAX_OFFSET = 1_000_000_000
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many items.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many items first.")]
_ONE_LABEL = TypeAdapter(FeedbackIn)
_CAMERA = TypeAdapter(Camera)
MAX_BATCH_FRAMES = 64
_LABELS = TypeAdapter(Annotated[list[FeedbackIn], Field(min_length=1, max_length=MAX_FEEDBACK_BATCH)])
Window = Annotated[int, Query(ge=1, le=MAX_WINDOW, description="Read the program's last this many decisions.")]


class AnswerRequest(BaseModel):
    """A frame to answer: base64 PNG or JPEG (a data URL is accepted), with an optional frame id."""

    model_config = ConfigDict(extra="forbid")

    program_id: str = Field(min_length=1, max_length=64)
    image: str = Field(min_length=1)
    frame_id: str | None = Field(default=None, max_length=200)
    camera: Camera | None = Field(
        default=None,
        description="The camera the frame comes from: its frames go through the reuse gate (a frame that barely "
        "differs from the camera's last frame that ran the program gets that answer again, at cost 0).",
    )


class FrameIn(BaseModel):
    """One frame to answer, however it came: its bytes and where they go."""

    model_config = ConfigDict(frozen=True)

    program_id: str
    image: bytes
    frame_id: str | None = None
    camera: str | None = None


def _status(exc: RouterError) -> int:
    if isinstance(exc, UnsupportedMedia):
        return 415
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, Expired):
        return 410
    if isinstance(exc, BudgetExhausted | QuotaExceeded):
        return 429
    if isinstance(exc, Unavailable):
        return 503
    return 422


def _service(request: Request) -> RouterService:
    return request.app.state.service


def _caller(request: Request) -> Caller:
    """Who sent the request (``TenantAuth`` put it there)."""
    return request.state.caller


def _synthesizer(
    settings: RouterSettings, catalog: BackendCatalog, backends: BackendRegistry, store: Store, model: ChatModel | None
) -> tuple[ProgramSynthesizer | None, str, EngineChatModel | None]:
    """The program synthesizer (None when off, with the reason), and the model it owns (to close).

    A synthesizer configured on purpose that cannot work is a ConfigError; the default one
    (``synthesis_backend`` left at ``llm-large``) that the backend configuration cannot serve, e.g.
    a vLLM backend in a GPU configuration, only turns synthesis off, with a warning."""
    owned = None
    if model is None:
        try:
            spec = settings.synthesis_spec()
        except ConfigError as exc:
            if settings.synthesis_engine is not None or "synthesis_backend" in settings.model_fields_set:
                raise
            logger.warning("program synthesis is off: %s", exc)
            return None, str(exc), None
        if spec is None:
            return None, "synthesis_backend is empty and synthesis_engine is unset", None
        model = owned = synthesis_model(spec)
    synthesizer = ProgramSynthesizer(
        model,
        catalog,
        backends,
        store=store,
        attempts=settings.synthesis_attempts,
        max_tokens=settings.synthesis_max_tokens,
        dry_run_frames=settings.synthesis_dry_run_frames,
        limits=settings.execution_limits(),
        retries=settings.backend_retries,
    )
    return synthesizer, "", owned


def create_app(
    settings: RouterSettings | None = None,
    *,
    catalog: BackendCatalog | None = None,
    backends: BackendRegistry | None = None,
    policy: PolicyPort | None = None,
    synthesis: ChatModel | None = None,
) -> FastAPI:
    """The router app. By default backends are Ray Serve deployments behind ``serve_url``, the
    policy is the service at ``policy_url`` and the synthesizer's model is built from the settings
    (loaded on first use, or at start-up with ``synthesis_preload``); tests pass in-process
    ``backends``, ``policy`` and ``synthesis`` model."""
    settings = settings or RouterSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database_file = settings.database_file()
        if database_file is not None:
            database_file.parent.mkdir(parents=True, exist_ok=True)
        the_catalog = catalog or settings.load_catalog()  # the configuration, restricted to settings.backends
        transport = None if backends is not None else await anyio.to_thread.run_sync(connect, the_catalog, settings)
        the_backends = backends if transport is None else transport.backends
        the_policy = policy
        if the_policy is None and settings.policy_url:
            key = settings.policy_api_key.get_secret_value() if settings.policy_api_key else None
            the_policy = HttpPolicyClient(settings.policy_url, timeout_s=settings.policy_timeout_s, api_key=key)
        store = await anyio.to_thread.run_sync(
            functools.partial(Store, settings.database, pool_size=settings.database_pool_size)
        )
        outbox = Outbox(store)
        synthesizer, synthesis_off, owned_model = _synthesizer(settings, the_catalog, the_backends, store, synthesis)
        if owned_model is not None and settings.synthesis_preload:
            await anyio.to_thread.run_sync(owned_model.load)
        service = RouterService(
            store,
            the_catalog,
            the_backends,
            policy=the_policy,
            outbox=outbox,
            rewards=settings.rewards,
            fallback=settings.fallback,
            retries=settings.backend_retries,
            retry_backoff_s=settings.backend_retry_backoff_s,
            decide_threads=settings.answer_threads,
            synthesizer=synthesizer,
            synthesis_off=synthesis_off,
            breaker_failures=settings.policy_breaker_failures,
            breaker_reset_s=settings.policy_breaker_reset_s,
            breaker_probe_s=settings.policy_probe_s,
            program_workers=settings.program_workers,
            program_worker_memory_mb=settings.program_worker_memory_mb,
            program_memory_share=settings.program_memory_share,
            limits=settings.execution_limits(),
            label_window_s=settings.label_window_s,
            expiry_reward=settings.expiry_reward,
            teacher_threads=settings.teacher_threads,
            teacher_queue=settings.teacher_queue,
            default_lambda=settings.lambda_for(the_catalog),
            reuse_params=settings.reuse.params(),
            outbox_retry_s=settings.outbox_retry_s,
        )
        streams = StreamManager(
            service,
            file_roots=settings.stream_file_roots,
            lease_s=settings.stream_lease_s,
            max_streams=settings.max_streams,
            backoff_s=settings.stream_backoff_s,
        )
        app.state.streams = streams
        service.metrics.restarts.inc(settings.restarts)
        app.state.answer_slots = anyio.CapacityLimiter(settings.answer_threads)
        # a frame holds a program worker for its whole run: no more run at once than there are workers
        running = min(settings.answer_threads, service.program_workers or settings.answer_threads)
        app.state.admission = Admission(
            running,
            settings.answer_queue,
            settings.tenant_quota,
            settings.tenant_quotas,
            stored_bytes=store.stored_bytes,
            reserve=int(running * settings.answer_reserve),
        )
        service.metrics.watch_admission(app.state.admission.snapshot)
        shared_key = settings.api_key.get_secret_value() if settings.api_key else None
        app.state.keys = KeyRing(store, shared_key, require_keys=settings.require_keys)
        app.state.service = service
        retention = timedelta(days=settings.retention_days)
        try:
            with (
                every(
                    settings.prune_interval_s,
                    _logged(lambda: (service.prune(retention), streams.prune(retention))),
                    name="retention",
                ),
                every(settings.expire_interval_s, _logged(service.expire), name="label-expiry"),
                every(settings.stream_tick_s, _logged(streams.tick), name="stream-leases"),
            ):
                yield
        finally:
            streams.close()
            service.close()
            if owned_model is not None:
                owned_model.close()
            if isinstance(the_policy, HttpPolicyClient) and the_policy is not policy:
                the_policy.close()
            outbox.close()
            store.close()
            if transport is not None:
                transport.close()

    description = "Register programs, answer frames, take feedback."
    app = FastAPI(title="fmprog router", description=description, lifespan=lifespan)
    app.add_middleware(JsonGuard)  # inside BodyLimit: it reads no more than the limit
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(TenantAuth, ring=lambda: app.state.keys, open_paths=OPEN_PATHS, setting="FMPROG_ROUTER_API_KEY")
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    declare_error_shape(app)

    @app.exception_handler(RouterError)
    async def _router_error(request: Request, exc: RouterError) -> JSONResponse:
        status = _status(exc)
        request.app.state.service.metrics.errors.labels(request.url.path.split("/")[1] or "/", str(status)).inc()
        wait = getattr(exc, "retry_after_s", None)
        headers = {"retry-after": str(max(1, math.ceil(wait)))} if wait is not None else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.post(
        "/programs", status_code=201, response_model=ProgramPublic, responses=error_responses(400, 401, 413, 422, 503)
    )
    async def register(request: Request, body: ProgramCreate) -> ProgramPublic:
        return await run_in_threadpool(_service(request).register, body, _caller(request))

    @app.get("/programs", response_model=list[ProgramPublic], responses=error_responses(401))
    async def list_programs(
        request: Request,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> list[ProgramPublic]:
        return await run_in_threadpool(
            functools.partial(_service(request).list_programs, _caller(request), limit=limit, offset=offset)
        )

    @app.get("/programs/{program_id}", response_model=ProgramPublic, responses=error_responses(401, 404))
    async def get_program(request: Request, program_id: str) -> ProgramPublic:
        return await run_in_threadpool(_service(request).program, program_id, _caller(request))

    @app.get("/programs/{program_id}/policy", response_model=PolicyView, responses=error_responses(401, 404, 422))
    async def program_policy(request: Request, program_id: str, last: Window = DEFAULT_WINDOW) -> PolicyView:
        """Per call site, the share of each backend in the policy's last decisions, by context bucket."""
        service = _service(request)
        await run_in_threadpool(service.owned, program_id, _caller(request))  # NotFound: not the caller's
        return await run_in_threadpool(program_policy_view, service.store, program_id, last)

    @app.post(
        "/programs/{program_id}/evaluate",
        response_model=EvaluationReport,
        responses=error_responses(400, 401, 404, 413, 422),
    )
    async def evaluate_program(request: Request, program_id: str, body: EvaluationRequest) -> EvaluationReport:
        """What other policies would have cost and scored on the program's labelled decisions,
        estimated from the log (IPS, SNIPS, doubly robust; ``fmprog.evaluation``)."""
        return await run_in_threadpool(_service(request).evaluate, program_id, body, _caller(request))

    @app.delete("/programs/{program_id}", status_code=204, responses=error_responses(401, 404))
    async def delete_program(request: Request, program_id: str) -> Response:
        await run_in_threadpool(_service(request).delete, program_id, _caller(request))
        await run_in_threadpool(_streams(request).stop_program, program_id)
        return Response(status_code=204)

    @app.post(
        "/answer",
        response_model=AnswerResult | AnswerBatch,
        responses=error_responses(400, 401, 404, 413, 415, 422, 429),
        openapi_extra={
            "parameters": [
                {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
                for name, text in (
                    ("program_id", "With an image body: the program (required then)."),
                    ("frame_id", "With an image body: the frame's id."),
                    ("camera", "With an image body or a form: the camera (its frames go through the reuse gate)."),
                )
            ],
            "requestBody": {
                "content": {
                    "application/json": {"schema": AnswerRequest.model_json_schema()},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["program_id", "image"],
                            "properties": {
                                "program_id": {"type": "string"},
                                "camera": {"type": "string"},
                                "frame_id": {"type": "array", "items": {"type": "string"}},
                                "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            },
                        }
                    },
                },
                "required": True,
            },
        },
    )
    async def answer(request: Request) -> AnswerResult | AnswerBatch:
        """Answer a frame: base64 in JSON, the image itself as the body (``image/jpeg`` or
        ``image/png``, the program in the query), or uploaded as a form; a form with several
        ``image`` files is a batch, answered in order (one frame's failure is its own)."""
        frames = await _read_answer_request(request)
        service = _service(request)
        if len(frames) == 1:
            return await _answer_one(request, service, frames[0])
        items = []
        for frame in frames:
            try:
                result = await _answer_one(request, service, frame)
            except RouterError as exc:
                items.append(AnswerItem(frame_id=frame.frame_id, status=_status(exc), detail=str(exc)))
            else:
                items.append(AnswerItem(frame_id=frame.frame_id, result=result))
        return AnswerBatch(results=items)

    @app.post(
        "/programs/{program_id}/streams",
        status_code=201,
        response_model=StreamPublic,
        responses=error_responses(400, 401, 404, 413, 422),
    )
    async def start_stream(request: Request, program_id: str, body: StreamCreate) -> StreamPublic:
        """Start answering a camera or a video: frames pulled from ``source`` and answered ``fps`` a
        second, the answers kept as the stream's events (``GET /streams/{id}/events``)."""
        caller = _caller(request)
        await run_in_threadpool(_service(request).owned, program_id, caller)  # NotFound: not the caller's
        quota = request.app.state.admission.quota(caller.tenant).max_streams
        return await run_in_threadpool(
            functools.partial(_streams(request).start, program_id, body, tenant=caller.tenant, max_streams=quota)
        )

    @app.get("/streams", response_model=list[StreamPublic], responses=error_responses(401, 422))
    async def list_streams(
        request: Request, program_id: str | None = None, limit: Limit = 100, offset: Offset = 0
    ) -> list[StreamPublic]:
        caller = _caller(request)
        tenant = None if caller.admin else caller.tenant
        return await run_in_threadpool(
            functools.partial(_streams(request).events.list, program_id, tenant=tenant, limit=limit, offset=offset)
        )

    @app.get("/streams/{stream_id}", response_model=StreamPublic, responses=error_responses(401, 404))
    async def get_stream(request: Request, stream_id: str) -> StreamPublic:
        """A stream's state, owner and counters (received, answered, reused, dropped, lag...)."""
        return await _own_stream(request, stream_id)

    @app.delete("/streams/{stream_id}", status_code=204, responses=error_responses(401, 404))
    async def stop_stream(request: Request, stream_id: str) -> Response:
        await _own_stream(request, stream_id)
        await run_in_threadpool(_streams(request).stop, stream_id)
        return Response(status_code=204)

    @app.get(
        "/streams/{stream_id}/dead-letters",
        response_model=list[StreamDeadLetter],
        responses=error_responses(401, 404, 422),
    )
    async def stream_dead_letters(
        request: Request, stream_id: str, limit: Limit = 100, offset: Offset = 0
    ) -> list[StreamDeadLetter]:
        """The stream's events its webhook refused or never acknowledged after its retries, oldest first."""
        await _own_stream(request, stream_id)
        return await run_in_threadpool(
            functools.partial(_streams(request).events.dead_letters, stream_id, limit=limit, offset=offset)
        )

    @app.get(
        "/streams/{stream_id}/events",
        responses={200: {"content": {"text/event-stream": {}}}, **error_responses(401, 404, 422)},
        response_class=StreamingResponse,
    )
    async def stream_events(
        request: Request,
        stream_id: str,
        after: Annotated[int | None, Query(ge=0, description="Start after this event (as Last-Event-ID).")] = None,
    ) -> StreamingResponse:
        """The stream's answers as Server-Sent Events, one ``data:`` line of JSON each (``id:`` its
        number), from the first or after ``Last-Event-ID`` (or ``after``): a client that
        reconnects loses none. It ends when the stream has stopped and every event was sent."""
        streams = _streams(request)
        await _own_stream(request, stream_id)
        last = _last_event_id(request.headers.get("last-event-id"), after)
        return StreamingResponse(
            event_stream(streams.events, stream_id, last, request.is_disconnected),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @app.post(
        "/feedback",
        response_model=FeedbackResult | FeedbackBatch,
        responses=error_responses(400, 401, 404, 409, 410, 413, 422),
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                FeedbackIn.model_json_schema(),
                                {
                                    "type": "array",
                                    "items": FeedbackIn.model_json_schema(),
                                    "minItems": 1,
                                    "maxItems": MAX_FEEDBACK_BATCH,
                                },
                            ]
                        }
                    }
                },
                "required": True,
            }
        },
    )
    async def feedback(request: Request) -> FeedbackResult | FeedbackBatch:
        """A label for an answered frame; or a list of labels (at most 1000), each answered on its
        own in ``results``: accepted, repeat, conflict, unknown, expired or rejected."""
        body = await _read_feedback(request)
        if isinstance(body, list):
            return await run_in_threadpool(_service(request).feedback_batch, body, _caller(request))
        return await run_in_threadpool(_service(request).feedback, body, _caller(request))

    @app.get("/dead-letters", response_model=list[DeadLetter], responses=error_responses(401, 422))
    async def dead_letters(request: Request, limit: Limit = 100, offset: Offset = 0) -> list[DeadLetter]:
        """Messages for the policy that it refused (feedback, registrations, deletes), oldest first:
        those of the caller's programs (every tenant's for an admin key)."""
        return await run_in_threadpool(
            functools.partial(_service(request).dead_letters, _caller(request), limit=limit, offset=offset)
        )

    add_operations_routes(app, _readiness)
    return app


def _logged(work: Callable[[], object]) -> Callable[[], None]:
    """``work`` for a background loop: a failure (the database unreachable a while) is logged and
    the loop tries again next round instead of dying."""

    def run() -> None:
        try:
            work()
        except Exception:
            logger.exception("background work failed; retried next round")

    return run


def _readiness(service: RouterService) -> dict[str, int]:
    return {"policy_outbox": service.outbox.pending(), "policy_dead_letters": service.store.count_dead_letters()}


async def _read_feedback(request: Request) -> FeedbackIn | list[FeedbackIn]:
    """One label (a JSON object) or a list of them (a JSON array), checked as such."""
    body = await request.body()
    try:
        data = json.loads(body)
    except ValueError:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "not JSON"}]) from None
    try:
        return (_LABELS if isinstance(data, list) else _ONE_LABEL).validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


IMAGE_TYPES = ("image/jpeg", "image/png")


async def _answer_one(request: Request, service: RouterService, frame: FrameIn) -> AnswerResult:
    """Answer one frame once admission lets it run (QuotaExceeded or Overloaded at once if not)."""
    caller = _caller(request)
    answer = functools.partial(
        service.answer, frame.program_id, frame.image, frame_id=frame.frame_id, camera=frame.camera, caller=caller
    )
    admission: Admission = request.app.state.admission
    try:
        async with admission.slot(caller.tenant):
            return await anyio.to_thread.run_sync(answer, limiter=request.app.state.answer_slots)
    except (QuotaExceeded, Unavailable) as exc:
        service.metrics.refused.labels(caller.tenant, type(exc).__name__).inc()
        raise


def _query_camera(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return _CAMERA.validate_python(value)
    except ValidationError:
        raise FrameRejected("camera: letters, digits and . _ : - only, at most 100") from None


async def _read_answer_request(request: Request) -> list[FrameIn]:
    """The frames to answer, from JSON (one), an image body (one) or a form (one or more)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query = request.query_params
    if content_type in IMAGE_TYPES:
        program_id = query.get("program_id")
        if not program_id:
            raise FrameRejected("query parameter program_id is required with an image body")
        frame_id = query.get("frame_id")
        if frame_id is not None and len(frame_id) > 200:
            raise FrameRejected("frame_id: at most 200 characters")
        image = await request.body()
        if not image:
            raise FrameRejected("the body is empty: send the image's bytes")
        camera = _query_camera(query.get("camera"))
        return [FrameIn(program_id=program_id, image=image, frame_id=frame_id, camera=camera)]
    if content_type == "multipart/form-data":
        form = await request.form()
        program_id = form.get("program_id")
        if not isinstance(program_id, str) or not program_id:
            raise FrameRejected("form field program_id is required")
        uploads = form.getlist("image")
        if not uploads or any(isinstance(upload, str) for upload in uploads):
            raise FrameRejected("form field image must be an uploaded file (one or more)")
        if len(uploads) > MAX_BATCH_FRAMES:
            raise FrameRejected(f"at most {MAX_BATCH_FRAMES} frames in one form")
        frame_ids = [value for value in form.getlist("frame_id") if isinstance(value, str)]
        if frame_ids and len(frame_ids) != len(uploads):
            raise FrameRejected(f"{len(frame_ids)} frame_id fields for {len(uploads)} images: one per image, or none")
        camera = form.get("camera")
        camera = _query_camera(camera if isinstance(camera, str) else query.get("camera"))
        frames = []
        for k, upload in enumerate(uploads):
            frame_id = frame_ids[k] if frame_ids else None
            frames.append(FrameIn(program_id=program_id, image=await upload.read(), frame_id=frame_id, camera=camera))
        return frames
    if content_type not in ("", "application/json"):
        raise UnsupportedMedia(
            f"content type {content_type!r}: send application/json, image/jpeg, image/png or multipart/form-data"
        )
    try:
        body = AnswerRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    try:
        image = base64_bytes(body.image)
    except ImageError as exc:
        raise FrameRejected(f"image: {exc}") from None
    return [FrameIn(program_id=body.program_id, image=image, frame_id=body.frame_id, camera=body.camera)]


def _streams(request: Request) -> StreamManager:
    return request.app.state.streams


async def _own_stream(request: Request, stream_id: str) -> StreamPublic:
    """The stream, if the caller may see it (its tenant's, or an admin key); else NotFound."""
    stream = await run_in_threadpool(_streams(request).get, stream_id)
    if not _caller(request).sees(stream.tenant):
        raise NotFound(f"no stream with id {stream_id!r}")
    return stream


def _last_event_id(header: str | None, after: int | None) -> int:
    """Where an event stream resumes: after the ``Last-Event-ID`` a reconnecting client sends, or
    ``after``; from the start when neither."""
    if header is not None and header.strip():
        try:
            value = int(header.strip())
        except ValueError:
            raise FrameRejected(f"Last-Event-ID {header!r}: an event number is expected") from None
        if value < 0:
            raise FrameRejected("Last-Event-ID: an event number is at least 0")
        return value
    return after or 0
