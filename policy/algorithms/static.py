"""``static``: a fixed configuration (the paper's static programs): all cheapest, all largest
(highest cost), or a fixed map from call site to backend (sites left out get the cheapest)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.contract import Feedback, PolicySpec
from policy.algorithms.base import Policy, check_unread_frame
from policy.decisions import PendingDecision


class StaticParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["cheapest", "largest", "map"] = "cheapest"
    backends: dict[str, str] = Field(default_factory=dict, description="Site id -> backend, for mode 'map'.")


class StaticPolicy(Policy):
    name = "static"
    Params = StaticParams

    @classmethod
    def check_spec(cls, spec: PolicySpec) -> None:
        params = StaticParams.model_validate(spec.hyperparameters)
        if params.mode != "map" and params.backends:
            raise ValueError("backends may only be given with mode 'map'")
        ids = {s.id for s in spec.sites}
        for site_id, backend in params.backends.items():
            if site_id not in ids:
                raise ValueError(f"static map names unknown call site {site_id!r}")
            if backend not in spec.site(site_id).backend_names:
                raise ValueError(f"backend {backend!r} is not a candidate of call site {site_id!r}")

    def __init__(self, spec: PolicySpec):
        super().__init__(spec)
        mode = self.params.mode
        self.choice = {
            s.id: s.largest if mode == "largest" else self.params.backends.get(s.id, s.cheapest) for s in spec.sites
        }

    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        check_unread_frame(frame)
        propensities = {
            s: {b: float(b == chosen) for b in self.spec.site(s).backend_names} for s, chosen in self.choice.items()
        }
        return PendingDecision(algorithm=self.name, backends=dict(self.choice), propensities=propensities)

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        with self.lock:
            self.observed += 1
