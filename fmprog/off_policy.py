"""Off-policy evaluation: what another policy would have cost and scored on the frames a program
answered, estimated from the logged decisions alone, without running a backend again.

*A logged run* (:class:`LoggedRun`): the logging policy's decision for one frame
(``fmprog.contract.PolicyDecision``), the run's trace (its invocations, with the numbers each gate
saw), what it cost and how its answer scored against the frame's label.

*The probability of a run* under a policy (:func:`run_probability`) is the probability that the
policy would have made every decision the run depended on, so that the run, and its outcome,
would have been the same:

- For an up-front decision, the product over the call sites that ran of the propensity of their
  backend (sites that did not run changed nothing); for an algorithm that draws the whole
  configuration at once, ``joint_propensity``, the probability of the decision as a whole.
- For a gated decision (``fmprog.contract.SiteGate``), each gate's weights are one draw per frame
  from the posterior its spread gives. The run is reproduced when one draw makes every first
  choice the run made (at the numbers the gate saw at that call) and every escalation decision:
  re-asking where it re-asked, not where it did not. Gates are drawn independently of each other,
  so the probability is the product of each gate's part. A gate that decided one call gives its
  part exactly (a normal distribution function of its score's mean and spread). The draw of a gate
  that decided several calls (a loop over patches) is shared by all of them, so its part is not a
  product over calls: it is estimated from ``draws`` samples of its scores, seeded per run
  (``seed``), so that it repeats and a target at another ``lambda`` is scored on the same samples
  (common random numbers: the ratio of two probabilities is far steadier than either).

*Targets* (:class:`Target`): ``static`` (a fixed backend per call site: ``largest``, ``cheapest``,
or named per site or function, the rest their cheapest), ``random`` (each site's backend drawn
uniformly per frame, as the ``random`` algorithm does) and ``lambda`` (the logging policy at
another ``lambda`` with what it knew on each frame: a gated decision's gates drawn from the same
posteriors, or an up-front decision's scores from the same ``score_spreads``, with the known cost
term moved; only decisions that say how they were drawn carry what this needs, and only algorithms
that add the cost term themselves can say how ``lambda`` moves it). A learning policy's other
*trajectory* (what it would have learned from the frames it would have labelled differently) is not
estimated.

*Estimators* (:func:`evaluate`), over the labelled runs with weights ``w_i = pi_target(run_i) /
pi_logged(run_i)``, for each outcome ``y`` (cost, task reward, right answers; binary tasks also
true positives, false positives and false negatives, from which F1 is computed):

- ``ips``: ``mean(w_i y_i)``, unbiased where the logging policy covers every run the target makes;
- ``snips``: ``sum(w_i y_i) / sum(w_i)``, self-normalised: slightly biased, much steadier;
- ``dr``: doubly robust, ``mean(q + w_i (y_i - q))`` with ``q`` a direct model fitted on the other
  half of the runs (cross-fitting): the self-normalised estimate there. The direct model is a
  constant, since what the target would have run on a frame is not in the log (the router keeps
  the trace of the run that happened, not the frame): this is IPS with a control variate, exact
  where the weights average 1 and steadier than IPS where they do not.

Where the target would make runs the logging policy never makes (a backend a gate never offers as
a first choice, say), no weighting can see them: :func:`evaluate` names those gaps (``uncovered``)
and its estimates then describe only the covered runs. Where the logging policy makes the target's
runs only rarely (a gate that has learned to re-ask nearly always, against a target that never
would), the samples hold few of them or none: ``mean_weight`` (1 in expectation under full
coverage) falls below 1 and IPS underestimates what those runs add. ``effective_runs`` (``(sum
w)^2 / sum w^2``) says how many runs the estimate is worth.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fmprog.contract import CallSiteSpec, GateSpread, PolicyDecision, SiteGate
from fmprog.program import Invocation, gate_vectors
from fmprog.program.deciders import escalation_vector
from fmprog.rewards import TaskKind
from fmprog.thompson import argmax_probabilities, normal_cdf

DRAWS = 4096
"""Samples of the scores of a gate that decided several calls, its part of a run's probability
is estimated from."""
MAX_RUNS = 100_000
"""The most logged runs one evaluation reads."""


class Target(BaseModel):
    """A policy to estimate: ``static`` (``backends``: ``"largest"``, ``"cheapest"``, or a backend
    per call site or function, the rest their cheapest), ``random`` (uniform per site and frame),
    or the logging policy at another ``lambda`` (gated decisions only)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: Literal["static", "random", "lambda"]
    backends: Literal["largest", "cheapest"] | dict[str, str] | None = Field(
        default=None, description='static: "largest", "cheapest", or {call site or function: backend}.'
    )
    lam: float | None = Field(default=None, alias="lambda", ge=0, allow_inf_nan=False, description="lambda: its value.")

    @model_validator(mode="after")
    def _fields(self) -> Target:
        if (self.kind == "static") != (self.backends is not None):
            raise ValueError("backends is given with kind static, and only then")
        if (self.kind == "lambda") != (self.lam is not None):
            raise ValueError("lambda is given with kind lambda, and only then")
        return self

    @property
    def name(self) -> str:
        if self.kind == "lambda":
            return f"lambda={self.lam:g}"
        if self.kind == "static":
            if isinstance(self.backends, str):
                return f"static-{self.backends}"
            return "static:" + ",".join(f"{k}={v}" for k, v in sorted((self.backends or {}).items()))
        return "random"

    def assignment(self, sites: Sequence[CallSiteSpec]) -> dict[str, str]:
        """A static target's backend per call site; ValueError naming a backend or key that is not one."""
        chosen: dict[str, str] = {}
        named = self.backends if isinstance(self.backends, dict) else {}
        keys = {s.id for s in sites} | {s.function.value for s in sites}
        unknown = sorted(set(named) - keys)
        if unknown:
            raise ValueError(f"backends names {unknown[0]!r}, neither a call site nor a function of the program")
        for site in sites:
            if self.backends == "largest":
                chosen[site.id] = site.largest
            elif self.backends == "cheapest":
                chosen[site.id] = site.cheapest
            else:
                backend = named.get(site.id, named.get(site.function.value, site.cheapest))
                if backend not in site.backend_names:
                    raise ValueError(
                        f"backend {backend!r} is not a candidate of call site {site.id!r} "
                        f"(candidates: {', '.join(site.backend_names)})"
                    )
                chosen[site.id] = backend
        return chosen


