"""Typed backend configuration, validated when it is loaded.

A backend is one model that serves one generic neural function. Its cost is declared in the
paper's unit, millions of parameters (a 3B VLM costs 3750, a 72B one 73400), and a program's cost
on a frame is the sum over the backend invocations that actually ran.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from fmprog.backends.engine_config import ENGINE_FUNCTIONS, EngineOptions


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
    cost: float = Field(gt=0, allow_inf_nan=False, description="Cost of one invocation, millions of parameters.")
    description: str = ""
    engine: EngineOptions | None = None
    resources: Resources = Resources()
    autoscaling_config: Autoscaling = Autoscaling()
    batching: Batching = Batching()
    max_ongoing_requests: int = Field(default=16, ge=1)
    health_check_period_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    health_check_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _engine_serves_function(self) -> BackendSpec:
        if self.engine is not None and self.function.value not in ENGINE_FUNCTIONS[self.engine.kind]:
            served = ", ".join(sorted(ENGINE_FUNCTIONS[self.engine.kind]))
            raise ValueError(f"engine {self.engine.kind!r} cannot serve {self.function.value} (it serves {served})")
        return self


class BackendCatalog(BaseModel):
    """The backends a deployment offers; names are unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backends: list[BackendSpec] = Field(min_length=1)

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
    """A configuration file that cannot be used, with every problem found in it."""


def load_catalog(path: str | Path) -> BackendCatalog:
    """Read and validate a backend catalog from YAML; raise ConfigError naming each problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read backend configuration: {exc}") from exc
    try:
        return BackendCatalog.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid backend configuration: {problems}") from exc
