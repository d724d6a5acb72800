"""Clients of backend deployments that the program runtime can call like local models.

``HttpBackend`` goes through the Serve proxy (what the router uses across machines);
``HandleBackend`` uses a DeploymentHandle (inside the Ray cluster). Both expose exactly the
method of the backend's function (``detect``, ``vqa`` or ``llm``), so they drop into a
``BackendRegistry``, and both raise ``BackendCallError`` with the server's reason on failure.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from fmprog.backends.base import Detection, FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.images import encode_base64_png
from services.schemas import DetectReply, TextReply


class BackendCallError(RuntimeError):
    """A backend call that failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _detections(reply: DetectReply) -> list[Detection]:
    return [Detection(box=d.box, score=d.score) for d in reply.detections]


class HttpBackend:
    """Calls one backend's routes under ``{base_url}/{backend}`` with a blocking httpx client."""

    def __init__(
        self, spec: BackendSpec, base_url: str, *, timeout_s: float = 60.0, client: httpx.Client | None = None
    ):
        self.spec = spec
        self.url = f"{base_url.rstrip('/')}/{spec.name}"
        self._client = client or httpx.Client(timeout=timeout_s)

    def reply(self, function: Function, payload: dict[str, Any]) -> DetectReply | TextReply:
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
        reply_type = DetectReply if function == Function.detect else TextReply
        return reply_type.model_validate(response.json())

    def health(self) -> dict[str, Any]:
        response = self._client.get(f"{self.url}/healthz")
        return {"status": response.status_code, **response.json()}

    def model(self) -> FunctionModel:
        """The runtime-facing model object: one method, named after the backend's function."""
        function = self.spec.function
        if function == Function.detect:

            def detect(image: np.ndarray, noun: str) -> list[Detection]:
                reply = self.reply(function, {"image": encode_base64_png(image), "noun": noun})
                return _detections(reply)  # type: ignore[arg-type]

            return FunctionModel(function, detect, f"{self.spec.name} over HTTP")
        if function == Function.vqa:

            def vqa(image: np.ndarray, question: str) -> str:
                return self.reply(function, {"image": encode_base64_png(image), "question": question}).text  # type: ignore[union-attr]

            return FunctionModel(function, vqa, f"{self.spec.name} over HTTP")

        def llm(prompt: str) -> str:
            return self.reply(function, {"prompt": prompt}).text  # type: ignore[union-attr]

        return FunctionModel(function, llm, f"{self.spec.name} over HTTP")

    def close(self) -> None:
        self._client.close()


class HandleBackend:
    """Calls one backend through its Ray Serve DeploymentHandle (blocking; not from an event loop)."""

    def __init__(self, spec: BackendSpec, handle: Any, *, timeout_s: float = 60.0):
        self.spec = spec
        self.handle = handle
        self.timeout_s = timeout_s

    def reply(self, function: Function, *args: Any) -> DetectReply | TextReply:
        method = getattr(self.handle, function.value)
        try:
            return method.remote(*args).result(timeout_s=self.timeout_s)
        except Exception as exc:  # Ray wraps replica errors in its own types
            raise BackendCallError(f"backend {self.spec.name!r} failed through its handle: {exc}") from exc

    def model(self) -> FunctionModel:
        function = self.spec.function
        if function == Function.detect:
            call = lambda image, noun: _detections(self.reply(function, image, noun))  # type: ignore[arg-type]  # noqa: E731
        elif function == Function.vqa:
            call = lambda image, question: self.reply(function, image, question).text  # type: ignore[union-attr]  # noqa: E731
        else:
            call = lambda prompt: self.reply(function, prompt).text  # type: ignore[union-attr]  # noqa: E731
        return FunctionModel(function, call, f"{self.spec.name} through a handle")