@dataclass(frozen=True)
class LoggedRun:
    """One answered and labelled frame as the log keeps it. ``positive`` and ``predicted`` (binary
    tasks): whether the label and the answer say yes. ``seed`` seeds the samples of a gated
    decision's scores (:func:`run_seed` of the decision's id)."""

    decision: PolicyDecision
    trace: Sequence[Invocation]
    cost: float
    task: float
    correct: bool
    positive: bool = False
    predicted: bool = False
    seed: int = 0

    def outcome(self, kind: TaskKind) -> list[float]:
        values = [self.cost, self.task, float(self.correct)]
        if kind == "binary":
            tp = self.positive and self.predicted
            values += [float(tp), float(self.predicted and not self.positive), float(self.positive and not tp)]
        return values


def run_seed(decision_id: str) -> int:
    """The seed of a gated decision's samples, from its id: the same samples whenever it is read."""
    return int.from_bytes(hashlib.blake2b(decision_id.encode(), digest_size=8).digest(), "big")


# -- what a run depended on ---------------------------------------------------------------------


@dataclass
class RunEvents:
    """The decisions a run depended on: per call site that ran, the backend decided for it (up
    front) or, for gated sites, each call's first choice and the numbers its gate saw, and each
    answer's escalation decision (re-asked or not) with the numbers the escalation gate saw."""

    decided: dict[str, str] = field(default_factory=dict)  # up-front: site -> backend, sites that ran
    choices: dict[str, list[tuple[tuple[float, ...], str]]] = field(default_factory=dict)
    escalations: dict[str, list[tuple[tuple[float, ...], bool]]] = field(default_factory=dict)
    escalated: bool = False
    complete: bool = True  # False when a failed call hides a decision the run depended on


