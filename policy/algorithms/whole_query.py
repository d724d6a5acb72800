"""``whole_query``: the paper's "LLM routing" baseline. For each frame it chooses ONE configuration
for the whole program, all cheapest ("all small") or all largest ("all large"), with neural
Thompson sampling on frame features: the fast variant's fixed features and one Bayesian linear
reward model per configuration (Thompson sampling on a linear last layer over frozen features;
the authors used a ResNet-18 bandit). It learns from the program reward ``R = task - lambda * C``.
The decision's ``joint_propensity`` is the probability that the configuration drawn wins the
Thompson draw (:func:`fmprog.thompson.argmax_probabilities`), its propensities per call site the
marginals (all cheapest's probability on the cheapest backend, all largest's on the largest).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.contract import Feedback, PolicySpec
from fmprog.thompson import argmax_probabilities
from policy.algorithms.base import Policy
from policy.algorithms.bayes import LinearArms
from policy.decisions import PendingDecision
from policy.features import FEATURE_DIM, frame_features

CONFIGURATIONS = ("all_small", "all_large")


class WholeQueryParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reg: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    nu: float = Field(default=0.3, ge=0, allow_inf_nan=False)
    reward_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class WholeQueryPolicy(Policy):
    name = "whole_query"
    Params = WholeQueryParams

    def __init__(self, spec: PolicySpec):
        super().__init__(spec)
        self.model = LinearArms(len(CONFIGURATIONS), FEATURE_DIM, self.params.reg)
        self.configurations = (
            {s.id: s.cheapest for s in spec.sites},
            {s.id: s.largest for s in spec.sites},
        )

    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        x = frame_features(self.read_frame(frame))
        with self.lock:
            mean, sigma = self.model.mean_and_sigma(x)
            spread = self.params.nu * sigma
            sample = mean + spread * self.rng.standard_normal(len(mean))
        arm = int(np.argmax(sample))
        scores = {name: float(v) for name, v in zip(CONFIGURATIONS, sample, strict=True)}
        probs = argmax_probabilities(mean, spread)
        chosen = self.configurations[arm]
        propensities = {s.id: dict.fromkeys(s.backend_names, 0.0) for s in self.spec.sites}
        for configuration, p in zip(self.configurations, probs.tolist(), strict=True):
            for site_id, backend in configuration.items():
                propensities[site_id][backend] += p
        # all cheapest and all largest are the same configuration where no site has a choice
        joint = sum(p for c, p in zip(self.configurations, probs.tolist(), strict=True) if c == chosen)
        return PendingDecision.with_context(
            x,
            algorithm=self.name,
            backends=dict(chosen),
            scores={s.id: {chosen[s.id]: scores[CONFIGURATIONS[arm]]} for s in self.spec.sites},
            propensities=propensities,
            joint_propensity=min(joint, 1.0),
            arm=arm,
        )

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        if decision.arm is None or not 0 <= decision.arm < len(CONFIGURATIONS):
            raise ValueError("decision carries no whole-query configuration")
        x = decision.context_array().astype(np.float64)
        with self.lock:
            self.model.update(decision.arm, x, self.program_reward(feedback) / self.params.reward_scale)
            self.observed += 1

    def _state(self) -> dict[str, Any]:
        return {"model": self.model.state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load(state["model"])
