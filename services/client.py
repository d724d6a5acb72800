"""Clients of backend deployments that the program runtime can call like local models.

``HttpBackend`` goes through the Serve proxy (or any server with the backend routes: the path for
backends outside Ray); ``HandleBackend`` uses a DeploymentHandle (a process in the Ray cluster:
no proxy hop, no image encoding, and the frame a run answers goes once into Ray's object store,
each call's crop sent as its place in it). Both expose exactly the method of the backend's
function (``detect``, ``vqa``, ``llm`` or ``ocr``, as the table of neural functions describes it),
so they drop into a ``BackendRegistry``, and both raise ``BackendCallError`` with the server's
reason on failure.

Both have a circuit breaker (pybreaker), shared by every thread that calls the backend through
the client: after ``breaker_failures`` calls in a row that the backend did not answer (no
connection, a timeout, a 5xx or an engine failure; a refusal is an answer) it opens, and for
``breaker_reset_s`` calls fail at once with a ``BackendCallError`` saying so, without a request;
then the next call is tried (half-open) and closes it when it is answered, or opens it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from pybreaker import STATE_OPEN, CircuitBreaker, CircuitBreakerError

from fmprog.backends.base import FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.deadline import STALL_S, call_timeout
from fmprog.backends.frames import shared_part
from fmprog.backends.functions import FUNCTIONS, Served
from fmprog.coalesce import Coalescer
from fmprog.images import encode_base64_png


class BackendCallError(RuntimeError):
    """A backend call that failed; ``status`` is the HTTP status when there was one.

    ``retryable`` says whether calling the same backend again may help: not for a refusal (a 4xx
    other than 408 and 429: the same request gets the same answer) nor for an open circuit."""

    def __init__(self, message: str, status: int | None = None, *, retryable: bool | None = None):
        super().__init__(message)
        self.status = status
        self.called = True  # False: the call was never sent (the run had no time left)
        if retryable is None:
            retryable = status is None or status >= 500 or status in (408, 429)
        self.retryable = retryable


def _no_time_left(backend: str) -> BackendCallError:
    """The call a run makes with no time left: not made (``called`` False), and not the backend's failure."""
    failure = BackendCallError(f"backend {backend!r} not called: the run had no time left", retryable=False)
    failure.called = False
    return failure


def _cut(backend: str, waited_s: float) -> BackendCallError:
    """A call cut short by its run's deadline: the backend's failure (counted towards its circuit,
    retryable) only when it had waited ``STALL_S`` or more without a reply."""
    return BackendCallError(
        f"backend {backend!r} did not answer within the {waited_s:.3g} s left of the run",
        retryable=waited_s >= STALL_S,
    )


def _answered(exc: BaseException) -> bool:
    """Failures that are answers (the backend is up): they do not count towards opening its circuit."""
    return isinstance(exc, BackendCallError) and not exc.retryable


class _Guarded:
    """What both clients share: one backend's spec and circuit breaker."""

    def __init__(self, spec: BackendSpec, *, breaker_failures: int, breaker_reset_s: float):
        if breaker_failures < 1 or breaker_reset_s <= 0:
            raise ValueError("breaker_failures must be >= 1 and breaker_reset_s > 0")
        self.spec = spec
        self.breaker = CircuitBreaker(
            fail_max=breaker_failures,
            reset_timeout=breaker_reset_s,
            exclude=[_answered],
            throw_new_error_on_trip=False,  # the call that trips it fails as itself
            name=spec.name,
        )

    def circuit_open(self) -> bool:
        """Whether calls are being refused without a request (the backend failed too often in a row)."""
        return self.breaker.current_state == STATE_OPEN

    def _guarded(self, call: Callable[[], Served]) -> Served:
        """``call()``, or BackendCallError at once, without a request, while the circuit is open."""
        try:
            # ``calling()`` holds the breaker's lock only to check and update its state, not during
            # the request (``CircuitBreaker.call`` would hold it and serialise concurrent calls).
            with self.breaker.calling():
                return call()
        except CircuitBreakerError:
            raise BackendCallError(
                f"backend {self.spec.name!r}: circuit open after {self.breaker.fail_max} failed calls in a row "
                f"(skipped for {self.breaker.reset_timeout:g} s, then tried again)",
                retryable=False,
            ) from None


