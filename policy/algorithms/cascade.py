"""``cascade``: gates decided per frame and evaluated by the router at each invocation.

The reply to a frame carries, for every call site, a *gate* (``fmprog.contract.SiteGate``): for
the *first choice*, one weight vector per candidate backend over what the call acts on
(``CHOICE_FEATURES``: the patch, its area, the detector score that found it; the weights on the
rest of ``CONTEXT_FEATURES``, the run's history, are 0); for VQA, LLM and OCR sites with a dearer
candidate, an *escalation* gate over the whole context (what the run found and answered before
included) and the first answer (``ESCALATION_FEATURES``: said yes, said no, empty, "no" about a
found patch, ...) that re-asks the dearest candidate when it scores above 0. The router runs the
program under these gates and its feedback lists every gated invocation with the vector the gate
saw, its cost and, for answers, the task reward the answer alone would have earned. Each gate also
carries the posterior its weights were drawn from (``GateSpread``: the mean weights and a root of
their covariance), from which the router tells how sure the policy was of each decision (which
frames' labels are worth asking for, ``router.labels``).

At a site that escalates, the dearest candidate is asked only as an escalation, never first: the
escalation gate then sees every choice to ask it, paired with the cheaper answer it re-asks, so a
first choice cannot starve it of pairs (were the dearest a first choice too, a first-choice gate
that learned "the cheap answer alone misses positives" would stop the cheap answers the
escalation gate must learn from, and lock the site on the dearest backend). What this gives up is
the cheaper answer's cost where the gate escalates every time.

Models, all Bayesian linear regressions with Thompson sampling (:class:`.bayes.LinearArms`,
closed-form posterior, Sherman-Morrison updates; a weight vector is drawn once per frame, so one
frame's gates are one draw from the posterior). They learn task rewards only; the known cost
``lambda * cost`` is taken off a gate's bias when the gate is drawn, so what a model learned
holds at any ``lambda``:

- *First choice*, per site and candidate: over ``CHOICE_FEATURES`` only. With rare positives a
  first choice's reward moves on a few frames in a hundred, so each feature it scores costs
  thousands of frames to learn; scoring the run's history too made the second detector of a
  program draw at random (its history features had no evidence) where the first, always seen
  with the same history, had learned which detector pays. The escalation gate, learning from
  pairs, scores the history. Learned: the task reward against a per-program running
  baseline, ``R - baseline``, plus what an escalation lost (``max(0, r_first - r_escalated)``,
  known from its pair): a cheap first answer is worth what it is worth with a right escalation
  gate, so the early, random escalations do not push the first choice (where a site has three or
  more candidates) toward a dearer one. A candidate's gate weights are its draw minus ``lambda *
  cost`` on the bias, so a dearer first choice is made where its drawn advantage pays for its
  known extra cost.
- *Escalation*, per VQA/LLM/OCR site: the *paired gain* of an escalated call, whose two answers
  are both known with the label, ``r_escalated - r_first``; the gate re-asks where the drawn gain
  beats ``lambda * cost`` of the dearer call.

Scale and prior come from the reward table, not from data: rewards are divided by ``sigma``, the
standard deviation of one answer's task reward when it is right or wrong at even odds, labels
mixed at ``base_rate`` (binary: ``sigma^2 = p ((TP - FN) / 2)^2 + (1 - p) ((TN - FP) / 2)^2``,
about 180 for the authors' rewards at p = 0.1; open-form ``(correct - wrong) / 2``; ``0.5`` for
the 0/1 loss); a paired gain, the difference of two answers' rewards, by ``2 * sigma``, the full
swing between a right and a wrong answer. Each of a gate's ``d`` weights has the prior
``N(0, sigma^2 / (reg * d))``, so a score's prior spread is about ``sigma`` (the features are in
0..1), and the observation noise is fixed at that scale.

Shared across programs: every model is keyed by what it means, not by the program it serves
(``model_key``: the task kind and reward scheme, the function, the site's candidate backends, the
role and the backend), and keeps the *evidence* of its own observations (:mod:`.evidence`). A new
policy starts from the evidence pooled under its models' keys from every other program in the
policy service (``share``) and from a prior the project ships (``warm_start``). A shipped prior
(``policy/priors/cascade.json``, built by ``python -m benchmarks.cascade_prior`` from the zoo's
held-out scenes and queries of its own, never from the benchmark's tracks) is keyed by role
(``role_key``: the backend's rank by cost among the site's candidates in place of its name), so a
configuration of other backends starts from it too; a model finds the priors built with its very
backends first, then any by role, and the policy says at start which models none holds
(``prior_uses``, and a warning). The posterior that evidence gives is the new policy's prior,
with a per-program intercept: an escalation gate's bias gets ``program_intercept`` times the base
prior's variance back (how often re-asking pays may differ from program to program; 0 by default,
chosen on the benchmark's validation split), and a first choice is scored against the program's
own running baseline (the level is the program's; what differs between candidates is shared).

Forgetting (:mod:`.drift`): ``drift_window`` (200 by default; 0 turns it off) watches the
standardized residuals of each model that decides something (every escalation gate, the first
choices of a site with two or more) and, when their recent mean leaves ``drift_threshold`` times
the spread it has where nothing changes, widens that model's posterior so that what it learned,
the prior included, counts as ``drift_window`` observations: the next window's evidence weighs as
much, however heavy the shipped prior was. ``prior_weight`` (off by default) caps what the prior
counts as from the start.

Why it cannot lock in: a gate's prior mean is 0 (or the pooled evidence's), so a fresh policy
without evidence escalates every answer with probability 1/2 and flips a coin between candidates
(shifted by the known cost); a candidate or an escalation the data has not seen keeps its prior
spread, so its draw still wins with a probability that shrinks only as its own data accrues;
since the noise is known rather than estimated, a run of identical outcomes (many true negatives
while positives are rare) narrows the posterior as ``1 / sqrt(n)``, never to 0, so the rare paying
case keeps being tried until enough pairs say it does not pay; and the dearest candidate of an
escalating site is asked only as an escalation, so no first choice can starve the escalation gate
of pairs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.backends.config import Function
from fmprog.contract import (
    CONTEXT_FEATURES,
    ESCALATION_FEATURES,
    CallSiteSpec,
    Feedback,
    GateSpread,
    PolicySpec,
    SiteGate,
)
from fmprog.rewards import RewardConfig, TaskKind
from policy.algorithms.base import Policy, check_unread_frame
from policy.algorithms.bayes import LinearArms
from policy.algorithms.drift import DriftWatch, ModelDrift, capped
from policy.algorithms.evidence import Evidence, PriorUse, pooled, prior_for, shipped_priors
from policy.decisions import PendingDecision

logger = logging.getLogger(__name__)

ESCALATING = frozenset({Function.vqa, Function.llm, Function.ocr})
CHOICE_FEATURES = ("bias", "patch", "area", "found", "score")
"""The context values a first choice scores (what the call acts on); its gate's weights on the
other ``CONTEXT_FEATURES`` (the run's history) are 0."""
CHOICE_INDEX = [CONTEXT_FEATURES.index(name) for name in CHOICE_FEATURES]
PRIOR_FEATURES = (("choice", CHOICE_FEATURES), ("escalation", ESCALATION_FEATURES))
"""The features the shipped prior must have been built over."""


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
    nu: float = Field(
        default=0.3,
        ge=0,
        allow_inf_nan=False,
        description="Exploration scale: draws from the posterior widened by nu (1: plain Thompson; 0.3 chosen on "
        "the benchmark's validation split).",
    )
    program_intercept: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Prior variance of a program's own escalation intercept around the pooled evidence's, in "
        "units of the base prior's (0, chosen on the validation split: the pooled evidence's own).",
    )
    baseline_window: int = Field(
        default=200, ge=1, description="The running baseline averages about this many recent rewards."
    )
    warm_start: bool = Field(default=True, description="Start from the prior the project ships (policy/priors).")
    share: bool = Field(default=True, description="Start from the evidence of the service's other programs.")
    prior_weight: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="The prior (shipped and shared evidence) counts as at most this many observations per model "
        "(None: as much as it holds).",
    )
    drift_window: int = Field(
        default=200,
        ge=0,
        description="Watch each model's residuals over about this many recent observations; when they drift, "
        "what the model learned (its prior included) counts as this many observations (0: never; 200 and the "
        "threshold 6 never fired on the benchmark's validation split).",
    )
    drift_threshold: float = Field(
        default=6.0, gt=0, allow_inf_nan=False, description="How many spreads the recent residuals may drift."
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


def model_key(params: CascadeParams, site: CallSiteSpec, role: str, backend: str) -> str:
    """What a model means, the same for every program: models under one key pool their evidence."""
    candidates = "+".join(sorted(site.backend_names))
    return f"{params.kind}:{params.rewards.scheme}/{site.function.value}/{candidates}/{role}/{backend}"


def backend_role(site: CallSiteSpec, backend: str) -> str:
    """A backend's role among a site's candidates by cost: ``cheapest``, ``dearest``, or
    ``rank-k`` (``k`` from 1, cheapest first) between them; equal costs are ordered by name."""
    order = [b.name for b in sorted(site.backends, key=lambda b: (b.cost, b.name))]
    rank = order.index(backend)
    if rank == 0:
        return "cheapest"
    return "dearest" if rank == len(order) - 1 else f"rank-{rank + 1}"


def role_key(params: CascadeParams, site: CallSiteSpec, role: str, backend: str) -> str:
    """What a model is to any configuration: the task kind and reward scheme, the function, how
    many candidates the site has, the model's role and the backend's role among the candidates by
    cost. A shipped prior is keyed by it, so it applies to backends of other names."""
    head = f"{params.kind}:{params.rewards.scheme}/{site.function.value}/{len(site.backends)}"
    return f"{head}/{role}/{backend_role(site, backend)}"


def model_label(name: str) -> str:
    """How a model is named to users (``PriorUse``, ``ModelDrift``): ``escalation`` or
    ``choice:<backend>``."""
    return "escalation" if name == "escalation" else f"choice:{name}"


def _draw(arms: LinearArms, arm: int, nu: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A draw of one arm's weights from its posterior ``N(theta, nu^2 A^-1)`` (exploration
    ``nu``), and a lower-triangular root of that covariance."""
    cov = arms.a_inv[arm]  # (reg I + X'X)^-1: the posterior covariance under unit noise
    try:
        root = np.linalg.cholesky(cov + 1e-12 * np.eye(len(cov)))
    except np.linalg.LinAlgError:
        root = np.diag(np.sqrt(np.maximum(np.diag(cov), 0.0)))
    return arms.theta[arm] + nu * (root @ rng.standard_normal(len(cov))), nu * root


def _spread(mean: np.ndarray, over: list[int], root: np.ndarray) -> GateSpread:
    """The wire form of a gate's posterior: mean weights and the root's rows over ``over``."""
    rows = [float(v) for i in range(len(root)) for v in root[i, : i + 1]]
    return GateSpread(mean=mean.tolist(), over=over, root=rows)


def _start_from(arms: LinearArms, arm: int, evidence: Evidence, intercept_variance: float = 0.0) -> None:
    """Set one arm's prior to the posterior ``evidence`` gives from the base prior, the bias's
    variance widened by ``intercept_variance`` (a per-program intercept around the pooled one)."""
    precision = arms.reg * np.eye(evidence.dim) + evidence.xtx
    cov = np.linalg.inv(precision)
    mean = cov @ evidence.xty
    if intercept_variance:
        cov[0, 0] += intercept_variance
    arms.start_from(arm, mean, cov)


class CascadePolicy(Policy):
    name = "cascade"
    Params = CascadeParams
    pools_evidence = True

    def __init__(self, spec: PolicySpec, evidence: Mapping[str, Evidence] | None = None):
        super().__init__(spec)
        params = self.params
        self.sigma = reward_sigma(params)
        n, m = len(CHOICE_FEATURES), len(ESCALATION_FEATURES)
        # each weight's prior is N(0, sigma^2 / (reg * d)): a score's prior spread is about sigma
        # at a vector of d values near 1, however many features there are
        self.choice = {site.id: LinearArms(len(site.backends), n, params.reg * n) for site in spec.sites}
        self.escalation = {
            site.id: LinearArms(1, m, params.reg * m)
            for site in spec.sites
            if site.function in ESCALATING and len(site.backends) > 1
        }
        self.keys: dict[tuple[str, str], str] = {}  # (site, backend or "escalation") -> model key
        self.own: dict[str, Evidence] = {}  # per model key: this policy's own observations
        self.roles: dict[str, str] = {}  # per model key: its role key (a prior file's key)
        for site in spec.sites:
            for option in site.backends:
                key = self.keys[site.id, option.name] = model_key(params, site, "choice", option.name)
                self.roles[key] = role_key(params, site, "choice", option.name)
                self.own.setdefault(key, Evidence.empty(n))
            if site.id in self.escalation:
                key = self.keys[site.id, "escalation"] = model_key(params, site, "escalation", site.largest)
                self.roles[key] = role_key(params, site, "escalation", site.largest)
                self.own.setdefault(key, Evidence.empty(m))
        priors = shipped_priors("cascade", PRIOR_FEATURES) if params.warm_start else ()
        shared = evidence if evidence is not None and params.share else {}
        self.uses: list[PriorUse] = []

        def start(site: CallSiteSpec, name: str, arms: LinearArms, arm: int, dim: int, widen: float = 0.0) -> None:
            key = self.keys[site.id, name]
            found, used, matched = prior_for(priors, site.function.value, site.backend_names, self.roles[key])
            if params.warm_start:
                model = model_label(name)
                names = [prior.name for prior in used]
                use = PriorUse(site=site.id, model=model, key=self.roles[key], matched=matched, priors=names)
                self.uses.append(use)
            total = pooled(*({key: e} for e in (found, shared.get(key)) if e is not None)).get(key)
            if total is not None and total.dim == dim:
                _start_from(arms, arm, capped(total, params.prior_weight), intercept_variance=widen)

        for site in spec.sites:
            for arm, option in enumerate(site.backends):
                if self._asked_first(site, option.name):
                    start(site, option.name, self.choice[site.id], arm, n)
            if site.id in self.escalation:
                widen = params.program_intercept / (params.reg * m)
                start(site, "escalation", self.escalation[site.id], 0, m, widen=widen)
        cold = [use for use in self.uses if use.matched == "none"]
        if cold:
            logger.warning(
                "cascade: no shipped prior holds %d of the %d models of this program (%s); they start from the "
                "base prior",
                len(cold),
                len(self.uses),
                ", ".join(f"{use.site} {use.model} as {use.key}" for use in cold),
            )
        # per model that decides something (site and backend, or site and "escalation"): whether its
        # residuals drifted; a site's only first choice (the cheaper of two at a site that escalates)
        # decides nothing, and its target moves with the program's running baseline
        self.watches: dict[tuple[str, str], DriftWatch] = {}
        if params.drift_window:
            for site in spec.sites:
                firsts = [name for name in site.backend_names if self._asked_first(site, name)]
                watched = (firsts if len(firsts) > 1 else []) + (["escalation"] if site.id in self.escalation else [])
                for name in watched:
                    self.watches[site.id, name] = DriftWatch(params.drift_window, params.drift_threshold)
        self.baseline = 0.0
        self.rewards_seen = 0

    def _asked_first(self, site: CallSiteSpec, backend: str) -> bool:
        """Whether ``backend`` can be a first choice at ``site``: the dearest candidate of a site
        that escalates is asked only as an escalation."""
        return site.id not in self.escalation or backend != site.largest

    def prior_uses(self) -> list[PriorUse]:
        return list(self.uses)

    def drifts(self) -> list[ModelDrift]:
        with self.lock:
            return [
                ModelDrift(
                    site=site,
                    model=model_label(name),
                    observed=watch.seen,
                    alarms=watch.alarms,
                )
                for (site, name), watch in self.watches.items()
            ]

    def evidence(self) -> dict[str, Evidence]:
        """The evidence of this policy's own observations, per model key (the prior left out)."""
        with self.lock:
            return {key: e.copy() for key, e in self.own.items() if e.n}

    # -- deciding -----------------------------------------------------------------------------------

    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        check_unread_frame(frame)
        gates: dict[str, SiteGate] = {}
        backends: dict[str, str] = {}
        scores: dict[str, dict[str, float]] = {}
        lam, sigma, nu = self.spec.lam, self.sigma, self.params.nu
        with self.lock:
            for site in self.spec.sites:
                choice: dict[str, list[float]] = {}
                choice_spread: dict[str, GateSpread] = {}
                escalates = site.id in self.escalation
                for arm, option in enumerate(site.backends):
                    if not self._asked_first(site, option.name):
                        continue
                    draw, root = _draw(self.choice[site.id], arm, nu, self.rng)
                    weights, mean = np.zeros(len(CONTEXT_FEATURES)), np.zeros(len(CONTEXT_FEATURES))
                    weights[CHOICE_INDEX] = sigma * draw
                    mean[CHOICE_INDEX] = sigma * self.choice[site.id].theta[arm]
                    weights[0] -= lam * option.cost
                    mean[0] -= lam * option.cost
                    choice[option.name] = weights.tolist()
                    choice_spread[option.name] = _spread(mean, CHOICE_INDEX, sigma * root)
                # the up-front decision (the fallback, and what the other algorithms' replies
                # hold): the first choice at the bias alone
                bias = {name: weights[0] for name, weights in choice.items()}
                backends[site.id] = max(bias, key=bias.__getitem__)
                scores[site.id] = bias
                escalate_to = escalation = escalation_spread = None
                if escalates:
                    escalate_to = site.largest
                    draw, root = _draw(self.escalation[site.id], 0, nu, self.rng)
                    weights, mean = 2 * sigma * draw, 2 * sigma * self.escalation[site.id].theta[0]
                    weights[0] -= lam * max(site.costs)  # the cost of asking site.largest
                    mean[0] -= lam * max(site.costs)
                    escalation = weights.tolist()
                    escalation_spread = _spread(mean, list(range(len(mean))), 2 * sigma * root)
                gates[site.id] = SiteGate(
                    choice=choice,
                    escalate_to=escalate_to,
                    escalation=escalation,
                    choice_spread=choice_spread,
                    escalation_spread=escalation_spread,
                )
        return PendingDecision(algorithm=self.name, backends=backends, scores=scores, gates=gates)

    # -- learning -----------------------------------------------------------------------------------

    def check_feedback(self, decision: PendingDecision, feedback: Feedback) -> None:
        super().check_feedback(decision, feedback)
        for record in feedback.invocations or ():
            site = self.spec.site(record.site)
            if record.backend not in site.backend_names:
                raise ValueError(f"invocation record names {record.backend!r}, not a candidate of {record.site!r}")

    def _learn(self, models: LinearArms, arm: int, model: tuple[str, str], x: np.ndarray, y: float) -> None:
        watch = self.watches.get(model)
        if watch is not None and watch.observe(models.residual(arm, x, y)):
            weight = models.weight(arm)
            window = self.params.drift_window
            models.widen(arm, min(1.0, window / max(weight, 1e-9)))
            logger.warning(
                "cascade: %s %s drifted; what it learned (%.0f observations' weight) now counts as %d",
                *model,
                weight,
                window,
            )
        models.update(arm, x, y)
        self.own[self.keys[model]].add(x, y)

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        records = feedback.invocations or []
        task = feedback.task_term
        sigma = self.sigma
        firsts = {(r.site, r.call): r for r in records if r.escalated_from is None}
        lost: dict[tuple[str, int], float] = {}  # what the escalations at a call lost, when known
        with self.lock:
            advantage = task - self.baseline
            for record in records:
                key = (record.site, record.call)
                first = firsts.get(key)
                if (
                    record.escalated_from is None
                    or first is None
                    or first.reward is None
                    or record.reward is None
                    or record.site not in self.escalation
                ):
                    continue
                gain = record.reward - first.reward
                lost[key] = lost.get(key, 0.0) + max(0.0, -gain)
                x = np.asarray(record.features)
                self._learn(self.escalation[record.site], 0, (record.site, "escalation"), x, gain / (2 * sigma))
            for key, record in firsts.items():
                arm = self.spec.site(key[0]).backend_names.index(record.backend)
                target = (advantage + lost.get(key, 0.0)) / sigma
                x = np.asarray(record.features)[CHOICE_INDEX]
                self._learn(self.choice[key[0]], arm, (key[0], record.backend), x, target)
            self.rewards_seen += 1
            self.baseline += (task - self.baseline) / min(self.rewards_seen, self.params.baseline_window)
            self.observed += 1

    # -- state --------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        import torch

        return {
            "choice": {site: model.state() for site, model in self.choice.items()},
            "escalation": {site: model.state() for site, model in self.escalation.items()},
            "baseline": float(self.baseline),
            "rewards_seen": int(self.rewards_seen),
            "watches": {f"{site}\x00{model}": watch.state() for (site, model), watch in self.watches.items()},
            "evidence": {
                key: {"xtx": torch.from_numpy(e.xtx.copy()), "xty": torch.from_numpy(e.xty.copy()), "n": e.n}
                for key, e in self.own.items()
            },
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for site, model in self.choice.items():
            model.load(state["choice"][site])
        for site, model in self.escalation.items():
            model.load(state["escalation"][site])
        self.baseline = float(state["baseline"])
        self.rewards_seen = int(state["rewards_seen"])
        for name, watched in state.get("watches", {}).items():  # snapshots before watches have none
            site, _, model = name.partition("\x00")
            if (site, model) in self.watches:
                self.watches[site, model].load(watched)
        for key, e in state.get("evidence", {}).items():  # snapshots before evidence was kept have none
            if key in self.own:
                self.own[key] = Evidence(e["xtx"].numpy().copy(), e["xty"].numpy().copy(), int(e["n"]))