def run_events(decision: PolicyDecision, trace: Sequence[Invocation]) -> RunEvents:
    """What the run of ``decision`` whose trace is ``trace`` depended on (see :class:`RunEvents`)."""
    events = RunEvents()
    gates = decision.gates or {}
    vectors = gate_vectors(trace) if gates else [None] * len(trace)
    firsts: dict[int, tuple[Invocation, tuple[float, ...] | None]] = {}
    reasked: set[int] = set()
    for invocation, vector in zip(trace, vectors, strict=True):
        decided = invocation.fallback_from or invocation.backend
        if invocation.site not in gates:
            events.decided.setdefault(invocation.site, decision.backends.get(invocation.site, decided))
            continue
        call = invocation.features.call if invocation.features is not None else None
        if call is None:
            events.complete = False
            continue
        if invocation.escalated_from is not None:
            events.escalated = True
            reasked.add(call)
            continue
        if call in firsts:  # a retry of the same call
            continue
        firsts[call] = (invocation, tuple(vector) if vector is not None else None)
    for call, (invocation, vector) in firsts.items():
        gate = gates[invocation.site]
        chosen = invocation.fallback_from or invocation.backend
        if vector is None:  # the call failed or fell back: the numbers its gate saw are not rebuilt
            events.complete = False
            continue
        events.choices.setdefault(invocation.site, []).append((vector, chosen))
        answer = invocation.features.answer if invocation.features is not None else None
        if gate.escalate_to is not None and chosen != gate.escalate_to and invocation.ok and answer is not None:
            events.escalations.setdefault(invocation.site, []).append(
                (tuple(escalation_vector(vector, answer)), call in reasked)
            )
    return events


# -- probabilities ------------------------------------------------------------------------------


