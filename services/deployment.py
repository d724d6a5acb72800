"""The Ray Serve deployment that serves one backend: an engine behind dynamic batching.

One class serves every backend; the configuration (a ``BackendSpec``) arrives as a constructor
argument. The deployment is its application's ingress, so it answers both:

- HTTP through the Serve proxy, under the application's route prefix (``/<backend>``): one
  ``POST /<function>`` route per neural function (``/detect``, ``/vqa``, ``/llm``, ``/ocr``: its
  own function's answers, another's is 404), ``GET /healthz``;
- DeploymentHandle calls: one method per function, named after it, taking the function's single
  call with numpy frames (``detect(image, noun)``, ``vqa(image, question)``, ``llm(prompt)``,
  ``ocr(image)``); ``calls(function, [arguments, ...])``, several calls in one request (what the
  router's handle client sends: the calls its threads made at once); and ``health()``. An image
  may be a ``FramePart``: a frame in Ray's object store and the crop's place in it.

The routes and handle methods are built from the table of neural functions
(``fmprog.backends.functions.FUNCTIONS``). The routes and the single-call methods enter the same
``@serve.batch`` queue, so they batch together; a ``calls`` request is its own batch (its caller
batched it), answered under the same engine lock.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the request models as classes
# on Serve's class-based ingress, or it takes them for query parameters.

import asyncio
import os
import resource
import threading
import time
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from ray import serve

from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.frames import FramePart
from fmprog.backends.functions import FUNCTIONS, NeuralFunction, Served
from fmprog.engines import Engine, EngineError, build_engine
from fmprog.images import ImageError, check_frame, decode_base64_image
from fmprog.web import error_responses, validation_error_handler
from services.schemas import BackendHealth

http = FastAPI(title="fmprog backend", description="One foundation-model backend behind Ray Serve.")


http.add_exception_handler(RequestValidationError, validation_error_handler)


ERRORS = error_responses(404, 422, 503)  # another function's route; malformed request; engine failure


class Call:
    """One queued call: a frame and its text (noun, question or prompt), ``None`` where the
    function takes none."""

    __slots__ = ("image", "text")

    def __init__(self, image: np.ndarray | None, text: str | None):
        self.image = image
        self.text = text


class BackendDeployment:
    """Serves one backend's engine; see the module docstring for its two interfaces."""

    def __init__(self, spec: dict[str, Any], **dependencies: Any):
        self.spec = BackendSpec.model_validate(spec)
        self.engine: Engine = build_engine(self.spec, dependencies)
        self.engine.load()
        self._batch.set_max_batch_size(self.spec.batching.max_batch_size)
        self._batch.set_batch_wait_timeout_s(self.spec.batching.batch_wait_timeout_s)
        self._lock = threading.Lock()
        self._batches = 0
        self._calls = 0

    # -- the batched core ----------------------------------------------------------------------

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _batch(self, calls: list[Call]) -> list[tuple[Any, int, float]]:
        return await asyncio.to_thread(self._run_batch, calls)

    def _run_batch(self, calls: list[Call]) -> list[tuple[Any, int, float]]:
        """Answer a batch; when it fails, answer its calls one by one so that only the call that
        fails gets the error (an engine error is returned in place of that call's result)."""
        start = time.perf_counter()
        with self._lock:  # engines are not required to be re-entrant
            try:
                results: list[Any] = self._engine_batch(calls)
            except EngineError as exc:
                results = [exc] if len(calls) == 1 else [self._engine_single(call) for call in calls]
            self._batches += 1
            self._calls += len(calls)
        elapsed = time.perf_counter() - start
        return [(result, len(calls), elapsed) for result in results]

    def _engine_batch(self, calls: list[Call]) -> list[Any]:
        record = FUNCTIONS[self.spec.function]
        results = self.engine.batch(*record.batch_columns([c.image for c in calls], [c.text for c in calls]))
        if len(results) != len(calls):
            raise EngineError(f"engine answered {len(results)} of {len(calls)} calls")
        return results

    def _engine_single(self, call: Call) -> Any:
        try:
            return self._engine_batch([call])[0]
        except EngineError as exc:
            return exc

    async def _serve(self, function: Function, image: np.ndarray | None, text: str | None) -> Served:
        if function != self.spec.function:
            raise EngineError(f"backend {self.spec.name!r} serves {self.spec.function.value}, not {function.value}")
        result, batch_size, compute_s = await self._batch(Call(image, text))
        if isinstance(result, EngineError):
            raise result
        served = {"backend": self.spec.name, "batch_size": batch_size, "compute_s": compute_s}
        return FUNCTIONS[function].to_reply(result, served)

    # -- DeploymentHandle interface (one method per function, added below) --------------------

    async def call(self, function: Function, *arguments: Any) -> Served:
        """One call of ``function`` with its single call's arguments: numpy frames, or parts of a
        frame in Ray's object store (``FramePart``: the reference and the crop's place)."""
        record = FUNCTIONS[Function(function)]
        image, text = record.inputs(arguments)
        image = _cut(image, await _resolve_frames([image]))
        return await self._serve(record.name, None if image is None else check_frame(image), text)

    async def calls(self, function: Function, arguments: list[tuple[Any, ...]]) -> list[Served | Exception]:
        """Several calls of ``function`` in one request (a client that batches them: one Serve
        request for many frames' calls), answered by the engine together; each call's reply, or in
        its place the exception that refused it (a bad image: ValueError) or that it failed with
        (EngineError), so that one call's failure is its own."""
        record = FUNCTIONS[Function(function)]
        if record.name != self.spec.function:
            error = EngineError(f"backend {self.spec.name!r} serves {self.spec.function.value}, not {record.method}")
            return [error for _ in arguments]
        frames = await _resolve_frames([a for args in arguments for a in args])
        accepted: list[Call] = []
        outcome: list[Served | Exception | None] = []
        for args in arguments:
            try:
                image, text = record.inputs(args)
                image = _cut(image, frames)
                accepted.append(Call(None if image is None else check_frame(image), text))
                outcome.append(None)
            except (TypeError, ValueError) as exc:
                outcome.append(exc)
        answered = iter(await asyncio.to_thread(self._run_batch, accepted) if accepted else [])
        served = {"backend": self.spec.name}
        for i, refused in enumerate(outcome):
            if refused is None:
                result, batch_size, compute_s = next(answered)
                outcome[i] = (
                    result
                    if isinstance(result, EngineError)
                    else record.to_reply(result, {**served, "batch_size": batch_size, "compute_s": compute_s})
                )
        return outcome  # type: ignore[return-value]

    def health(self) -> BackendHealth:
        detail, healthy = "", True
        try:
            self.engine.check_health()
        except EngineError as exc:
            detail, healthy = str(exc), False
        return BackendHealth(
            backend=self.spec.name,
            function=self.spec.function,
            cost=self.spec.cost,
            engine=self.spec.engine.kind if self.spec.engine else "",
            healthy=healthy,
            detail=detail,
            model=self.engine.describe(),
            batches=self._batches,
            calls=self._calls,
            replica_pid=os.getpid(),
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )

    def check_health(self) -> None:
        """Ray Serve's periodic replica health check: an unhealthy engine gets the replica replaced."""
        self.engine.check_health()

    # -- HTTP interface (thin: decode, call, map errors; one route per function, added below) ---

    @http.get("/healthz", response_model=BackendHealth, responses={503: {"model": BackendHealth}})
    async def http_health(self) -> Any:
        health = self.health()
        return health if health.healthy else JSONResponse(health.model_dump(mode="json"), status_code=503)

    async def _http(self, function: Function, request: BaseModel) -> Served:
        image_b64, text = FUNCTIONS[function].request_inputs(request)
        if function != self.spec.function:
            raise HTTPException(
                404, f"backend {self.spec.name!r} serves {self.spec.function.value}, not {function.value}"
            )
        image = None
        if image_b64 is not None:
            try:
                image = decode_base64_image(image_b64)
            except ImageError as exc:
                raise HTTPException(422, f"image: {exc}") from exc
        try:
            return await self._serve(function, image, text)
        except EngineError as exc:
            raise HTTPException(503, f"backend {self.spec.name!r} failed: {exc}") from exc


