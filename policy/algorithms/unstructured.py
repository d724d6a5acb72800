"""``unstructured``: REINFORCE over the joint configuration space (the paper's unstructured
baseline). Every configuration (one backend per call site) is enumerated; a linear softmax policy
on the fast variant's fixed frame features samples one per frame, and each feedback takes one
REINFORCE step ``W += lr * (R - b) / s * (onehot(a) - pi) x^T`` on the program reward
``R = task - lambda * C`` (``b``, ``s``: running mean and standard deviation of ``R``). The
decision's ``joint_propensity`` is the softmax probability of the configuration drawn, its
propensities per call site the marginals (the summed probability of every configuration giving
the site that backend). Refuses
programs whose joint space exceeds ``max_configurations`` (default 4096): that blow-up is why the
paper structures the policy.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.contract import Feedback, PolicySpec
from policy.algorithms.base import Policy
from policy.decisions import PendingDecision
from policy.features import FEATURE_DIM, frame_features


class UnstructuredParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(default=0.1, gt=0, allow_inf_nan=False)
    max_configurations: int = Field(default=4096, ge=1, le=1_000_000)


def joint_size(spec: PolicySpec) -> int:
    return math.prod(len(s.backends) for s in spec.sites)


class UnstructuredPolicy(Policy):
    name = "unstructured"
    Params = UnstructuredParams

    @classmethod
    def check_spec(cls, spec: PolicySpec) -> None:
        limit = UnstructuredParams.model_validate(spec.hyperparameters).max_configurations
        size = joint_size(spec)
        if size > limit:
            raise ValueError(
                f"the joint configuration space has {size} configurations, more than max_configurations={limit}; "
                "use a structured policy"
            )

    def __init__(self, spec: PolicySpec):
        super().__init__(spec)
        self.configurations = list(itertools.product(*(s.backend_names for s in spec.sites)))
        self.shape = tuple(len(s.backends) for s in spec.sites)  # the configurations, last site fastest
        self.weights = np.zeros((len(self.configurations), FEATURE_DIM))
        self.stats = [0, 0.0, 0.0]  # count, mean, M2 of program rewards

    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        x = frame_features(self.read_frame(frame))
        with self.lock:
            logits = self.weights @ x
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            arm = int(self.rng.choice(len(probs), p=probs))
        chosen = self.configurations[arm]
        backends = {s.id: b for s, b in zip(self.spec.sites, chosen, strict=True)}
        return PendingDecision.with_context(
            x,
            algorithm=self.name,
            backends=backends,
            scores={s: {b: float(logits[arm])} for s, b in backends.items()},
            propensities=self.marginals(probs),
            joint_propensity=min(float(probs[arm]), 1.0),
            arm=arm,
        )

    def marginals(self, probs: np.ndarray) -> dict[str, dict[str, float]]:
        """Per call site, each backend's probability: the sum over the configurations giving it."""
        joint = probs.reshape(self.shape)
        axes = tuple(range(joint.ndim))
        marginals = {}
        for i, site in enumerate(self.spec.sites):
            p = joint.sum(axis=axes[:i] + axes[i + 1 :])
            marginals[site.id] = dict(zip(site.backend_names, (p / p.sum()).tolist(), strict=True))
        return marginals

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        if decision.arm is None or not 0 <= decision.arm < len(self.configurations):
            raise ValueError("decision carries no joint configuration")
        x = decision.context_array().astype(np.float64)
        reward = self.program_reward(feedback)
        with self.lock:
            stats = self.stats
            stats[0] += 1
            delta = reward - stats[1]
            stats[1] += delta / stats[0]
            stats[2] += delta * (reward - stats[1])
            std = math.sqrt(stats[2] / stats[0]) if stats[0] > 1 else 1.0
            advantage = (reward - stats[1]) / max(std, 1e-6)
            logits = self.weights @ x
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            grad = -probs
            grad[decision.arm] += 1.0
            self.weights += self.params.lr * advantage * np.outer(grad, x)
            self.observed += 1

    def _state(self) -> dict[str, Any]:
        import torch

        return {"weights": torch.from_numpy(self.weights.copy()), "stats": list(self.stats)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].numpy().copy()
        self.stats = [int(state["stats"][0]), float(state["stats"][1]), float(state["stats"][2])]
