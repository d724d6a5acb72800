"""The router's HTTP API (FastAPI): the routes of ``router.routes`` over ``RouterService``.

uvicorn --factory router.app:create_app     # settings from FMPROG_ROUTER_* variables
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import anyio
from fastapi import FastAPI, Request
from starlette.middleware import Middleware

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import BackendCatalog, ConfigError
from fmprog.web import OPEN_PATHS, add_error_shape, add_security, api_key_setting, every
from router.admission import Admission
from router.auth import KeyRing, TenantAuth
from router.outbox import Outbox
from router.policy_client import HttpPolicyClient, PolicyPort
from router.routes import answers, feedback, operations, programs, streams
from router.routes.common import ERROR_STATUSES
from router.service import RouterService
from router.settings import RouterSettings
from router.store import Store
from router.streams import StreamManager
from router.synthesis import ChatModel, EngineChatModel, ProgramSynthesizer, synthesis_model
from router.transport import connect

logger = logging.getLogger(__name__)


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
    lifespan = functools.partial(
        _serving, settings=settings, catalog=catalog, backends=backends, policy=policy, synthesis=synthesis
    )
    description = "Register programs, answer frames, take feedback."
    app = FastAPI(title="fmprog router", description=description, lifespan=lifespan)
    tenants = Middleware(
        TenantAuth, ring=lambda: app.state.keys, open_paths=OPEN_PATHS, setting=api_key_setting(settings)
    )
    add_security(app, settings, auth=tenants)
    add_error_shape(app, ERROR_STATUSES, on_error=_count_error)
    for routes in (programs, answers, streams, feedback, operations):
        app.include_router(routes.router)
    return app


def _count_error(request: Request, status: int) -> None:
    """Count an error reply in the metrics, by the path's first segment and the status."""
    request.app.state.service.metrics.errors.labels(request.url.path.split("/")[1] or "/", str(status)).inc()


@contextlib.asynccontextmanager
async def _serving(
    app: FastAPI,
    *,
    settings: RouterSettings,
    catalog: BackendCatalog | None,
    backends: BackendRegistry | None,
    policy: PolicyPort | None,
    synthesis: ChatModel | None,
) -> AsyncIterator[None]:
    """The app's lifespan: build the service and the stream manager (on ``app.state``), run the
    background loops while the app serves, and close everything after."""
    database_file = settings.database_file()
    if database_file is not None:
        database_file.parent.mkdir(parents=True, exist_ok=True)
    the_catalog = catalog or settings.load_catalog()  # the configuration, restricted to settings.backends
    transport = None if backends is not None else await anyio.to_thread.run_sync(connect, the_catalog, settings)
    the_backends = backends if transport is None else transport.backends
    the_policy = policy
    if the_policy is None and settings.policy_url:
        key = settings.policy_api_key.get_secret_value() if settings.policy_api_key else None
        the_policy = HttpPolicyClient(
            settings.policy_url,
            timeout_s=settings.policy_timeout_s,
            register_timeout_s=settings.policy_register_timeout_s,
            api_key=key,
        )
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


def _logged(work: Callable[[], object]) -> Callable[[], None]:
    """``work`` for a background loop: a failure (the database unreachable a while) is logged and
    the loop tries again next round instead of dying."""

    def run() -> None:
        try:
            work()
        except Exception:
            logger.exception("background work failed; retried next round")

    return run


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