def _frame_key(frame: Any) -> Any:
    return frame.binary() if isinstance(frame, ray.ObjectRef) else id(frame)


async def _resolve_frames(arguments: list[Any]) -> dict[Any, Any]:
    """The frames of the ``FramePart`` among ``arguments`` by ``_frame_key`` of what each part
    holds, every object store reference fetched once, together (a read-only view of the shared
    memory where the frame is on this node)."""
    distinct = {_frame_key(part.frame): part.frame for part in arguments if isinstance(part, FramePart)}
    refs = {key: ref for key, ref in distinct.items() if isinstance(ref, ray.ObjectRef)}
    fetched = dict(zip(refs, await asyncio.gather(*refs.values()), strict=True)) if refs else {}
    return {key: fetched.get(key, value) for key, value in distinct.items()}


def _cut(image: Any, frames: dict[Any, Any]) -> Any:
    """``image``, or for a ``FramePart`` the crop it names of its resolved frame (ValueError for a
    frame that is not one, or a region outside it)."""
    if not isinstance(image, FramePart):
        return image
    return image.cut(check_frame(frames[_frame_key(image.frame)]))


def _handle_method(record: NeuralFunction) -> Any:
    """The DeploymentHandle method of one function: its single call, by the function's name."""

    async def method(self: BackendDeployment, *arguments: Any) -> Served:
        return await self.call(record.name, *arguments)

    method.__name__ = record.method
    method.__qualname__ = f"{BackendDeployment.__qualname__}.{record.method}"
    method.__doc__ = f"The {record.method} call ({record.request.__name__} without the wire encoding)."
    return method


def _http_route(record: NeuralFunction) -> Any:
    """The HTTP route of one function: the function's request body in, its reply out."""

    async def route(self: BackendDeployment, request: BaseModel) -> Served:
        return await self._http(record.name, request)

    # FastAPI reads the body's model from the annotation; Serve's class-based ingress finds the
    # class's routes by their endpoints' qualified names.
    route.__annotations__ = {"request": record.request, "return": record.reply}
    route.__name__ = f"http_{record.method}"
    route.__qualname__ = f"{BackendDeployment.__qualname__}.{route.__name__}"
    return route


for _record in FUNCTIONS.values():
    setattr(BackendDeployment, _record.method, _handle_method(_record))
    http.post(_record.route, response_model=_record.reply, responses=ERRORS)(_http_route(_record))

BackendDeployment = serve.deployment(serve.ingress(http)(BackendDeployment))