class HttpBackend(_Guarded):
    """Calls one backend's routes under ``{base_url}/{backend}`` with a blocking httpx client."""

    def __init__(
        self,
        spec: BackendSpec,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        client: httpx.Client | None = None,
        breaker_failures: int = 5,
        breaker_reset_s: float = 30.0,
    ):
        super().__init__(spec, breaker_failures=breaker_failures, breaker_reset_s=breaker_reset_s)
        self.url = f"{base_url.rstrip('/')}/{spec.name}"
        self._client = client or httpx.Client(timeout=timeout_s)

    def reply(self, function: Function, payload: dict[str, Any]) -> Served:
        """POST one call and return the full typed reply (with batch size and compute time);
        BackendCallError at once, without a request, while the backend's circuit is open."""
        return self._guarded(lambda: self._post(function, payload))

    def _post(self, function: Function, payload: dict[str, Any]) -> Served:
        timeout_s, cut = call_timeout(self._client.timeout.read or math.inf)
        if timeout_s <= 0:
            raise _no_time_left(self.spec.name)
        bounded: dict[str, Any] = {"timeout": timeout_s} if cut else {}  # else the client's own timeout
        try:
            response = self._client.post(f"{self.url}/{function.value}", json=payload, **bounded)
        except httpx.TimeoutException as exc:
            if cut:
                raise _cut(self.spec.name, timeout_s) from exc
            raise BackendCallError(f"backend {self.spec.name!r} unreachable at {self.url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise BackendCallError(f"backend {self.spec.name!r} unreachable at {self.url}: {exc}") from exc
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise BackendCallError(
                f"backend {self.spec.name!r}: HTTP {response.status_code}: {detail}", response.status_code
            )
        return FUNCTIONS[function].reply.model_validate(response.json())

    def health(self) -> dict[str, Any]:
        response = self._client.get(f"{self.url}/healthz")
        return {"status": response.status_code, **response.json()}

    def model(self) -> FunctionModel:
        """The runtime-facing model object: one method, named after the backend's function."""
        record = FUNCTIONS[self.spec.function]

        def call(*arguments: Any) -> Any:
            image, text = record.inputs(arguments)
            payload: dict[str, Any] = {} if image is None else {"image": encode_base64_png(image)}
            if record.text is not None:
                payload[record.text] = text
            return record.from_reply(self.reply(record.name, payload))

        return FunctionModel(record.name, call, f"{self.spec.name} over HTTP", circuit_open=self.circuit_open)

    def close(self) -> None:
        self._client.close()


SHARE_FRAMES_FROM_BYTES = 100 * 1024
"""Frames at least this large go once per run into Ray's object store, each call sending the
reference and its crop's place; smaller ones travel inside each call (Ray inlines arguments under
100 KiB in the call itself, which costs less than a store round trip)."""


class HandleBackend(_Guarded):
    """Calls one backend through its Ray Serve DeploymentHandle (blocking; not from an event loop).

    Concurrent calls are coalesced (``Coalescer``): a Serve request costs a few milliseconds of CPU
    in the caller and the replica, more than these models' forward passes, so one request carries
    every call that waited for it (up to the backend's ``batching.max_batch_size``), answered by
    the engine as one batch; at most ``max_in_flight`` requests per backend are in flight (by
    default two per replica the backend may have). ``put`` stores a frame in Ray's object store
    (``ray.put``; a test may pass its own)."""

    def __init__(
        self,
        spec: BackendSpec,
        handle: Any,
        *,
        timeout_s: float = 60.0,
        breaker_failures: int = 5,
        breaker_reset_s: float = 30.0,
        max_in_flight: int | None = None,
        put: Callable[[np.ndarray], Any] | None = None,
    ):
        super().__init__(spec, breaker_failures=breaker_failures, breaker_reset_s=breaker_reset_s)
        self.handle = handle
        self.timeout_s = timeout_s
        self._put = put
        self.coalescer = Coalescer(
            self._send,
            max_batch=spec.batching.max_batch_size,
            max_in_flight=max_in_flight or 2 * spec.autoscaling_config.max_replicas,
        )

    def reply(self, function: Function, *args: Any) -> Served:
        """One call with its single call's arguments (numpy images, or parts of the shared frame);
        BackendCallError at once, without a request, while the backend's circuit is open."""
        if function != self.spec.function:
            raise BackendCallError(
                f"backend {self.spec.name!r} serves {self.spec.function.value}, not {function.value}", retryable=False
            )
        return self._guarded(lambda: self._coalesced(args))

    def _coalesced(self, args: tuple[Any, ...]) -> Served:
        timeout_s, cut = call_timeout(self.timeout_s)
        if timeout_s <= 0:
            raise _no_time_left(self.spec.name)
        try:
            return self.coalescer.call(args, timeout_s)
        except TimeoutError as exc:
            if cut:
                raise _cut(self.spec.name, timeout_s) from None
            raise BackendCallError(f"backend {self.spec.name!r}: {exc}") from None

    def _send(self, calls: list[tuple[Any, ...]]) -> list[Served | BaseException]:
        """One Serve request with ``calls``: each call's reply, or its BackendCallError."""
        response = self.handle.calls.remote(self.spec.function.value, calls)
        # Bounded by the run of the call that sends the request, but never under STALL_S: the
        # request carries other runs' calls too, and a cut after that long is the backend's (retried).
        timeout_s, cut = call_timeout(self.timeout_s)
        timeout_s = max(timeout_s, STALL_S) if cut else timeout_s
        try:
            outcomes = response.result(timeout_s=timeout_s)
        except TimeoutError:
            response.cancel()
            if cut:
                raise _cut(self.spec.name, timeout_s) from None
            raise BackendCallError(
                f"backend {self.spec.name!r} did not answer within {self.timeout_s:g} s through its handle"
            ) from None
        except Exception as exc:  # Ray wraps a replica's exception in its own types
            raise BackendCallError(f"backend {self.spec.name!r} failed through its handle: {_reason(exc)}") from exc
        return [self._outcome(outcome) for outcome in outcomes]

    def _outcome(self, outcome: Any) -> Served | BaseException:
        if isinstance(outcome, Served):
            return outcome
        refused = isinstance(outcome, ValueError | TypeError)  # the replica refused the call (a bad image)
        return BackendCallError(f"backend {self.spec.name!r}: {_reason(outcome)}", retryable=not refused)

    def _argument(self, value: Any) -> Any:
        """An image as a part of the shared frame where it is one (and the frame is worth sharing)."""
        if isinstance(value, np.ndarray):
            part = shared_part(value, "ray", self._share, min_bytes=SHARE_FRAMES_FROM_BYTES)
            if part is not None:
                return part
        return value

    def _share(self, frame: np.ndarray) -> Any:
        if self._put is None:
            import ray

            self._put = ray.put
        return self._put(frame)

    def health(self) -> dict[str, Any]:
        health = self.handle.health.remote().result(timeout_s=self.timeout_s)
        return {"status": 200 if health.healthy else 503, **health.model_dump(mode="json")}

    def model(self) -> FunctionModel:
        """The runtime-facing model object: one method, named after the backend's function."""
        record = FUNCTIONS[self.spec.function]

        def call(*arguments: Any) -> Any:
            return record.from_reply(self.reply(record.name, *(self._argument(a) for a in arguments)))

        return FunctionModel(record.name, call, f"{self.spec.name} through a handle", circuit_open=self.circuit_open)


def _reason(exc: BaseException) -> str:
    """The replica's own error where Ray wrapped one, else the exception: type and message."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"
