"""``fast``: the paper's structured policy with deciding made cheap.

Shared fixed image features (:mod:`policy.features`) feed, per call site, one Bayesian linear
reward model per backend (closed-form posterior, Sherman-Morrison updates; :mod:`.bayes`).
Deciding Thompson-samples each backend's reward from ``N(mean, (nu * sigma)^2)`` and takes the
argmax, exactly the paper's gradient Thompson sampling for a linear last layer on frozen features
(the gradient of the predicted reward is the feature vector, and ``U`` is exact, not diagonal).
The decision's propensities are each backend's probability of winning that draw
(:func:`fmprog.thompson.argmax_probabilities`); sites are drawn independently.
Learning targets are the paper's sub-rewards ``r_i = -lambda * C_i - L / N`` of executed sites;
the closed-form posterior replaces REINFORCE's gradient steps (a regression on the sub-reward,
the fixed point REINFORCE with a learned baseline moves toward). Everything happens in
``observe``; ``train`` has nothing to do.

The Thompson spread includes the residual noise: a draw is ``N(mean, nu^2 s^2 x^T A^-1 x)`` with
``s^2`` the site's residual variance, estimated from the residuals of its own observations
(``(x . theta_before - r)^2``, each against the model before the update) and a prior of
``noise_prior`` pseudo-observations at one reward unit (``s^2 = 1`` after ``reward_scale``): a
site whose rewards barely move once the cost term is known (true negatives) narrows its draws
and commits, one whose rewards swing (rare positives) keeps exploring.

``nu`` scales exploration; ``reward_scale`` divides rewards before fitting (e.g. ~1 for the 0/1
loss, ~100 for the authors' rewards), so the prior ``reg`` and the noise prior mean the same at
any scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.contract import Feedback
from fmprog.thompson import argmax_probabilities
from policy.algorithms.base import Policy
from policy.algorithms.bayes import LinearArms
from policy.decisions import PendingDecision
from policy.features import FEATURE_DIM, frame_features


class FastParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reg: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="Ridge prior precision.")
    nu: float = Field(default=0.3, ge=0, allow_inf_nan=False, description="Exploration scale.")
    reward_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="Rewards are divided by this.")
    noise_prior: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="Pseudo-observations of unit residual variance."
    )


class FastPolicy(Policy):
    name = "fast"
    Params = FastParams

    def __init__(self, spec):
        super().__init__(spec)
        self.models = {site.id: LinearArms(len(site.backends), FEATURE_DIM, self.params.reg) for site in spec.sites}
        # per site: the residuals' sum of squares and count, the prior's pseudo-observations included
        self.noise = {site.id: [self.params.noise_prior, self.params.noise_prior] for site in spec.sites}

    def residual_sd(self, site_id: str) -> float:
        squares, count = self.noise[site_id]
        return float(np.sqrt(squares / count))

    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        x = frame_features(self.read_frame(frame))
        backends: dict[str, str] = {}
        scores: dict[str, dict[str, float]] = {}
        draws: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with self.lock:
            for site in self.spec.sites:
                mean, sigma = self.models[site.id].mean_and_sigma(x)
                spread = self.params.nu * self.residual_sd(site.id) * sigma
                sample = mean + spread * self.rng.standard_normal(len(mean))
                names = site.backend_names
                backends[site.id] = names[int(np.argmax(sample))]
                scores[site.id] = dict(zip(names, sample.tolist(), strict=True))
                draws[site.id] = mean, spread
        propensities = {
            site.id: dict(zip(site.backend_names, argmax_probabilities(*draws[site.id]).tolist(), strict=True))
            for site in self.spec.sites
        }
        return PendingDecision.with_context(
            x, algorithm=self.name, backends=backends, scores=scores, propensities=propensities
        )

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        x = decision.context_array().astype(np.float64)
        rewards = self.sub_rewards(feedback)
        with self.lock:
            for site_id, reward in rewards.items():
                arm = self.spec.site(site_id).backend_names.index(decision.backends[site_id])
                model, target = self.models[site_id], reward / self.params.reward_scale
                noise = self.noise[site_id]
                noise[0] += float(model.theta[arm] @ x - target) ** 2
                noise[1] += 1
                model.update(arm, x, target)
            self.observed += 1

    def _state(self) -> dict[str, Any]:
        return {
            "models": {site: model.state() for site, model in self.models.items()},
            "noise": {site: list(noise) for site, noise in self.noise.items()},
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for site, model in self.models.items():
            model.load(state["models"][site])
        for site, noise in state.get("noise", {}).items():  # older snapshots: the prior alone
            if site in self.noise:
                self.noise[site] = [float(noise[0]), float(noise[1])]
