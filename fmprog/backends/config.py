"""Typed backend configuration, validated when it is loaded.

A backend is one model that serves one generic neural function. Its cost is declared per call in
the configuration's unit: the paper's, millions of parameters (a 3B VLM costs 3750, a 72B one
73400), or compute, millions of multiply-adds (the real-image configuration's: one set of weights
at two input sizes costs two amounts). A program's cost on a frame is the sum over the backend
invocations that actually ran.

The configurations that come with fmprog are package data (``fmprog/configs/*.yaml``, read through
``importlib.resources``, so they are found from any folder) and are given by name: ``real`` (the
default), ``synthetic``, ``gpu``. ``load_catalog`` takes such a name or the path of any other YAML
file (``resolve_config`` says which file that is).
"""

from __future__ import annotations

import re
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from fmprog.backends.engine_config import ENGINE_FUNCTIONS, ENGINE_VOCABULARIES, EngineOptions
from fmprog.vision.vocabulary import VocabularySpec

DEFAULT_CONFIG = "real"
"""The backend configuration used when none is named: the packaged real-image configuration."""

CONFIG_DIRECTORY = "configs"
"""The folder of the ``fmprog`` package that holds the packaged backend configurations (package data)."""

_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

CostWeight = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]
"""A lambda: how much one unit of cost weighs against the task reward."""


class Function(StrEnum):
    """The generic neural functions a program's routed calls need; what each one is (its inputs,
    wire schemas, engine method...) is described by ``fmprog.backends.functions.FUNCTIONS``."""

    detect = "detect"
    vqa = "vqa"
    llm = "llm"
    ocr = "ocr"


BackendName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]


