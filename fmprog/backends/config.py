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


class Function(StrEnum):
    """The generic neural functions a program's routed calls need."""

    detect = "detect"
    vqa = "vqa"
    llm = "llm"


BackendName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]


class BackendSpec(BaseModel):
    """One backend as the program runtime sees it: a name, the function it serves, its cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: BackendName = Field(description="Unique name, lower case: letters, digits, '.', '_', '-'.")
    function: Function
    cost: float = Field(gt=0, allow_inf_nan=False, description="Cost of one invocation, millions of parameters.")
    description: str = ""


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
