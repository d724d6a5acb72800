"""The one small interface through which programs reach models.

Each backend is one model serving one function, and implements that function's method
(``fmprog.backends.functions`` describes each function):

- ``detect(image, noun) -> list[Detection]``  (text-conditioned detection)
- ``vqa(image, question) -> str``             (short visual answer)
- ``llm(prompt) -> str``                      (text only)
- ``ocr(image) -> str``                       (the text written in the image)

``image`` is an ``H x W x 3`` uint8 RGB array (a view of the frame or of a crop).
Implementations may be in-process models, or clients of remote deployments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.functions import (
    FUNCTIONS,
    Detection,
    Detector,
    LanguageModel,
    TextReader,
    VisualQA,
)

__all__ = [
    "PROTOCOL_OF",
    "Backend",
    "BackendRegistry",
    "Detection",
    "Detector",
    "FunctionModel",
    "LanguageModel",
    "TextReader",
    "VisualQA",
    "box_iou",
]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


PROTOCOL_OF: dict[Function, type] = {name: record.protocol for name, record in FUNCTIONS.items()}


class FunctionModel:
    """A model object with exactly one method, named after ``function``, that forwards to ``call``.

    Adapters (an engine in this process, a client of a remote deployment) use it so that the
    registry's check that a backend serves its declared function stays meaningful. An adapter
    that skips a backend after failures in a row (a circuit breaker) gives ``circuit_open``, which
    says whether it is skipping it now (for metrics).
    """

    def __init__(
        self,
        function: Function,
        call: Callable[..., Any],
        label: str,
        *,
        circuit_open: Callable[[], bool] | None = None,
    ):
        self.function = Function(function)
        self.label = label
        self.circuit_open = circuit_open  # where the adapter skips a failing backend: whether it does now
        setattr(self, self.function.value, call)

    def __repr__(self) -> str:
        return f"<{self.function.value} model {self.label}>"


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend's declared configuration together with the object that serves it."""

    spec: BackendSpec
    model: Detector | VisualQA | LanguageModel | TextReader

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def function(self) -> Function:
        return self.spec.function

    @property
    def cost(self) -> float:
        return self.spec.cost


class BackendRegistry(Mapping[str, Backend]):
    """Backends by name; checks at construction that every model serves its declared function."""

    def __init__(self, backends: list[Backend]):
        self._backends: dict[str, Backend] = {}
        for backend in backends:
            if backend.name in self._backends:
                raise ValueError(f"backend name {backend.name!r} is used twice")
            protocol = PROTOCOL_OF[backend.function]
            if not isinstance(backend.model, protocol):
                raise TypeError(
                    f"backend {backend.name!r} serves {backend.function.value} but its model "
                    f"{type(backend.model).__name__} has no {backend.function.value}() method"
                )
            self._backends[backend.name] = backend

    @classmethod
    def from_specs(cls, specs: list[BackendSpec], models: Mapping[str, object]) -> BackendRegistry:
        missing = sorted({s.name for s in specs} - set(models))
        unknown = sorted(set(models) - {s.name for s in specs})
        if missing or unknown:
            raise ValueError(f"models do not match the configured backends: missing {missing}, unknown {unknown}")
        return cls([Backend(spec, models[spec.name]) for spec in specs])  # type: ignore[arg-type]

    def __getitem__(self, name: str) -> Backend:
        return self._backends[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    def for_function(self, function: Function) -> list[Backend]:
        return [b for b in self._backends.values() if b.function == function]
