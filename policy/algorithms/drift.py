"""Forgetting for Bayesian linear models: a cap on the prior's weight, and a watch on residuals.

A model that never forgets answers a change in its backends (a detector that starts missing
boxes, a VQA model whose answers degrade) only as fast as new observations outweigh everything
it saw before. Two remedies, each a hyper-parameter of ``cascade``:

- :func:`capped`: prior evidence (the shipped prior, other programs' evidence) counts as at most
  ``weight`` observations (its ``X'X`` and ``X'y`` scaled down alike, so its mean is kept and only
  its confidence shrinks). The weight is read off the bias feature (always 1), ``X'X[0, 0]``: the
  sum of the observations' weights.
- :class:`DriftWatch`: per model, the standardized residuals of its observations (the reward
  minus the posterior mean's prediction, over the predictive spread, before the update) are
  averaged over about ``window`` recent observations (an exponentially weighted mean) and compared
  with the spread such a mean has when nothing changed, read from the residuals' own variance
  over a window ten times longer (heavy-tailed rewards, rare large positives, make a fixed unit
  variance wrong). When the recent mean leaves ``threshold`` times that spread, the model is
  told to widen its posterior (``LinearArms.widen``; ``cascade`` lets what it learned count as
  ``window`` observations), so the next observations move it as if it had seen that much less;
  then the watch starts again. Where nothing changes, the mean stays within its spread and nothing is
  forgotten.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

from policy.algorithms.evidence import Evidence


class ModelDrift(BaseModel):
    """What one model's drift watch has seen."""

    site: str
    model: str = Field(description='"choice:<backend>" (a first choice) or "escalation".')
    observed: int = Field(description="Observations since the watch last (re)started.")
    alarms: int = Field(description="How many times its residuals drifted and its posterior was widened.")


def capped(evidence: Evidence, weight: float | None) -> Evidence:
    """``evidence`` counting as at most ``weight`` observations (as it is when None or lighter)."""
    total = float(evidence.xtx[0, 0]) if evidence.dim else 0.0
    if weight is None or total <= weight:
        return evidence
    scale = weight / total
    return Evidence(evidence.xtx * scale, evidence.xty * scale, evidence.n)


class DriftWatch:
    """Whether one model's recent residuals have drifted (see the module's docstring)."""

    def __init__(self, window: int, threshold: float):
        if window < 1 or threshold <= 0:
            raise ValueError("a drift watch needs window >= 1 and threshold > 0")
        self.window = window
        self.threshold = threshold
        self.fast = 2.0 / (window + 1)  # the recent mean's weight per observation
        self.slow = 2.0 / (10 * window + 1)  # the reference variance's
        self.mean = 0.0
        self.variance = 1.0
        self.seen = 0  # observations since the watch (re)started
        self.alarms = 0

    def observe(self, residual: float) -> bool:
        """Take one standardized residual; True when the recent mean has drifted (the watch then
        starts again)."""
        if not math.isfinite(residual):
            return False
        self.seen += 1
        self.variance += self.slow * (residual * residual - self.variance)
        self.mean += self.fast * (residual - self.mean)
        if self.seen < self.window:
            return False
        spread = math.sqrt(max(self.variance, 1e-12) * self.fast / (2.0 - self.fast))
        if abs(self.mean) <= self.threshold * spread:
            return False
        self.alarms += 1
        self.mean, self.seen = 0.0, 0
        return True

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean, "variance": self.variance, "seen": self.seen, "alarms": self.alarms}

    def load(self, state: dict[str, Any]) -> None:
        self.mean = float(state["mean"])
        self.variance = float(state["variance"])
        self.seen = int(state["seen"])
        self.alarms = int(state["alarms"])
