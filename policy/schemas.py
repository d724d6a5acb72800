"""Data that crosses the policy's boundaries: the policy's specification, its decisions, feedback.

Names follow the paper: a *program* has routed *call sites*; each site's function has candidate
*backends* with a *cost* (millions of parameters); a *decision* assigns a backend to every site
for one frame; *feedback* brings back the task reward (or the 0/1 loss), the sites that actually
executed and what each cost. ``lambda`` weighs cost against the task term:
``R = -L - lambda * C`` (paper), sub-reward ``r_i = -lambda * C_i - L / N``.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fmprog.backends.config import BackendName, Function


class BackendOption(BaseModel):
    """One candidate backend of a call site and its cost per invocation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: BackendName
    cost: float = Field(gt=0, allow_inf_nan=False, description="Cost of one invocation, millions of parameters.")


class CallSiteSpec(BaseModel):
    """A routed call site of the program with the backends the policy may choose from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200, description='Site id, e.g. "find@3:23".')
    function: Function
    backends: list[BackendOption] = Field(min_length=1, max_length=64)

    @field_validator("backends")
    @classmethod
    def _unique_backends(cls, backends: list[BackendOption]) -> list[BackendOption]:
        names = [b.name for b in backends]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"backend {duplicated[0]!r} is listed twice")
        return backends

    @property
    def backend_names(self) -> list[str]:
        return [b.name for b in self.backends]

    @property
    def costs(self) -> list[float]:
        return [b.cost for b in self.backends]

    @property
    def cheapest(self) -> str:
        return min(self.backends, key=lambda b: b.cost).name

    @property
    def largest(self) -> str:
        return max(self.backends, key=lambda b: b.cost).name


class PolicySpec(BaseModel):
    """What a policy is built from: the program's call sites, ``lambda``, algorithm, hyper-parameters, seed.

    ``hyperparameters`` are validated by the algorithm's own ``Params`` model (unknown keys are
    errors); the validated values are available as :meth:`params`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    sites: list[CallSiteSpec] = Field(min_length=1, max_length=256)
    lam: float = Field(default=0.0, alias="lambda", ge=0, allow_inf_nan=False, description="Cost weight.")
    algorithm: str = "structured"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(default=42, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _check(self) -> PolicySpec:
        ids = [s.id for s in self.sites]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"call site {duplicated[0]!r} is listed twice")
        from policy.algorithms import ALGORITHMS, algorithm_class

        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r} (known: {', '.join(sorted(ALGORITHMS))})")
        cls = algorithm_class(self.algorithm)
        cls.Params.model_validate(self.hyperparameters)
        cls.check_spec(self)
        return self

    def params(self) -> BaseModel:
        """The hyper-parameters, validated by the algorithm's ``Params`` model (defaults filled in)."""
        from policy.algorithms import algorithm_class

        return algorithm_class(self.algorithm).Params.model_validate(self.hyperparameters)

    def site(self, site_id: str) -> CallSiteSpec:
        for site in self.sites:
            if site.id == site_id:
                return site
        raise KeyError(site_id)


class DecisionOut(BaseModel):
    """A decision as the caller sees it: a backend per call site, with the scores and, where the
    algorithm samples from a distribution, the propensities (probability of each backend)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str
    backends: dict[str, str]
    scores: dict[str, dict[str, float]] = Field(default_factory=dict)
    propensities: dict[str, dict[str, float]] | None = None


ContextDtype = Literal["float32", "float16", "uint8"]


class Decision(DecisionOut):
    """A decision plus what the policy needs to learn from its feedback later: the context it
    decided on (features or a downsampled frame; float32 bytes unless ``context_dtype`` says
    otherwise, e.g. uint8 pixels for a full-resolution network input) and, for algorithms over
    whole configurations, the index of the configuration chosen. Serialisable to JSON (bytes as
    base64) so pending decisions can be persisted."""

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    context: bytes = b""
    context_shape: list[int] = Field(default_factory=list)
    context_dtype: ContextDtype = "float32"
    arm: int | None = None

    @model_validator(mode="after")
    def _check_context(self) -> Decision:
        expected = math.prod(self.context_shape) * np.dtype(self.context_dtype).itemsize if self.context_shape else 0
        if len(self.context) != expected:
            raise ValueError(f"context has {len(self.context)} bytes, its shape and dtype need {expected}")
        return self

    @classmethod
    def with_context(cls, context: np.ndarray | None, dtype: ContextDtype = "float32", **fields: Any) -> Decision:
        if context is None:
            return cls(**fields)
        array = np.ascontiguousarray(context, dtype=np.dtype(dtype))
        return cls(context=array.tobytes(), context_shape=list(array.shape), context_dtype=dtype, **fields)

    def context_array(self) -> np.ndarray:
        """The context as a read-only array of its stored dtype and shape."""
        if not self.context_shape:
            raise ValueError("this decision carries no context")
        return np.frombuffer(self.context, dtype=np.dtype(self.context_dtype)).reshape(self.context_shape)

    def out(self) -> DecisionOut:
        return DecisionOut(
            algorithm=self.algorithm, backends=self.backends, scores=self.scores, propensities=self.propensities
        )

    def context_b64(self) -> str:
        return base64.b64encode(self.context).decode()


class Feedback(BaseModel):
    """What came back for one decision: the task reward (authors' scheme) or the loss L (paper's),
    the sites that executed, and the cost each executed site incurred (summed over its invocations).

    The task term used in rewards is ``reward`` if given, else ``-loss``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: str | None = None
    reward: float | None = Field(default=None, allow_inf_nan=False)
    loss: float | None = Field(default=None, allow_inf_nan=False)
    executed_sites: list[str] = Field(default_factory=list)
    costs: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Feedback:
        if (self.reward is None) == (self.loss is None):
            raise ValueError("give exactly one of reward and loss")
        stray = sorted(set(self.costs) - set(self.executed_sites))
        if stray:
            raise ValueError(f"cost given for site {stray[0]!r}, which is not among executed_sites")
        for site, cost in self.costs.items():
            if not math.isfinite(cost) or cost < 0:
                raise ValueError(f"cost of site {site!r} must be finite and >= 0, got {cost}")
        if len(set(self.executed_sites)) != len(self.executed_sites):
            raise ValueError("executed_sites lists a site twice")
        return self

    @property
    def task_term(self) -> float:
        """The task part of the reward: ``reward``, or ``-loss``."""
        return float(self.reward) if self.reward is not None else -float(self.loss or 0.0)

    @property
    def total_cost(self) -> float:
        return float(sum(self.costs.values()))


class TrainReport(BaseModel):
    """What one call of ``train()`` did."""

    model_config = ConfigDict(extra="forbid")

    samples: int = 0
    steps: int = 0
    seconds: float = 0.0
    loss: float | None = None
