"""Backends: what the program runtime calls, and their typed configuration."""

from fmprog.backends.base import (
    Backend,
    BackendRegistry,
    Detection,
    Detector,
    LanguageModel,
    TextReader,
    VisualQA,
)
from fmprog.backends.config import BackendCatalog, BackendSpec, ConfigError, Function, load_catalog
from fmprog.backends.functions import FUNCTIONS, NeuralFunction

__all__ = [
    "FUNCTIONS",
    "Backend",
    "BackendCatalog",
    "BackendRegistry",
    "BackendSpec",
    "ConfigError",
    "Detection",
    "Detector",
    "Function",
    "LanguageModel",
    "NeuralFunction",
    "TextReader",
    "VisualQA",
    "load_catalog",
]
