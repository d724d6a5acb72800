"""``cascade``: gates decided per frame and evaluated by the router at each invocation.

The reply to a frame carries, for every call site, a *gate* (``fmprog.contract.SiteGate``): for
the *first choice*, one weight vector per candidate backend over the invocation's context
(``CONTEXT_FEATURES``: the patch, the detector score that found it, what the run found and
answered before); for VQA, LLM and OCR sites with a dearer candidate, an *escalation* gate over
the context and the first answer (``ESCALATION_FEATURES``: said yes, said no, empty, "no" about a
found patch, ...) that re-asks the dearest candidate when it scores above 0. The router runs the
program under these gates and its feedback lists every gated invocation with the vector the gate
saw, its cost and, for answers, the task reward the answer alone would have earned.

At a site that escalates, the dearest candidate is asked only as an escalation, never first: the
escalation gate then sees every choice to ask it, paired with the cheaper answer it re-asks, so a
first choice cannot starve it of pairs (were the dearest a first choice too, a first-choice gate
that learned "the cheap answer alone misses positives" would stop the cheap answers the
escalation gate must learn from, and lock the site on the dearest backend). What this gives up is
the cheaper answer's cost where the gate escalates every time.

Models, all Bayesian linear regressions with Thompson sampling (:class:`.bayes.LinearArms`,
closed-form posterior, Sherman-Morrison updates; a weight vector is drawn once per frame, so one
frame's gates are one draw from the posterior):

- *First choice*, per site and candidate: the task reward against a per-program running
  baseline, less the cost of the escalations the choice led to, ``R - baseline - lambda *
  C_escalations``, plus what an escalation that did not pay lost (``max(0, -gain)``, known from
  its pair): a cheap first answer is worth what it is worth with a right escalation gate, so the
  early, random escalations do not push the first choice (where a site has three or more
  candidates) toward a dearer one. A candidate's gate weights are its draw minus ``lambda *
  cost`` on the bias, so a dearer first choice is made where its drawn advantage pays for its
  known extra cost.
- *Escalation*, per VQA/LLM/OCR site: the *paired gain* of an escalated call, whose two answers
  are both known with the label: ``gain = r_escalated - r_first - lambda * cost_escalated``.

Scale and prior come from the reward table, not from data: rewards are divided by ``sigma``, the
standard deviation of one answer's task reward when it is right or wrong at even odds, labels
mixed at ``base_rate`` (binary: ``sigma^2 = p ((TP - FN) / 2)^2 + (1 - p) ((TN - FP) / 2)^2``,
about 180 for the authors' rewards at p = 0.1; open-form ``(correct - wrong) / 2``; ``0.5`` for
the 0/1 loss); a paired gain, the difference of two answers' rewards, by ``2 * sigma``, the full
swing between a right and a wrong answer. Each of a gate's ``d`` weights has the prior
``N(0, sigma^2 / (reg * d))``, so a score's prior spread is about ``sigma`` (the features are in
0..1), and the observation noise is fixed at that scale.

Why it cannot lock in: a gate's prior mean is 0, so at first every answer is escalated with
probability 1/2 and the first choice is a coin flip between candidates (shifted by the known
cost); a candidate or an escalation the data has not seen keeps its prior spread, so its draw
still wins with a probability that shrinks only as its own data accrues; since the noise is known
rather than estimated, a run of identical outcomes (many true negatives while positives are rare)
narrows the posterior as ``1 / sqrt(n)``, never to 0, so the rare paying case keeps being tried
until enough pairs say it does not pay; and the dearest candidate of an escalating site is asked
only as an escalation, so no first choice can starve the escalation gate of pairs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.backends.config import Function
from fmprog.contract import (
    CONTEXT_FEATURES,
    ESCALATION_FEATURES,
    Feedback,
    PolicySpec,
    RewardConfig,
    SiteGate,
    TaskKind,
)
from policy.algorithms.base import Policy, as_frame
from policy.algorithms.bayes import LinearArms
from policy.decisions import PendingDecision

ESCALATING = frozenset({Function.vqa, Function.llm, Function.ocr})


class CascadeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TaskKind = Field(default="binary", description="The program's task: sets the reward table read.")
    rewards: RewardConfig = Field(default_factory=RewardConfig, description="The reward table the router uses.")
    base_rate: float = Field(
        default=0.1, gt=0, lt=1, description="Prior share of positive labels (binary tasks), for the reward scale."
    )
    reg: float = Field(
        default=1.0, gt=0, allow_inf_nan=False, description="Prior precision of a score, in units of 1/sigma^2."
    )
    nu: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="Exploration scale (1: plain Thompson).")
    baseline_window: int = Field(
        default=200, ge=1, description="The running baseline averages about this many recent rewards."
    )


def reward_sigma(params: CascadeParams) -> float:
    """The reward scale read from the reward table (see the module's docstring)."""
    if params.rewards.scheme == "loss":
        return 0.5
    if params.kind == "open":
        return max(abs(params.rewards.open.correct - params.rewards.open.wrong) / 2, 1e-9)
    b, p = params.rewards.binary, params.base_rate
    positive = (b.true_positive - b.false_negative) / 2
    negative = (b.true_negative - b.false_positive) / 2
    return max(math.sqrt(p * positive**2 + (1 - p) * negative**2), 1e-9)


def _draw(arms: LinearArms, arm: int, nu: float, rng: np.random.Generator) -> np.ndarray:
    """A draw of one arm's weights from its posterior ``N(theta, A^-1)`` (exploration ``nu``)."""
    cov = arms.a_inv[arm]  # (reg I + X'X)^-1: the posterior covariance under unit noise
    try:
        root = np.linalg.cholesky(cov + 1e-12 * np.eye(len(cov)))
    except np.linalg.LinAlgError:
        root = np.diag(np.sqrt(np.maximum(np.diag(cov), 0.0)))
    return arms.theta[arm] + nu * (root @ rng.standard_normal(len(cov)))


class CascadePolicy(Policy):
    name = "cascade"
    Params = CascadeParams

    def __init__(self, spec: PolicySpec):
        super().__init__(spec)
        self.sigma = reward_sigma(self.params)
        n, m = len(CONTEXT_FEATURES), len(ESCALATION_FEATURES)
        # each weight's prior is N(0, sigma^2 / (reg * d)): a score's prior spread is about sigma
        # at a vector of d values near 1, however many features there are
        self.choice = {site.id: LinearArms(len(site.backends), n, self.params.reg * n) for site in spec.sites}
        self.escalation = {
            site.id: LinearArms(1, m, self.params.reg * m)
            for site in spec.sites
            if site.function in ESCALATING and len(site.backends) > 1
        }
        self.baseline = 0.0
        self.rewards_seen = 0

    # -- deciding -----------------------------------------------------------------------------------

    def decide(self, frame: np.ndarray) -> PendingDecision:
        as_frame(frame)
        gates: dict[str, SiteGate] = {}
        backends: dict[str, str] = {}
        scores: dict[str, dict[str, float]] = {}
        lam, sigma, nu = self.spec.lam, self.sigma, self.params.nu
        with self.lock:
            for site in self.spec.sites:
                choice: dict[str, list[float]] = {}
                escalates = site.id in self.escalation
                for arm, option in enumerate(site.backends):
                    if escalates and option.name == site.largest:
                        continue  # asked only as an escalation
                    weights = sigma * _draw(self.choice[site.id], arm, nu, self.rng)
                    weights[0] -= lam * option.cost
                    choice[option.name] = weights.tolist()
                # the up-front decision (the fallback, and what the other algorithms' replies
                # hold): the first choice at the bias alone
                bias = {name: weights[0] for name, weights in choice.items()}
                backends[site.id] = max(bias, key=bias.__getitem__)
                scores[site.id] = bias
                escalate_to = escalation = None
                if escalates:
                    escalate_to = site.largest
                    escalation = (2 * sigma * _draw(self.escalation[site.id], 0, nu, self.rng)).tolist()
                gates[site.id] = SiteGate(choice=choice, escalate_to=escalate_to, escalation=escalation)
        return PendingDecision(algorithm=self.name, backends=backends, scores=scores, gates=gates)

    # -- learning -----------------------------------------------------------------------------------

    def check_feedback(self, decision: PendingDecision, feedback: Feedback) -> None:
        super().check_feedback(decision, feedback)
        for record in feedback.invocations or ():
            site = self.spec.site(record.site)
            if record.backend not in site.backend_names:
                raise ValueError(f"invocation record names {record.backend!r}, not a candidate of {record.site!r}")

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        records = feedback.invocations or []
        task = feedback.task_term
        lam, sigma = self.spec.lam, self.sigma
        firsts = {(r.site, r.call): r for r in records if r.escalated_from is None}
        # what the escalations at a call changed: the cost they added, and what they lost when known
        escalated_cost: dict[tuple[str, int], float] = {}
        lost: dict[tuple[str, int], float] = {}
        with self.lock:
            advantage = task - self.baseline
            for record in records:
                if record.escalated_from is None:
                    continue
                key = (record.site, record.call)
                escalated_cost[key] = escalated_cost.get(key, 0.0) + record.cost
                first = firsts.get(key)
                if first is None or first.reward is None or record.reward is None or record.site not in self.escalation:
                    continue
                gain = record.reward - first.reward - lam * record.cost
                lost[key] = lost.get(key, 0.0) + max(0.0, -gain)
                self.escalation[record.site].update(0, np.asarray(record.features), gain / (2 * sigma))
            for key, record in firsts.items():
                arm = self.spec.site(key[0]).backend_names.index(record.backend)
                target = advantage - lam * escalated_cost.get(key, 0.0) + lost.get(key, 0.0)
                self.choice[key[0]].update(arm, np.asarray(record.features), target / sigma)
            self.rewards_seen += 1
            self.baseline += (task - self.baseline) / min(self.rewards_seen, self.params.baseline_window)
            self.observed += 1

    # -- state --------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "choice": {site: model.state() for site, model in self.choice.items()},
            "escalation": {site: model.state() for site, model in self.escalation.items()},
            "baseline": float(self.baseline),
            "rewards_seen": int(self.rewards_seen),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for site, model in self.choice.items():
            model.load(state["choice"][site])
        for site, model in self.escalation.items():
            model.load(state["escalation"][site])
        self.baseline = float(state["baseline"])
        self.rewards_seen = int(state["rewards_seen"])
