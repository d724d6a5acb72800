"""Engines: one module each behind ``fmprog.engines.base.Engine``.

Engines are found by import path, so configuring a backend never imports an engine it does not
use (vLLM, for one, cannot be installed on CPU machines).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from fmprog.backends.config import BackendSpec
from fmprog.engines.base import Engine, EngineError, local_model

ENGINES: dict[str, str] = {
    "torch": "fmprog.engines.torch:TorchEngine",
    "llama_cpp": "fmprog.engines.llama_cpp:LlamaCppEngine",
    "openai": "fmprog.engines.openai:OpenAIEngine",
    "transformers": "fmprog.engines.transformers:TransformersEngine",
    "vllm": "fmprog.engines.vllm:VLLMEngine",
    "rapidocr": "fmprog.engines.rapidocr:RapidOCREngine",
    "tesseract": "fmprog.engines.tesseract:TesseractEngine",
    "darknet": "fmprog.engines.darknet:DarknetEngine",
    "hog": "fmprog.engines.hog:HogEngine",
    "classifier": "fmprog.engines.classifier:ClassifierEngine",
}


def engine_class(kind: str) -> type[Engine]:
    module_name, _, attr = ENGINES[kind].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_engine(spec: BackendSpec, dependencies: Mapping[str, Any] | None = None) -> Engine:
    """Construct (but do not load) the engine a backend's configuration names."""
    if spec.engine is None:
        raise EngineError(f"backend {spec.name!r} has no engine configured")
    return engine_class(spec.engine.kind)(spec, dependencies)


__all__ = ["ENGINES", "Engine", "EngineError", "build_engine", "engine_class", "local_model"]
