"""Clients of backend deployments that the program runtime can call like local models.

``HttpBackend`` goes through the Serve proxy (what the router uses across machines);
``HandleBackend`` uses a DeploymentHandle (inside the Ray cluster). Both expose exactly the
method of the backend's function (``detect``, ``vqa``, ``llm`` or ``ocr``, as the table of neural
functions describes it), so they drop into a ``BackendRegistry``, and both raise
``BackendCallError`` with the server's reason on failure.

``HttpBackend`` has a circuit breaker (pybreaker), shared by every thread that calls the backend
through it: after ``breaker_failures`` calls in a row that the backend did not answer (no
connection, a timeout, a 5xx; a 4xx is an answer) it opens, and for ``breaker_reset_s`` calls fail
at once with a ``BackendCallError`` saying so, without a request; then the next call is tried
(half-open) and closes it when it is answered, or opens it again.
"""

from __future__ import annotations

from typing import Any

import httpx
from pybreaker import STATE_OPEN, CircuitBreaker, CircuitBreakerError

from fmprog.backends.base import FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.functions import FUNCTIONS, Served
from fmprog.images import encode_base64_png


class BackendCallError(RuntimeError):
    """A backend call that failed; ``status`` is the HTTP status when there was one.

    ``retryable`` says whether calling the same backend again may help: not for a refusal (a 4xx
    other than 408 and 429: the same request gets the same answer) nor for an open circuit."""

    def __init__(self, message: str, status: int | None = None, *, retryable: bool | None = None):
        super().__init__(message)
        self.status = status
        if retryable is None:
            retryable = status is None or status >= 500 or status in (408, 429)
        self.retryable = retryable


def _answered(exc: BaseException) -> bool:
    """Failures that are answers (the backend is up): they do not count towards opening its circuit."""
    return isinstance(exc, BackendCallError) and not exc.retryable


class HttpBackend:
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
        if breaker_failures < 1 or breaker_reset_s <= 0:
            raise ValueError("breaker_failures must be >= 1 and breaker_reset_s > 0")
        self.spec = spec
        self.url = f"{base_url.rstrip('/')}/{spec.name}"
        self._client = client or httpx.Client(timeout=timeout_s)
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

    def reply(self, function: Function, payload: dict[str, Any]) -> Served:
        """POST one call and return the full typed reply (with batch size and compute time);
        BackendCallError at once, without a request, while the backend's circuit is open."""
        try:
            # ``calling()`` holds the breaker's lock only to check and update its state, not during
            # the request (``CircuitBreaker.call`` would hold it and serialise concurrent calls).
            with self.breaker.calling():
                return self._post(function, payload)
        except CircuitBreakerError:
            raise BackendCallError(
                f"backend {self.spec.name!r}: circuit open after {self.breaker.fail_max} failed calls in a row "
                f"(skipped for {self.breaker.reset_timeout:g} s, then tried again)",
                retryable=False,
            ) from None

    def _post(self, function: Function, payload: dict[str, Any]) -> Served:
        try:
            response = self._client.post(f"{self.url}/{function.value}", json=payload)
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


class HandleBackend:
    """Calls one backend through its Ray Serve DeploymentHandle (blocking; not from an event loop)."""

    def __init__(self, spec: BackendSpec, handle: Any, *, timeout_s: float = 60.0):
        self.spec = spec
        self.handle = handle
        self.timeout_s = timeout_s

    def reply(self, function: Function, *args: Any) -> Served:
        method = getattr(self.handle, function.value)
        try:
            return method.remote(*args).result(timeout_s=self.timeout_s)
        except Exception as exc:  # Ray wraps replica errors in its own types
            raise BackendCallError(f"backend {self.spec.name!r} failed through its handle: {exc}") from exc

    def model(self) -> FunctionModel:
        """The runtime-facing model object: one method, named after the backend's function."""
        record = FUNCTIONS[self.spec.function]

        def call(*arguments: Any) -> Any:
            return record.from_reply(self.reply(record.name, *arguments))

        return FunctionModel(record.name, call, f"{self.spec.name} through a handle")