class Resources(BaseModel):
    """What one replica of a backend reserves from the Ray cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    num_gpus: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class Autoscaling(BaseModel):
    """Ray Serve's replica autoscaling for one backend (a subset of Serve's AutoscalingConfig)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    upscale_delay_s: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    downscale_delay_s: float = Field(default=600.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class Batching(BaseModel):
    """Dynamic batching (``@serve.batch``): up to ``max_batch_size`` calls, waiting at most
    ``batch_wait_timeout_s`` for the batch to fill."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(default=1, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(default=0.0, ge=0, le=10, allow_inf_nan=False)


class BackendSpec(BaseModel):
    """One backend: a name, the function it serves, its cost, and how it is served.

    The program runtime needs only name, function and cost; ``engine`` (which engine and model
    source) is required to serve a backend, with the replica resources, autoscaling and batching.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: BackendName = Field(description="Unique name, lower case: letters, digits, '.', '_', '-'.")
    function: Function
    cost: float = Field(gt=0, allow_inf_nan=False, description="Cost of one invocation, in the configuration's unit.")
    description: str = ""
    engine: EngineOptions | None = None
    vocabulary: VocabularySpec | None = Field(
        default=None,
        description="What it can see (detect: the classes; vqa: also the question forms): calls outside it are "
        "marked, and programs that make them are warned about. Left out: the engine's own, for an engine whose "
        "classes are known (darknet, hog, classifier); otherwise none, and nothing is checked.",
    )
    resources: Resources = Resources()
    autoscaling_config: Autoscaling = Autoscaling()
    batching: Batching = Batching()
    max_ongoing_requests: int = Field(default=16, ge=1)
    health_check_period_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    health_check_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _engine_vocabulary(cls, data: Any) -> Any:
        """An engine whose classes are known gets its own vocabulary when none is declared."""
        if isinstance(data, dict) and data.get("vocabulary") is None:
            kind = data.get("engine", {}).get("kind") if isinstance(data.get("engine"), dict) else None
            kind = kind or getattr(data.get("engine"), "kind", None)
            if kind in ENGINE_VOCABULARIES:
                return {**data, "vocabulary": ENGINE_VOCABULARIES[kind](data["engine"])}
        return data

    @model_validator(mode="after")
    def _engine_serves_function(self) -> BackendSpec:
        if self.engine is not None and self.function.value not in ENGINE_FUNCTIONS[self.engine.kind]:
            served = ", ".join(sorted(ENGINE_FUNCTIONS[self.engine.kind]))
            raise ValueError(f"engine {self.engine.kind!r} cannot serve {self.function.value} (it serves {served})")
        if self.vocabulary is not None:
            if self.function not in (Function.detect, Function.vqa):
                raise ValueError(f"a vocabulary is declared for detect and vqa backends, not {self.function.value}")
            if (self.function == Function.vqa) != (self.vocabulary.questions is not None):
                raise ValueError("vocabulary.questions lists the question forms of a vqa backend, and only of one")
            if self.engine is not None and self.engine.kind in ENGINE_VOCABULARIES:
                own = ENGINE_VOCABULARIES[self.engine.kind](self.engine)
                if self.vocabulary.nouns != own["nouns"]:
                    raise ValueError(
                        f"the {self.engine.kind} engine sees the {own['nouns']} nouns, not {self.vocabulary.nouns}"
                    )
                beyond = set(self.vocabulary.questions or ()) - set(own.get("questions") or ())
                if beyond:
                    raise ValueError(
                        f"the {self.engine.kind} engine cannot answer {', '.join(sorted(beyond))} questions "
                        "(whole-image questions need its detector)"
                    )
        return self


class BackendCatalog(BaseModel):
    """The backends a deployment offers; names are unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backends: list[BackendSpec] = Field(min_length=1)
    default_lambda: CostWeight | None = Field(
        default=None,
        description="The cost weight (lambda) that suits this configuration's cost unit, given to a program "
        "registered without one (the router's FMPROG_ROUTER_DEFAULT_LAMBDA overrides it).",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> BackendCatalog:
        seen: set[str] = set()
        for spec in self.backends:
            if spec.name in seen:
                raise ValueError(f"backend name {spec.name!r} is used twice")
            seen.add(spec.name)
        return self

    def get(self, name: str) -> BackendSpec:
        for spec in self.backends:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def for_function(self, function: Function) -> list[BackendSpec]:
        return [spec for spec in self.backends if spec.function == function]


class ConfigError(ValueError):
    """A backend configuration that cannot be used: a name that is none of the packaged ones, a file
    that cannot be read, or one with problems (every problem found in it named)."""


def config_directory() -> Path:
    """The folder of the packaged backend configurations (``fmprog/configs`` where fmprog is installed)."""
    return Path(str(resources.files("fmprog") / CONFIG_DIRECTORY))


def config_names() -> list[str]:
    """The names of the packaged backend configurations (their YAML files without the suffix), sorted."""
    directory = config_directory()
    return sorted(path.stem for path in directory.glob("*.yaml")) if directory.is_dir() else []


def is_config_name(value: str | Path) -> bool:
    """Whether ``value`` is written as a configuration's name (a bare word: letters, digits, ``-`` and
    ``_``, with no folder and no suffix) rather than as a path; it may still name none."""
    return _CONFIG_NAME.fullmatch(str(value)) is not None


def resolve_config(name_or_path: str | Path) -> Path:
    """The YAML file of a backend configuration given by name (``real``, ``synthetic``, ``gpu``: the
    packaged ones) or by path. A bare word is always a name, even when a file of that name is in the
    current folder (write ``./NAME`` for that); anything else is a path, returned as given. Raises
    ConfigError for a name that is none of the packaged configurations, listing them."""
    if not is_config_name(name_or_path):
        return Path(name_or_path)
    path = config_directory() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(config_names()) or "none are installed"
        raise ConfigError(
            f"unknown backend configuration {str(name_or_path)!r}: give one of {known}, or the path of a YAML file"
        )
    return path


def load_catalog(name_or_path: str | Path) -> BackendCatalog:
    """Read and validate a backend catalog: a packaged configuration by name, or a YAML file by path
    (see ``resolve_config``); raise ConfigError naming each problem."""
    path = resolve_config(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        hint = ""
        if isinstance(exc, FileNotFoundError) and config_names():
            hint = f" (a packaged configuration is given by its name alone: {', '.join(config_names())})"
        raise ConfigError(f"{path}: cannot read backend configuration: {exc}{hint}") from exc
    try:
        return BackendCatalog.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid backend configuration: {problems}") from exc
