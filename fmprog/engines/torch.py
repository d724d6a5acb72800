"""The project's own PyTorch models (the default zoo) as an engine, on CPU or CUDA.

Options (``TorchEngineOptions``): ``model`` is a zoo name (``ZooSource``, weights shipped in the
package) or a weights file (``PathSource``, checked against its SHA-256 when given, holding a
network of the same shape as the zoo model the backend's function and size select); ``device``
``auto`` picks CUDA when torch sees a GPU; ``threads`` sets torch's intra-op threads on CPU.

A batch of calls is one forward pass of the network (``detect_batch`` / ``vqa_batch``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmprog.backends.base import Detection
from fmprog.backends.config import BackendSpec
from fmprog.backends.engine_config import PathSource, TorchEngineOptions, ZooSource
from fmprog.engines.base import Engine, EngineError


class TorchEngine(Engine):
    """Serves a zoo model (detect or vqa) from this process."""

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        super().__init__(spec, dependencies)
        if not isinstance(self.options, TorchEngineOptions):
            raise EngineError(
                f"backend {spec.name!r}: TorchEngine needs torch engine options, got {self.options.kind!r}"
            )
        self.torch_options: TorchEngineOptions = self.options
        self._model: Any = None
        self._zoo_name: str | None = None

    def load(self) -> None:
        import torch

        from fmprog.zoo import ZOO, load_model

        options = self.torch_options
        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"backend {self.spec.name!r}: device 'cuda' was asked for but torch sees no CUDA device")
        if device == "cpu" and options.threads is not None:
            torch.set_num_threads(options.threads)

        source = options.model
        weights = None
        if isinstance(source, ZooSource):
            name = source.zoo
        else:
            name = self._zoo_name_for_path(source)
            from fmprog.engines.sources import resolve_source

            weights = resolve_source(source)
        if name not in ZOO:
            raise EngineError(f"backend {self.spec.name!r}: unknown zoo model {name!r} (known: {', '.join(ZOO)})")
        if ZOO[name].function != self.spec.function.value:
            raise EngineError(
                f"backend {self.spec.name!r} serves {self.spec.function.value} "
                f"but zoo model {name!r} serves {ZOO[name].function}"
            )
        try:
            self._model = load_model(name, device=device, weights=weights)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            raise EngineError(f"backend {self.spec.name!r}: cannot load zoo model {name!r}: {exc}") from exc
        self._zoo_name = name

    def _zoo_name_for_path(self, source: PathSource) -> str:
        """The zoo model a weights file stands in for: the backend's function and the size its
        name ends with (``-small`` or ``-large``), e.g. backend ``detect-large-v2`` -> ``detect-large``."""
        for size in ("small", "large"):
            if size in self.spec.name.split("-"):
                return f"{self.spec.function.value}-{size}"
        raise EngineError(
            f"backend {self.spec.name!r}: a weights file ({source.path}) needs a backend name that says "
            "'small' or 'large', to pick the network shape"
        )

    def _loaded(self) -> Any:
        if self._model is None:
            raise EngineError(f"backend {self.spec.name!r}: the engine is not loaded")
        return self._model

    def detect_batch(self, images: Sequence[np.ndarray], nouns: Sequence[str]) -> list[list[Detection]]:
        return self._loaded().detect_batch(list(images), list(nouns))

    def vqa_batch(self, images: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        return self._loaded().vqa_batch(list(images), list(questions))

    def check_health(self) -> None:
        self._loaded()

    def describe(self) -> dict[str, Any]:
        if self._model is None:
            return {"engine": "torch", "loaded": False}
        return {"engine": "torch", "loaded": True, **self._model.describe(), "zoo": self._zoo_name}

    def close(self) -> None:
        self._model = None
