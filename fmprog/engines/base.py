"""The one interface every engine implements: load a model, answer batches of one function's calls.

Lifecycle: construct (cheap: no I/O, no heavy imports), ``load()`` once, then any number of batch
calls, ``check_health()`` periodically, ``close()`` at the end. Batch methods take parallel lists
and return one result per input, in order. Images are ``H x W x 3`` uint8 RGB arrays; boxes are
pixel ``(x0, y0, x1, y1)`` with ``y`` growing downward (``fmprog.backends.Detection``).

An engine serves exactly the function of its backend: every batch method named in the table of
neural functions (``fmprog.backends.functions``) is guarded, in subclasses too, so calling another
function's method raises ``EngineError``. ``batch`` answers a batch of the backend's own function,
whatever it is; ``local_model`` adapts an engine to the program runtime's single-call protocols.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fmprog.backends.base import Detection, FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.functions import FUNCTIONS
from fmprog.engines.chat import Message


class EngineError(RuntimeError):
    """An engine that cannot load, cannot serve a call, or is unhealthy."""


class Engine(ABC):
    """A loaded model serving one backend. Subclasses override ``load`` and their function's batch method."""

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        if spec.engine is None:
            raise EngineError(f"backend {spec.name!r} has no engine configured")
        self.spec = spec
        self.options = spec.engine
        self.dependencies = dict(dependencies or {})

    @classmethod
    def serve_dependencies(cls, spec: BackendSpec) -> dict[str, Any]:
        """Ray Serve applications this engine needs bound beside its backend deployment (their
        handles arrive as ``dependencies``). Most engines need none; vLLM needs its LLM server."""
        return {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for function, record in FUNCTIONS.items():
            method = cls.__dict__.get(record.batch_method)
            if method is not None:
                setattr(cls, record.batch_method, _serving_only(function, method))

    @abstractmethod
    def load(self) -> None:
        """Load the model; raise EngineError with a clear reason when it cannot be loaded."""

    def detect_batch(self, images: Sequence[np.ndarray], nouns: Sequence[str]) -> list[list[Detection]]:
        raise self._unserved(Function.detect)

    def vqa_batch(self, images: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        raise self._unserved(Function.vqa)

    def llm_batch(self, prompts: Sequence[str]) -> list[str]:
        raise self._unserved(Function.llm)

    def ocr_batch(self, images: Sequence[np.ndarray]) -> list[str]:
        raise self._unserved(Function.ocr)

    def batch(self, *columns: Sequence[Any]) -> list[Any]:
        """Answer a batch of the backend's function: its batch method's parallel lists, in order."""
        return getattr(self, FUNCTIONS[self.spec.function].batch_method)(*columns)

    def chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> str:
        """The model's reply to a whole conversation (system, user and assistant turns), for callers
        that need more than one prompt, such as the router's program synthesizer. ``max_tokens``
        overrides the configured limit. Engines of chat language models implement it."""
        raise EngineError(f"backend {self.spec.name!r}: the {self.options.kind} engine does not hold conversations")

    def check_health(self) -> None:
        """Raise EngineError when the engine can no longer serve (default: healthy once loaded)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Facts about the loaded model for health and info endpoints (device, parameters...)."""
        return {}

    def close(self) -> None:
        """Release the model."""
        return None

    def _wrong_function(self, function: Function) -> EngineError:
        return EngineError(f"backend {self.spec.name!r} serves {self.spec.function.value}, not {function.value}")

    def _unserved(self, function: Function) -> EngineError:
        """The error of a batch method this engine does not override."""
        if function != self.spec.function:
            return self._wrong_function(function)
        return EngineError(f"backend {self.spec.name!r}: the {self.options.kind} engine has no {function.value}")


def _serving_only(function: Function, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (an engine's batch method for ``function``), refusing to run for a backend of
    another function."""

    @functools.wraps(method)
    def guarded(self: Engine, *args: Any, **kwargs: Any) -> Any:
        if self.spec.function != function:
            raise self._wrong_function(function)
        return method(self, *args, **kwargs)

    return guarded


def local_model(engine: Engine) -> FunctionModel:
    """An engine in this process, seen through the runtime's single-call protocols."""
    record = FUNCTIONS[engine.spec.function]

    def call(*arguments: Any) -> Any:
        image, text = record.inputs(arguments)
        return engine.batch(*record.batch_columns([image], [text]))[0]

    return FunctionModel(record.name, call, f"{engine.spec.name} (in process)")
