"""``ucb1``: per call site, context-free UCB1 on the paper's sub-rewards.

Each backend not yet tried at a site is tried first (in the listed order); then the site takes
``argmax mean_a + c * range * sqrt(2 ln n / n_a)``, where ``n`` counts the site's samples and
``range`` is the spread of sub-rewards seen so far at the site (UCB1 assumes rewards in [0, 1];
scaling by the observed range makes ``c`` unit-free). Only executed sites are updated. The
choice is deterministic: the decision's propensities are 1 for the chosen backend, 0 for the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.contract import Feedback, PolicySpec
from policy.algorithms.base import Policy, check_unread_frame
from policy.decisions import PendingDecision


class UCB1Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    c: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="Exploration weight.")


class UCB1Policy(Policy):
    name = "ucb1"
    Params = UCB1Params

    def __init__(self, spec: PolicySpec):
        super().__init__(spec)
        self.counts = {s.id: np.zeros(len(s.backends), np.int64) for s in spec.sites}
        self.sums = {s.id: np.zeros(len(s.backends)) for s in spec.sites}
        self.low = {s.id: np.inf for s in spec.sites}
        self.high = {s.id: -np.inf for s in spec.sites}

    def scores(self, site_id: str) -> np.ndarray:
        counts, sums = self.counts[site_id], self.sums[site_id]
        untried = counts == 0
        if untried.any():
            return np.where(untried, np.inf, -np.inf)
        spread = max(self.high[site_id] - self.low[site_id], 1e-9)
        return sums / counts + self.params.c * spread * np.sqrt(2 * np.log(counts.sum()) / counts)

    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        check_unread_frame(frame)
        backends: dict[str, str] = {}
        scores: dict[str, dict[str, float]] = {}
        propensities: dict[str, dict[str, float]] = {}
        with self.lock:
            for site in self.spec.sites:
                values = self.scores(site.id)
                names = site.backend_names
                backends[site.id] = names[int(np.argmax(values))]  # first untried, or best bound
                propensities[site.id] = {n: float(n == backends[site.id]) for n in names}
                scores[site.id] = {
                    n: float(v) if np.isfinite(v) else (1e300 if v > 0 else -1e300)
                    for n, v in zip(names, values, strict=True)
                }
        return PendingDecision(algorithm=self.name, backends=backends, scores=scores, propensities=propensities)

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        with self.lock:
            for site_id, reward in self.sub_rewards(feedback).items():
                arm = self.spec.site(site_id).backend_names.index(decision.backends[site_id])
                self.counts[site_id][arm] += 1
                self.sums[site_id][arm] += reward
                self.low[site_id] = min(self.low[site_id], reward)
                self.high[site_id] = max(self.high[site_id], reward)
            self.observed += 1

    def _state(self) -> dict[str, Any]:
        import torch

        return {
            "counts": {s: torch.from_numpy(v.copy()) for s, v in self.counts.items()},
            "sums": {s: torch.from_numpy(v.copy()) for s, v in self.sums.items()},
            "low": {s: float(v) for s, v in self.low.items()},
            "high": {s: float(v) for s, v in self.high.items()},
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for s in self.counts:
            self.counts[s] = state["counts"][s].numpy().copy()
            self.sums[s] = state["sums"][s].numpy().copy()
            self.low[s] = float(state["low"][s])
            self.high[s] = float(state["high"][s])
