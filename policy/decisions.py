"""A decision as the policy keeps it until its feedback arrives (storage, not wire).

The router sees the policy's decision as :class:`fmprog.contract.PolicyDecision` (a backend per
call site, the scores, the propensities). The policy also keeps what it needs to learn from the
feedback later: the context it decided on and, for algorithms over whole configurations, the arm.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from fmprog.contract import PolicyDecision

ContextDtype = Literal["float32", "float16", "uint8"]


class PendingDecision(PolicyDecision):
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
    def _check_context(self) -> PendingDecision:
        expected = math.prod(self.context_shape) * np.dtype(self.context_dtype).itemsize if self.context_shape else 0
        if len(self.context) != expected:
            raise ValueError(f"context has {len(self.context)} bytes, its shape and dtype need {expected}")
        return self

    @classmethod
    def with_context(
        cls, context: np.ndarray | None, dtype: ContextDtype = "float32", **fields: Any
    ) -> PendingDecision:
        if context is None:
            return cls(**fields)
        array = np.ascontiguousarray(context, dtype=np.dtype(dtype))
        return cls(context=array.tobytes(), context_shape=list(array.shape), context_dtype=dtype, **fields)

    def context_array(self) -> np.ndarray:
        """The context as a read-only array of its stored dtype and shape."""
        if not self.context_shape:
            raise ValueError("this decision carries no context")
        return np.frombuffer(self.context, dtype=np.dtype(self.context_dtype)).reshape(self.context_shape)

    def reply(self) -> PolicyDecision:
        """The decision as the router sees it: every field of the wire's, none of what the policy
        keeps for learning (the context, the arm)."""
        return PolicyDecision(**{name: getattr(self, name) for name in PolicyDecision.model_fields})
