"""GGUF language models through llama.cpp (the llama-cpp-python binding), for ``function: llm``.

The binding holds one sequence's KV cache and has no batched generation across sequences, so a
batch is answered sequentially, one prompt after another under one lock (the engine is thread
safe; concurrent callers queue). The KV cache is reset before each prompt: prompts are unrelated,
and evaluating each from scratch makes an answer independent of the prompt served before it.
``chat`` (whole conversations, for the router's program synthesizer) keeps the cache instead: a
conversation that begins like the previous one (the synthesizer's fixed instructions and examples,
or the same conversation one repair turn shorter) is evaluated only from where the two differ, and
its answer is still the one a fresh evaluation gives. llama.cpp evaluates a prompt in batches of
``n_batch`` tokens and the numbers depend (slightly, but enough to flip a greedy choice) on where the
batches start; so a conversation reuses only whole batches of the previous prompt, counted from its
first token, never the tokens generated after it, and the rest is evaluated in batches that start
where a fresh evaluation's would.

Sampling uses the binding's defaults besides ``temperature`` (no repeat penalty); llama.cpp's
OpenAI-compatible server defaults its repeat penalty to 1.1, so the two answer a prompt alike only
when a request sets ``repeat_penalty`` to 1.0.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmprog.backends.config import BackendSpec
from fmprog.backends.engine_config import LlamaCppEngineOptions
from fmprog.engines.base import Engine, EngineError
from fmprog.engines.chat import Message, text_messages
from fmprog.engines.sources import resolve_source

if TYPE_CHECKING:
    from llama_cpp import Llama

INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 pip install --no-cache-dir llama-cpp-python==0.3.36'
)


def available_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(spec: BackendSpec) -> int:
    """Threads when ``n_threads`` is not configured: the CPUs the replica reserves
    (``resources.num_cpus``, at least one), at most the cores available. llama.cpp's threads
    spin while they wait for each other, so more threads than free cores slows it down sharply."""
    return max(1, min(int(spec.resources.num_cpus), available_cpus()))


class LlamaCppEngine(Engine):
    """One GGUF chat model in this process; answers with the model's own chat template."""

    options: LlamaCppEngineOptions

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        super().__init__(spec, dependencies)
        if not isinstance(self.options, LlamaCppEngineOptions):
            raise EngineError(f"backend {spec.name!r}: LlamaCppEngine needs llama_cpp options, got {self.options.kind}")
        self._llm: Llama | None = None
        self._model_path: Path | None = None
        self._n_threads = self.options.n_threads or default_threads(spec)
        self._prompt_tokens = 0  # the previous prompt's length: the KV cache holds it, evaluated in whole batches
        self._lock = threading.Lock()

    def load(self) -> None:
        if self._llm is not None:
            return
        try:
            import llama_cpp
        except ImportError as exc:
            raise EngineError(
                f"backend {self.spec.name!r} needs llama-cpp-python, which is not installed ({exc}); "
                f"install it with `{INSTALL_HINT}`"
            ) from exc
        path = resolve_source(self.options.model)
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self.options.n_ctx,
                n_threads=self._n_threads,
                n_gpu_layers=self.options.n_gpu_layers,
                n_batch=self.options.n_batch,
                seed=self.options.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"backend {self.spec.name!r}: llama.cpp cannot load {str(path)!r}: {exc}") from exc
        with self._lock:
            self._llm, self._model_path = llm, path

    def llm_batch(self, prompts: Sequence[str]) -> list[str]:
        with self._lock:
            llm = self._loaded()
            return [self._answer(llm, prompt) for prompt in prompts]

    def chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> str:
        with self._lock:
            llm = self._loaded()
            batch = self.options.n_batch
            reusable = min(self._prompt_tokens, llm.n_tokens) // batch * batch
            if reusable:
                llm.n_tokens = reusable  # the binding reuses at most this much of the matching prefix
            else:
                llm.reset()
            return self._complete(llm, list(messages), max_tokens or self.options.max_tokens)

    def _answer(self, llm: Llama, prompt: str) -> str:
        llm.reset()
        return self._complete(llm, text_messages(prompt, self.options.system_prompt), self.options.max_tokens)

    def _complete(self, llm: Llama, messages: list[Message], max_tokens: int) -> str:
        try:
            response = llm.create_chat_completion(
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=self.options.temperature,
                seed=self.options.seed,
            )
        except (ValueError, RuntimeError) as exc:  # e.g. a prompt longer than the context window
            self._prompt_tokens = 0
            llm.reset()
            raise EngineError(f"backend {self.spec.name!r}: llama.cpp failed on a prompt: {exc}") from exc
        self._prompt_tokens = response.get("usage", {}).get("prompt_tokens", 0)  # type: ignore[union-attr]
        content = response["choices"][0]["message"]["content"]  # type: ignore[index]
        return (content or "").strip()

    def check_health(self) -> None:
        self._loaded()

    def describe(self) -> dict[str, Any]:
        if self._llm is None or self._model_path is None:
            return {"engine": "llama_cpp", "loaded": False}
        return {
            "engine": "llama_cpp",
            "loaded": True,
            "model_file": str(self._model_path),
            "model_bytes": self._model_path.stat().st_size,
            "model_name": self._llm.metadata.get("general.name"),
            "n_ctx": self._llm.n_ctx(),
            "n_threads": self._n_threads,
            "n_gpu_layers": self.options.n_gpu_layers,
            "batching": "sequential",
        }

    def close(self) -> None:
        with self._lock:
            llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    def _loaded(self) -> Llama:
        if self._llm is None:
            raise EngineError(f"backend {self.spec.name!r}: the model is not loaded")
        return self._llm
