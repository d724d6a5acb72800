"""Clients of backend deployments that the program runtime can call like local models.

``HttpBackend`` goes through the Serve proxy (what the router uses across machines);
``HandleBackend`` uses a DeploymentHandle (inside the Ray cluster). Both expose exactly the
method of the backend's function (``detect``, ``vqa``, ``llm`` or ``ocr``, as the table of neural
functions describes it), so they drop into a ``BackendRegistry``, and both raise
``BackendCallError`` with the server's reason on failure.
"""

from __future__ import annotations

from typing import Any

import httpx

from fmprog.backends.base import FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.functions import FUNCTIONS, Served
from fmprog.images import encode_base64_png


class BackendCallError(RuntimeError):
    """A backend call that failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class HttpBackend:
    """Calls one backend's routes under ``{base_url}/{backend}`` with a blocking httpx client."""

    def __init__(
        self, spec: BackendSpec, base_url: str, *, timeout_s: float = 60.0, client: httpx.Client | None = None
    ):
        self.spec = spec
        self.url = f"{base_url.rstrip('/')}/{spec.name}"
        self._client = client or httpx.Client(timeout=timeout_s)

    def reply(self, function: Function, payload: dict[str, Any]) -> Served:
        """POST one call and return the full typed reply (with batch size and compute time)."""
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

        return FunctionModel(record.name, call, f"{self.spec.name} over HTTP")

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
