"""Backends: what the program runtime calls, and their typed configuration."""

from fmprog.backends.base import (
    Backend,
    BackendRegistry,
    Detection,
    Detector,
    LanguageModel,
    VisualQA,
)
from fmprog.backends.config import BackendCatalog, BackendSpec, ConfigError, Function, load_catalog

__all__ = [
    "Backend",
    "BackendCatalog",
    "BackendRegistry",
    "BackendSpec",
    "ConfigError",
    "Detection",
    "Detector",
    "Function",
    "LanguageModel",
    "VisualQA",
    "load_catalog",
]
