"""A client of any OpenAI-compatible chat-completions server (``vllm serve``, Ray Serve LLM,
llama.cpp's server), for ``function: llm`` and ``function: vqa``.

``llm`` sends the prompt as text; ``vqa`` sends the image as an ``image_url`` content part holding
a base64 PNG data URL, then the question as a text part. A batch becomes concurrent requests (at
most ``max_concurrency`` at a time), answered in input order; the server does the batching.
Every failure (unreachable server, timeout, HTTP error status, malformed response) is an
EngineError naming the backend, the URL and the server's own message.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.engine_config import OpenAIEngineOptions
from fmprog.engines.base import Engine, EngineError
from fmprog.engines.chat import Message, image_messages, png_data_url, text_messages

_MESSAGE_CHARS = 500  # of a server's error message or malformed body quoted in an error


class OpenAIEngine(Engine):
    """Chat completions over HTTP; the model runs wherever the server runs."""

    options: OpenAIEngineOptions
    max_concurrency: int = 8

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        super().__init__(spec, dependencies)
        if not isinstance(self.options, OpenAIEngineOptions):
            raise EngineError(f"backend {spec.name!r}: OpenAIEngine needs openai options, got {self.options.kind}")
        self.base_url = self.options.base_url.rstrip("/")
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        self.close()  # loading again reconnects
        headers = {"Authorization": f"Bearer {self._api_key()}"} if self.options.api_key_env else {}
        client = httpx.Client(base_url=self.base_url + "/", headers=headers, timeout=self.options.timeout_s)
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"openai-{self.spec.name}")
        with self._lock:
            self._client, self._pool = client, pool
        try:
            self.check_health()
        except EngineError:
            self.close()
            raise

    def llm_batch(self, prompts: Sequence[str]) -> list[str]:
        return self._complete_all([text_messages(p, self.options.system_prompt) for p in prompts])

    def vqa_batch(self, images: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        if len(images) != len(questions):
            raise EngineError(f"backend {self.spec.name!r}: {len(images)} images but {len(questions)} questions")
        try:
            urls = [png_data_url(image) for image in images]
        except ValueError as exc:
            raise EngineError(f"backend {self.spec.name!r}: {exc}") from exc
        return self._complete_all(
            [image_messages(url, q, self.options.system_prompt) for url, q in zip(urls, questions, strict=True)]
        )

    def chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> str:
        if self.spec.function != Function.llm:
            raise self._wrong_function(Function.llm)
        return self._complete(list(messages), max_tokens)

    def check_health(self) -> None:
        """The server answers ``GET /models`` and lists the configured model."""
        body = self._request("GET", "models")
        try:
            served = [str(entry["id"]) for entry in body["data"]]
        except (KeyError, TypeError) as exc:
            raise self._malformed("models", body) from exc
        if self.options.model not in served:
            raise EngineError(
                f"backend {self.spec.name!r}: model {self.options.model!r} is not served by {self.base_url} "
                f"(it serves {served})"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "openai",
            "base_url": self.base_url,
            "model": self.options.model,
            "loaded": self._client is not None,
            "max_concurrency": self.max_concurrency,
        }

    def close(self) -> None:
        with self._lock:
            client, pool = self._client, self._pool
            self._client = self._pool = None
        if pool is not None:
            pool.shutdown(wait=True)
        if client is not None:
            client.close()

    # -- requests -----------------------------------------------------------------------------

    def _complete_all(self, conversations: list[list[Message]]) -> list[str]:
        if len(conversations) <= 1 or self._pool is None:
            return [self._complete(messages) for messages in conversations]
        return list(self._pool.map(self._complete, conversations))

    def _complete(self, messages: list[Message], max_tokens: int | None = None) -> str:
        payload = {
            "model": self.options.model,
            "messages": messages,
            "max_tokens": max_tokens or self.options.max_tokens,
            "temperature": self.options.temperature,
        }
        body = self._request("POST", "chat/completions", json=payload)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise self._malformed("chat/completions", body) from exc
        if not isinstance(content, str):
            raise self._malformed("chat/completions", body)
        return content.strip()

    def _request(self, method: str, path: str, json: Any = None) -> Any:
        client = self._client
        if client is None:
            raise EngineError(f"backend {self.spec.name!r}: the engine is not loaded")
        url = f"{self.base_url}/{path}"
        try:
            response = client.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise EngineError(
                f"backend {self.spec.name!r}: {method} {url} timed out after {self.options.timeout_s} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"backend {self.spec.name!r}: {method} {url} failed: {exc!r}") from exc
        if response.status_code >= 400:
            raise EngineError(
                f"backend {self.spec.name!r}: {method} {url} returned HTTP {response.status_code}: "
                f"{_server_message(response)}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise self._malformed(path, response.text) from exc

    def _malformed(self, path: str, body: Any) -> EngineError:
        return EngineError(
            f"backend {self.spec.name!r}: malformed response from {self.base_url}/{path}: {str(body)[:_MESSAGE_CHARS]}"
        )

    def _api_key(self) -> str:
        name = self.options.api_key_env
        key = os.environ.get(name) if name else None
        if not key:
            raise EngineError(f"backend {self.spec.name!r}: environment variable {name!r} (api_key_env) is not set")
        return key


def _server_message(response: httpx.Response) -> str:
    """The error message an OpenAI-style server put in its body (``{"error": {"message": ...}}``,
    FastAPI's ``{"detail": ...}``), or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:_MESSAGE_CHARS] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:_MESSAGE_CHARS]
        for key in ("error", "detail", "message"):
            if key in body:
                return str(body[key])[:_MESSAGE_CHARS]
    return str(body)[:_MESSAGE_CHARS]
