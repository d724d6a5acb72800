"""``random``: a uniformly random backend per call site, independently per frame."""

from __future__ import annotations

import numpy as np

from fmprog.contract import Feedback
from policy.algorithms.base import Policy, check_unread_frame
from policy.decisions import PendingDecision


class RandomPolicy(Policy):
    name = "random"

    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        check_unread_frame(frame)
        backends: dict[str, str] = {}
        propensities: dict[str, dict[str, float]] = {}
        with self.lock:
            for site in self.spec.sites:
                names = site.backend_names
                backends[site.id] = names[int(self.rng.integers(len(names)))]
                propensities[site.id] = dict.fromkeys(names, 1.0 / len(names))
        return PendingDecision(algorithm=self.name, backends=backends, propensities=propensities)

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        with self.lock:
            self.observed += 1