def _moments(spread: GateSpread | None, fixed: Sequence[float], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A gate's score at each vector of ``x`` (calls x features): its posterior means and the root
    of their covariance across the calls (``features x calls``: scores are ``mean + noise @ root``
    for standard normal ``noise`` over the spread's features); the fixed weights without a spread."""
    if spread is None:
        return x @ np.asarray(fixed, float), np.zeros((1, len(x)))
    k = len(spread.over)
    root = np.zeros((k, k))
    root[np.tril_indices(k)] = spread.root
    return x @ np.asarray(spread.mean, float), root.T @ x[:, spread.over].T


def _choice_probabilities(
    gate: SiteGate,
    calls: list[tuple[tuple[float, ...], str]],
    added: list[np.ndarray],
    rng: np.random.Generator,
    draws: int,
) -> np.ndarray:
    """Per shift (``added``: what it adds to each backend's score on the bias), the probability that
    one draw of the gate's first-choice weights picks every call's backend: exact for one call
    between two backends, else from ``draws`` samples (the same for every shift)."""
    names = list(gate.choice)
    if len(names) == 1:
        return np.full(len(added), float(all(backend == names[0] for _, backend in calls)))
    x = np.asarray([vector for vector, _ in calls], float)
    chosen = np.asarray([names.index(b) if b in names else -1 for _, b in calls])
    spreads = gate.choice_spread or {}
    moments = [_moments(spreads.get(name), gate.choice[name], x) for name in names]
    if len(calls) == 1 and len(names) == 2:
        (m0, r0), (m1, r1) = moments
        sd = math.sqrt(float((r0**2).sum() + (r1**2).sum()))
        gap = np.array([m0[0] + a[0] * x[0, 0] - m1[0] - a[1] * x[0, 0] for a in added])  # score 0 less score 1
        first = (gap >= 0.0).astype(float) if sd == 0.0 else normal_cdf(gap / sd)  # ties go to the first
        return first if chosen[0] == 0 else (1.0 - first if chosen[0] == 1 else np.zeros(len(added)))
    scores = np.stack([m + rng.standard_normal((draws, len(r))) @ r for m, r in moments])  # backends x draws x calls
    return np.array(
        [((scores + a[:, None, None] * x[:, 0]).argmax(axis=0) == chosen).all(axis=1).mean() for a in added]
    )


def _escalation_probabilities(
    gate: SiteGate,
    escalations: list[tuple[tuple[float, ...], bool]],
    added: list[float],
    rng: np.random.Generator,
    draws: int,
) -> np.ndarray:
    """Per shift, the probability that one draw of the escalation gate re-asks exactly where the
    run re-asked: exact for one answer, else from ``draws`` samples."""
    z = np.asarray([vector for vector, _ in escalations], float)
    reasked = np.asarray([r for _, r in escalations])
    mean, root = _moments(gate.escalation_spread, gate.escalation or [], z)
    if len(escalations) == 1:
        sd = math.sqrt(float((root**2).sum()))
        scores = np.array([mean[0] + a * z[0, 0] for a in added])
        above = (scores > 0.0).astype(float) if sd == 0.0 else normal_cdf(scores / sd)
        return above if reasked[0] else 1.0 - above
    sampled = mean + rng.standard_normal((draws, len(root))) @ root
    return np.array([((sampled + a * z[:, 0] > 0.0) == reasked).all(axis=1).mean() for a in added])


def gated_probabilities(
    gates: Mapping[str, SiteGate],
    events: RunEvents,
    seed: int,
    shifts: Sequence[Mapping[str, Mapping[str, float]]] = ({},),
    draws: int = DRAWS,
) -> list[float]:
    """The probability of a gated run (see the module's docstring), once per entry of ``shifts``:
    each maps a site to what is added to each backend's score on the bias (``"escalation"`` for
    its escalation gate), e.g. the change of the known cost term at another ``lambda``; the empty
    shift is the logging policy itself. Gates are drawn independently of each other, so the
    probability is the product of each gate's; a gate that decided one call is computed exactly,
    one that decided several from ``draws`` samples of its scores (the same samples for every
    shift)."""
    rng = np.random.default_rng(seed)
    total = np.ones(len(shifts))
    for site_id in sorted(set(events.choices) | set(events.escalations)):
        gate = gates[site_id]
        calls = events.choices.get(site_id, [])
        if calls:
            added = [np.asarray([shift.get(site_id, {}).get(name, 0.0) for name in gate.choice]) for shift in shifts]
            part = _choice_probabilities(gate, calls, added, rng, draws)
            total *= part
        escalations = events.escalations.get(site_id, [])
        if escalations and gate.escalation is not None:
            added_escalation = [shift.get(site_id, {}).get("escalation", 0.0) for shift in shifts]
            part = _escalation_probabilities(gate, escalations, added_escalation, rng, draws)
            total *= part
    return [float(p) for p in total]


def upfront_probability(decision: PolicyDecision, events: RunEvents) -> float | None:
    """The probability of an up-front decision's run under the policy that made it (None when the
    decision carries no propensities)."""
    if decision.joint_propensity is not None:
        return decision.joint_propensity
    if decision.propensities is None:
        return None
    probability = 1.0
    for site_id, backend in events.decided.items():
        probability *= decision.propensities.get(site_id, {}).get(backend, 0.0)
    return probability


def _probability(
    decision: PolicyDecision,
    events: RunEvents,
    seed: int,
    draws: int,
    shift: Mapping[str, Mapping[str, float]] | None = None,
) -> float | None:
    """The probability the policy that made ``decision`` gave the run whose decisions are ``events``
    (with ``shift``, its gates' scores moved by it: see :func:`gated_probabilities`, whose samples
    are the same with or without a shift); None when the decision carries no propensities."""
    upfront = upfront_probability(decision, events) if events.decided or not decision.gates else 1.0
    if upfront is None or not decision.gates:
        return upfront
    return gated_probabilities(decision.gates, events, seed, (shift or {},), draws)[0] * upfront


def run_probability(
    decision: PolicyDecision, trace: Sequence[Invocation], seed: int, draws: int = DRAWS
) -> float | None:
    """The probability the policy that made ``decision`` gave the run whose trace is ``trace``
    (None when the decision carries no propensities and no gates, or a failed call hides a
    decision the run depended on). Where a gate's part is sampled and no sample made the run, it
    is ``1 / draws``: the run happened, so it has a probability, smaller than the samples see."""
    events = run_events(decision, trace)
    if not events.complete:
        return None
    probability = _probability(decision, events, seed, draws)
    return 1.0 / draws if probability == 0.0 and decision.gates else probability


def _target_probability(
    target: Target,
    decision: PolicyDecision,
    events: RunEvents,
    sites: Sequence[CallSiteSpec],
    logged_lambda: float,
    seed: int,
    draws: int,
) -> float:
    """The run's probability under the target (the logging policy's is :func:`_probability`'s)."""
    gates = decision.gates or {}
    if target.kind == "lambda":
        delta = float(target.lam or 0.0) - logged_lambda
        if not gates:
            return _drawn_at(decision, events, delta)
        shift = {site_id: _cost_shift(gate, _site(sites, site_id), delta) for site_id, gate in gates.items()}
        return _probability(decision, events, seed, draws, shift) or 0.0
    if events.escalated:
        return 0.0
    # which backend each site that ran used, for every call alike (a static or random policy
    # decides a site once per frame)
    used: dict[str, set[str]] = {site: {backend} for site, backend in events.decided.items()}
    for site_id, calls in events.choices.items():
        used.setdefault(site_id, set()).update(backend for _, backend in calls)
    if decision.joint_propensity is not None and not gates:  # a joint draw: the configuration as a whole
        used = {site: {backend} for site, backend in decision.backends.items()}
    if any(len(backends) != 1 for backends in used.values()):
        return 0.0
    if target.kind == "random":
        sizes = {s.id: len(s.backends) for s in sites}
        return math.prod(1.0 / sizes[site] for site in used)
    assignment = target.assignment(sites)
    return 1.0 if all(assignment.get(site) in backends for site, backends in used.items()) else 0.0


def _drawn_at(decision: PolicyDecision, events: RunEvents, delta: float) -> float:
    """An up-front decision's run under the same draws at ``delta`` more ``lambda`` (from its
    ``score_spreads``): per site that ran, the chance its backend wins the moved draw, multiplied."""
    probability = 1.0
    for site_id, backend in events.decided.items():
        spreads = (decision.score_spreads or {}).get(site_id, {})
        if backend not in spreads:
            return 0.0
        names = list(spreads)
        means = np.array([spreads[name].mean + delta * spreads[name].per_lambda for name in names])
        stds = np.array([spreads[name].std for name in names])
        probability *= float(argmax_probabilities(means, stds)[names.index(backend)])
    return probability


def _site(sites: Sequence[CallSiteSpec], site_id: str) -> CallSiteSpec:
    for site in sites:
        if site.id == site_id:
            return site
    raise ValueError(f"the logged decisions name call site {site_id!r}, which the program does not have")


def _cost_shift(gate: SiteGate, site: CallSiteSpec, delta: float) -> dict[str, float]:
    """What ``delta`` more ``lambda`` adds to each of a gate's scores on the bias: minus ``delta``
    times the backend's cost (for the escalation, the cost of the backend it re-asks)."""
    costs = dict(zip(site.backend_names, site.costs, strict=True))
    shift = {name: -delta * costs[name] for name in gate.choice}
    if gate.escalate_to is not None:
        shift["escalation"] = -delta * costs[gate.escalate_to]
    return shift


# -- estimates ----------------------------------------------------------------------------------


class Estimate(BaseModel):
    """One estimator's estimate of a policy on the runs: cost per frame, mean task reward, share of
    right answers and, for binary tasks, F1 (None where no run has weight)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cost_per_frame: float | None
    task_reward: float | None
    accuracy: float | None
    f1: float | None = None


class Evaluation(BaseModel):
    """The estimates of one target on a program's logged runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str
    runs: int = Field(description="Labelled runs the estimates read.")
    skipped: int = Field(description="Runs left out: no propensity logged, or a failed call hides a decision.")
    unresolved: int = Field(
        description="Runs whose probability under the logging policy no weight sample reproduced (taken as 1/draws)."
    )
    matched: int = Field(description="Runs the target would have made too (weight above 0).")
    effective_runs: float = Field(description="(sum w)^2 / sum w^2: how many runs the estimate is worth.")
    mean_weight: float = Field(
        description="mean(w): 1 in expectation where the logging policy covers the target; well below 1, the "
        "target makes runs the logging policy (almost) never made, and IPS misses them"
    )
    max_weight: float
    ips: Estimate
    snips: Estimate
    dr: Estimate
    logged: Estimate = Field(description="The logging policy's own outcomes on these runs.")
    uncovered: list[str] = Field(description="Runs the target makes that the logging policy never does.")


def _estimate(kind: TaskKind, means: np.ndarray | None) -> Estimate:
    if means is None or not np.all(np.isfinite(means)):
        return Estimate(cost_per_frame=None, task_reward=None, accuracy=None)
    f1 = None
    if kind == "binary":
        tp, fp, fn = means[3:6]
        f1 = float(2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn > 0 else 0.0
    return Estimate(cost_per_frame=float(means[0]), task_reward=float(means[1]), accuracy=float(means[2]), f1=f1)


def _uncovered(
    target: Target,
    sites: Sequence[CallSiteSpec],
    decisions: Sequence[PolicyDecision],
    reasks: Mapping[str, tuple[int, int]],
) -> list[str]:
    """The target's choices no logged decision ever makes possible and, for a target that never
    re-asks, the sites whose logged answers were all re-asked (``reasks``: per site, the answers an
    escalation gate decided on and how many it re-asked)."""
    if target.kind == "lambda":
        return []
    offered: dict[str, set[str]] = {}
    for decision in decisions:
        for site_id, gate in (decision.gates or {}).items():
            offered.setdefault(site_id, set()).update(gate.choice)
        for site_id, chances in (decision.propensities or {}).items():
            offered.setdefault(site_id, set()).update(b for b, p in chances.items() if p > 0.0)
        if not decision.gates and decision.propensities is None:
            for site_id, backend in decision.backends.items():
                offered.setdefault(site_id, set()).add(backend)
    wanted = (
        {s.id: set(s.backend_names) for s in sites}
        if target.kind == "random"
        else {site: {backend} for site, backend in target.assignment(sites).items()}
    )
    gaps = []
    for site_id, backends in sorted(wanted.items()):
        missing = sorted(backends - offered.get(site_id, set()))
        if missing:
            gaps.append(f"call site {site_id!r}: the logged decisions never run {', '.join(missing)} first")
    for site_id, (answers, reasked) in sorted(reasks.items()):
        if answers and reasked == answers:
            gaps.append(
                f"call site {site_id!r}: every logged answer there was re-asked ({answers}); the target never re-asks"
            )
    return gaps


def _check(target: Target, runs: Sequence[LoggedRun], sites: Sequence[CallSiteSpec]) -> None:
    """ValueError naming why ``target`` cannot be estimated from ``runs``."""
    try:
        if target.kind == "static":
            target.assignment(sites)
        if target.kind == "lambda" and any(not run.decision.gates and not run.decision.score_spreads for run in runs):
            raise ValueError(
                "a policy at another lambda can be estimated only from decisions that say how they were drawn: "
                "gated ones (cascade: the gates' posteriors) or ones with score spreads (structured, "
                "structured_code: each score's mean and spread, and how lambda moves it); these runs include others"
            )
    except ValueError as exc:
        raise ValueError(f"target {target.name}: {exc}") from None


def evaluate(
    targets: Sequence[Target],
    runs: Sequence[LoggedRun],
    sites: Sequence[CallSiteSpec],
    kind: TaskKind,
    logged_lambda: float,
    draws: int = DRAWS,
) -> list[Evaluation]:
    """Each target's estimates on the logged runs (see the module's docstring); each run's
    decisions and its probability under the logging policy are worked out once for all targets.
    ValueError naming the first target that cannot be estimated from these runs (another
    ``lambda`` from decisions that do not say how they were drawn, a static backend that is not a
    candidate)."""
    for target in targets:
        _check(target, runs, sites)
    weights: list[list[float]] = [[] for _ in targets]
    outcomes, skipped, unresolved = [], 0, 0
    reasks: dict[str, tuple[int, int]] = {}
    for run in runs:
        events = run_events(run.decision, run.trace)
        if not events.complete:
            skipped += 1
            continue
        for site_id, escalations in events.escalations.items():
            answers, reasked = reasks.get(site_id, (0, 0))
            reasks[site_id] = (answers + len(escalations), reasked + sum(r for _, r in escalations))
        logged = _probability(run.decision, events, run.seed, draws)
        if logged is None:
            skipped += 1
            continue
        if logged <= 0.0:  # a run that happened has a probability: the samples were too few to see it
            unresolved += 1
            logged = 1.0 / draws
        for target, mine in zip(targets, weights, strict=True):
            moved = _target_probability(target, run.decision, events, sites, logged_lambda, run.seed, draws)
            mine.append(moved / logged)
        outcomes.append(run.outcome(kind))
    y = np.asarray(outcomes, float).reshape(len(outcomes), -1)
    decisions = [run.decision for run in runs]
    return [
        _evaluation(
            target, np.asarray(w, float), y, kind, skipped, unresolved, _uncovered(target, sites, decisions, reasks)
        )
        for target, w in zip(targets, weights, strict=True)
    ]


def _evaluation(
    target: Target, w: np.ndarray, y: np.ndarray, kind: TaskKind, skipped: int, unresolved: int, uncovered: list[str]
) -> Evaluation:
    """One target's estimates from its weights ``w`` and the runs' outcomes ``y``."""
    n = len(w)
    total = float(w.sum())
    ips = (w[:, None] * y).sum(axis=0) / n if n else None
    snips = (w[:, None] * y).sum(axis=0) / total if total > 0 else None
    dr = _doubly_robust(w, y) if total > 0 else None
    return Evaluation(
        target=target.name,
        runs=n,
        skipped=skipped,
        unresolved=unresolved,
        matched=int((w > 0).sum()),
        effective_runs=float(total**2 / float((w**2).sum())) if total > 0 else 0.0,
        mean_weight=total / n if n else 0.0,
        max_weight=float(w.max()) if n else 0.0,
        ips=_estimate(kind, ips),
        snips=_estimate(kind, snips),
        dr=_estimate(kind, dr),
        logged=_estimate(kind, y.mean(axis=0) if n else None),
        uncovered=uncovered,
    )


def _doubly_robust(w: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``mean(q + w (y - q))`` with ``q`` the self-normalised estimate of the other half of the runs
    (halves by position; a half without weight lends the other's)."""
    halves = np.arange(len(w)) % 2
    total = np.zeros(y.shape[1])
    for half in (0, 1):
        mine, other = halves == half, halves != half
        if not mine.any():
            continue
        base = other if w[other].sum() > 0 else mine
        q = (w[base, None] * y[base]).sum(axis=0) / w[base].sum()
        total += (q + w[mine, None] * (y[mine] - q)).sum(axis=0)
    return total / len(w)
