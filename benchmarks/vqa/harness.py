"""The benchmark's replay: each query's stream through the runtime's executor and the policy code,
with the label fed back after every answer, for every policy, baseline and lambda.

Per query, the executor first runs the program on every frame under **every configuration** (a
backend per call site), through the output cache, so each backend sees each distinct call once.
That table gives the static programs (all cheapest, all largest) and the oracle (per frame, the
cheapest configuration that answers correctly). The monolithic baselines are programs too: one
VQA call on the whole frame with the whole question, under each VQA backend.

Learned policies then replay the stream online: ``decide`` on the frame, the program's outcome
under that decision (the executor's run, read back from the table), the authors' task reward as
feedback (``observe``), and ``train`` after every event, as the policy service's trainer would.
``whole_query`` (the paper's whole-query routing) learns on the monolithic program, choosing the
small or large VQA model per frame; the fmprog policies learn on the program.

``cascade`` decides each call when it runs, so its runs cannot be read from the table: each frame
is run by the executor (through the same output cache) under a ``GateDecider`` over the policy's
gates, and its feedback carries the per-invocation records the router would send. With it come
two reference lines: ``static-detect-large`` (the dearest detector, every other site the
cheapest; read from the table) and ``cascade-fixed`` (the hand-fixed ``CascadeDecider``).

Cost is the sum of the backends' costs over the invocations that ran, in the cost table's unit.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.queries import monolithic_program
from benchmarks.vqa.tracks import ImageResolver, TrackQuery
from fmprog.backends.base import Backend, BackendRegistry, FunctionModel
from fmprog.backends.config import Function
from fmprog.contract import CallSiteSpec, Feedback, PolicyDecision, PolicySpec, SiteGate
from fmprog.off_policy import Evaluation, LoggedRun, Target, evaluate
from fmprog.program import (
    CascadeDecider,
    Decider,
    Executor,
    GateDecider,
    Invocation,
    Program,
    Trace,
    compile_program,
)
from fmprog.program.scope import usable_backends
from fmprog.program.workers import exit_with_parent
from fmprog.rewards import RewardConfig, TaskKind, is_yes, score_answer, task_loss, task_reward
from policy.algorithms import algorithm_class, build_policy
from policy.algorithms.base import Policy
from router.gating import gate_records
from router.labels import LabelRequests, label_value
from router.schemas import LabelBudget

LEARNED_ON_PROGRAM = ("structured", "fast", "cascade")
GATED = frozenset({"cascade"})  # decide each call when it runs: replayed through the executor
REWARD_SCALE = 100.0  # the authors' task rewards are in hundreds (binary TP +1000, open +-100)
SiteGates = Mapping[str, SiteGate]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run of a program on one frame under one configuration gave."""

    answer: str
    correct: bool
    positive: bool
    cost: float
    executed_sites: tuple[str, ...]
    site_costs: tuple[tuple[str, float], ...]
    backends: tuple[str, ...]  # one entry per invocation
    teacher_cost: float = 0.0  # what a teacher's run cost on this frame, beside the answer's own cost


@dataclass
class RunStats:
    """One policy's (or baseline's) outcomes along one query's stream."""

    correct: np.ndarray
    cost: np.ndarray  # per frame, a teacher's run included
    task: np.ndarray  # the authors' task reward per frame
    predicted_positive: np.ndarray
    invocations: Counter = field(default_factory=Counter)
    teacher_cost: np.ndarray | None = None  # per frame, where a teacher ran

    @staticmethod
    def of(outcomes: Sequence[Outcome], kind: TaskKind, labels: Sequence[str]) -> RunStats:
        invocations: Counter = Counter()
        for o in outcomes:
            invocations.update(o.backends)
        taught = any(o.teacher_cost for o in outcomes)
        return RunStats(
            teacher_cost=np.array([o.teacher_cost for o in outcomes], float) if taught else None,
            correct=np.array([o.correct for o in outcomes], bool),
            cost=np.array([o.cost + o.teacher_cost for o in outcomes], float),
            task=np.array([task_reward(kind, o.answer, y) for o, y in zip(outcomes, labels, strict=True)], float),
            predicted_positive=np.array([o.positive for o in outcomes], bool),
            invocations=invocations,
        )


@dataclass
class QueryResult:
    """Every run on one query: ``runs[(policy, lambda or None)]``."""

    query: str
    type: str
    kind: TaskKind
    labels: list[str]
    runs: dict[tuple[str, float | None], RunStats]
    configurations: int
    sites: list[str]
    best_frames: dict[float, np.ndarray] = field(default_factory=dict)  # per lambda, per frame: see hindsight_reward
    plans: dict[tuple[str, float | None], tuple[str, LabelPlan]] = field(default_factory=dict)
    """The runs on fewer labels (or from another start): each one's algorithm and plan."""
    off_policy: list[OffPolicy] = field(default_factory=list)
    """Estimates from a learned run's logged decisions of other policies, each run live too."""

    @property
    def best_reward(self) -> dict[float, float]:
        """Per lambda, the hindsight-best reward summed over the stream."""
        return {lam: math.fsum(frames) for lam, frames in self.best_frames.items()}


@dataclass(frozen=True)
class OffPolicy:
    """A policy's off-policy estimate from the logged decisions of the run ``logged`` and the key
    of its live run on the same frames."""

    logged: tuple[str, float]
    live: tuple[str, float | None]
    evaluation: Evaluation


@dataclass(frozen=True)
class LabelPlan:
    """Which labels a learned policy learns from: those of a ``fraction`` of the frames, chosen as
    the router chooses them (``router.labels``: the frames the policy doubts most, within the
    budget), given by the ground truth or, with ``teacher``, by the program's all-largest
    configuration run on those frames (its cost charged to them); the frames picked by ``pick``:
    ``doubt`` or ``random`` (by default as the router picks them: labels by doubt, a teacher's at
    random); starting from the shipped prior (``warm``) or from the base prior alone."""

    fraction: float = 1.0
    teacher: bool = False
    warm: bool = True
    pick: str | None = None  # "doubt" or "random"; None: as the router picks by default

    @property
    def by_doubt(self) -> bool:
        return self.pick == "doubt" if self.pick is not None else not self.teacher

    def run(self, algorithm: str) -> str:
        """The run's name."""
        if self.teacher:
            how = "-doubt" if self.by_doubt else ""
            return f"{self.baseline(algorithm)}-teacher{how}-{self.fraction:g}"
        how = "" if self.by_doubt else "-random"
        return self.baseline(algorithm) + ("" if self.fraction == 1.0 else f"-labels{how}-{self.fraction:g}")

    def baseline(self, algorithm: str) -> str:
        """The name of the run it compares with: the same start, every label."""
        return algorithm if self.warm else f"{algorithm}-cold"

    def spec(self, spec: PolicySpec) -> PolicySpec:
        if self.warm:
            return spec
        return spec.model_copy(update={"hyperparameters": {**spec.hyperparameters, "warm_start": False}})


@dataclass(frozen=True)
class Drift:
    """A backend that degrades mid-stream: from frame ``at`` (a share of the stream) on, each of
    ``backend``'s answers is corrupted with probability ``rate`` (a yes/no answer is flipped, any
    other emptied; a detector loses each detection)."""

    backend: str
    rate: float
    at: float = 0.5


class _Degrading:
    """Wraps one backend's calls; corrupts answers from frame ``start`` of the stream on (seeded,
    so runs repeat). Told each frame's position with :meth:`at_frame`."""

    def __init__(self, call: Callable[..., object], rate: float, start: int, seed: int):
        self.call, self.rate, self.start = call, rate, start
        self.rng = np.random.default_rng(seed)
        self.active = False

    def at_frame(self, index: int) -> None:
        self.active = index >= self.start

    def __call__(self, *args: object) -> object:
        answer = self.call(*args)
        if not self.active:
            return answer
        if isinstance(answer, list):  # detections: each lost at the rate
            return [detection for detection in answer if self.rng.random() >= self.rate]
        if self.rng.random() >= self.rate:
            return answer
        text = str(answer)
        if is_yes(text):
            return "no"
        return "yes" if text.strip().lower().startswith("no") else ""


def degrading(backends: BackendRegistry, drift: Drift, frames: int, seed: int) -> tuple[BackendRegistry, _Degrading]:
    """The same backends with ``drift.backend`` answering through a corruption that starts at
    ``drift.at`` of a stream of ``frames`` frames."""
    target = backends[drift.backend]
    switch = _Degrading(getattr(target.model, target.function.value), drift.rate, int(frames * drift.at), seed)
    model = FunctionModel(target.function, switch, f"{target.name} (degrading)")
    swapped = [Backend(b.spec, model) if b.name == drift.backend else b for b in backends.values()]
    return BackendRegistry(swapped), switch


@dataclass(frozen=True)
class ReplaySetup:
    """What every query's replay needs: the backends (already cached), lambdas and policies."""

    backends: BackendRegistry
    images: ImageResolver
    lambdas: tuple[float, ...]
    policies: tuple[str, ...] = LEARNED_ON_PROGRAM
    whole_query: bool = True
    random: bool = True
    seed: int = 42
    hyperparameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per algorithm, hyper-parameters over the benchmark's own (``policy_spec``)."""
    drift: Drift | None = None
    """Binary track, gated policies at each lambda: a run whose backend degrades mid-stream, beside
    the hand-fixed cascade under the same drift."""
    label_plans: tuple[LabelPlan, ...] = ()
    """Gated policies at ``label_lambda``: a run on each of these labels besides the one on every label."""
    label_lambda: float | None = None
    off_policy: bool = True
    """Learned policies at ``label_lambda``: estimate from their logged decisions the static, random
    and other lambdas' runs (``fmprog.off_policy``), each beside its live run."""


def site_backends(program: Program, backends: BackendRegistry) -> dict[str, list[Backend]]:
    """Each call site's candidates, as the router gives them: the backends of its function that can
    see what it asks (``fmprog.program.scope.usable_backends``; all of them where none declares a
    vocabulary)."""
    candidates = {}
    for site in program.call_sites:
        served = backends.for_function(site.function)
        usable = {spec.name for spec in usable_backends(site, [b.spec for b in served])}
        candidates[site.id] = [b for b in served if b.name in usable]
    return candidates


def configurations(program: Program, backends: BackendRegistry) -> list[dict[str, str]]:
    """Every assignment of one of its candidates (``site_backends``) to each routed call site."""
    candidates = site_backends(program, backends)
    choices = [[b.name for b in candidates[site.id]] for site in program.call_sites]
    return [
        {site.id: name for site, name in zip(program.call_sites, combo, strict=True)}
        for combo in itertools.product(*choices)
    ]


def run_all(
    executor: Executor,
    program: Program,
    frames: Sequence[np.ndarray],
    labels: Sequence[str],
    kind: TaskKind,
    configs: Sequence[dict[str, str]],
) -> list[list[Outcome]]:
    """``table[frame][configuration]``: the executor's run of ``program`` under each configuration."""
    table = []
    for frame, label in zip(frames, labels, strict=True):
        row = []
        for config in configs:
            row.append(outcome(executor.run(program, frame, config), kind, label))
        table.append(row)
    return table


def outcome(trace: Trace, kind: TaskKind, label: str) -> Outcome:
    """What one run gave, scored against its label."""
    answer = "" if trace.answer is None else str(trace.answer)
    site_costs: dict[str, float] = {}
    for invocation in trace.invocations:
        site_costs[invocation.site] = site_costs.get(invocation.site, 0.0) + invocation.cost
    return Outcome(
        answer=answer,
        correct=task_loss(kind, answer, label) == 0,
        positive=is_yes(answer),
        cost=trace.cost,
        executed_sites=tuple(trace.executed_sites),
        site_costs=tuple(site_costs.items()),
        backends=tuple(i.backend for i in trace.invocations),
    )


def policy_spec(
    program: Program,
    backends: BackendRegistry,
    lam: float,
    algorithm: str,
    seed: int,
    kind: TaskKind = "binary",
    extra: Mapping[str, Any] | None = None,
) -> PolicySpec:
    """The spec of ``algorithm`` on the program's call sites; ``extra`` hyper-parameters over the
    benchmark's own."""
    candidates = site_backends(program, backends)
    sites = [
        CallSiteSpec(
            id=site.id,
            function=site.function,
            backends=[{"name": b.name, "cost": b.cost} for b in candidates[site.id]],
        )
        for site in program.call_sites
    ]
    if algorithm in GATED:
        hyperparameters: dict = {"kind": kind}  # defaults otherwise: nothing tuned on the tracks
    else:  # the authors' own variant (structured_code) takes the raw task reward, as their code does
        scaled = "reward_scale" in algorithm_class(algorithm).Params.model_fields
        hyperparameters = {"reward_scale": REWARD_SCALE} if scaled else {}
    hyperparameters = {**hyperparameters, **(extra or {})}
    return PolicySpec(sites=sites, lam=lam, algorithm=algorithm, hyperparameters=hyperparameters, seed=seed)


def replay(
    spec: PolicySpec,
    frames: Sequence[np.ndarray],
    labels: Sequence[str],
    kind: TaskKind,
    table: list[list[Outcome]],
    configs: Sequence[dict[str, str]],
    log: list[LoggedRun] | None = None,
) -> list[Outcome]:
    """Stream the frames through a fresh policy: decide, answer, feed the reward back, train. With
    ``log``, each frame's decision and outcome are appended to it, as the router logs them."""
    policy = build_policy(spec)
    index = {tuple(sorted(c.items())): i for i, c in enumerate(configs)}
    functions = {site.id: site.function for site in spec.sites}
    chosen = []
    for i, (frame, label, row) in enumerate(zip(frames, labels, table, strict=True)):
        decision = policy.decide(frame)
        outcome = row[index[tuple(sorted(decision.backends.items()))]]
        if log is not None:  # one invocation per site that ran: what an up-front decision's run depended on
            trace = [
                Invocation(site=site, function=functions[site], backend=decision.backends[site], cost=cost, latency_s=0)
                for site, cost in outcome.site_costs
            ]
            task = task_reward(kind, outcome.answer, label)
            log.append(
                LoggedRun(
                    decision=decision.reply(), trace=trace, cost=outcome.cost, task=task, correct=outcome.correct,
                    positive=is_yes(label), predicted=outcome.positive, seed=i,
                )
            )  # fmt: skip
        feedback = Feedback(
            reward=task_reward(kind, outcome.answer, label),
            executed_sites=list(outcome.executed_sites),
            costs=dict(outcome.site_costs),
        )
        policy.observe(decision, feedback)
        policy.train()
        chosen.append(outcome)
    return chosen


def replay_gated(
    spec: PolicySpec,
    executor: Executor,
    program: Program,
    frames: Sequence[np.ndarray],
    labels: Sequence[str],
    kind: TaskKind,
    policy: Policy | None = None,
    drift: _Degrading | None = None,
    decider: Callable[[SiteGates, dict[str, str]], Decider] = GateDecider,
    plan: LabelPlan = LabelPlan(),
    teacher: Sequence[Outcome] = (),
    log: list[LoggedRun] | None = None,
) -> list[Outcome]:
    """Stream the frames through a fresh gated policy (or ``policy``, built from ``spec``):
    decide (gates), run the program under a ``GateDecider`` (or ``decider(gates, backends)``),
    feed back the reward with the per-invocation records, train. With ``drift`` (the executor's
    degrading backend), it is told each frame's position. With a ``plan`` on fewer labels, only
    the frames ``router.labels.LabelRequests`` asks for are labelled, by the ground truth or, for
    a teacher, by ``teacher[i]`` (the all-largest configuration's outcome, its cost charged). With
    ``log``, each frame's decision, trace and outcome are appended to it, as the router logs them."""
    policy = policy or build_policy(spec)
    rewards = RewardConfig()
    requests = LabelRequests(clock=lambda: 0.0)
    draws = np.random.default_rng(spec.seed)  # a random share
    budget = None if plan.fraction == 1.0 else LabelBudget(fraction=plan.fraction)
    chosen = []
    for i, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        if drift is not None:
            drift.at_frame(i)
        decision = policy.decide(frame)
        trace = executor.run(program, frame, decider(decision.gates or {}, decision.backends))
        result = outcome(trace, kind, label)  # scored against the ground truth
        if log is not None:
            log.append(logged_run(decision, trace, kind, label, seed=i))
        given = label  # the label the policy learns from
        if budget is not None:
            if plan.by_doubt:
                value = label_value(decision.gates, decision.propensities, trace.invocations)
                wanted = requests.wanted("program", budget, value)
            else:
                wanted = bool(draws.random() < plan.fraction)
            if not wanted:
                chosen.append(result)  # no label: nothing to learn from this frame
                continue
            if plan.teacher:
                given = teacher[i].answer
                result = replace(result, teacher_cost=teacher[i].cost)
        feedback = Feedback(
            reward=task_reward(kind, result.answer, given),
            executed_sites=list(result.executed_sites),
            costs=dict(result.site_costs),
            invocations=gate_records(trace.invocations, kind, given, rewards),
        )
        policy.observe(decision, feedback)
        policy.train()
        chosen.append(result)
    return chosen


def logged_run(decision: PolicyDecision, trace: Trace, kind: TaskKind, label: str, seed: int) -> LoggedRun:
    """One frame as the router logs it: the decision, the run's trace, its cost and score."""
    answer = "" if trace.answer is None else str(trace.answer)
    scored = score_answer(kind, answer, label)
    return LoggedRun(
        decision=decision, trace=trace.invocations, cost=trace.cost, task=scored.reward, correct=scored.correct,
        positive=is_yes(label), predicted=is_yes(answer), seed=seed,
    )  # fmt: skip


def run_decider(
    executor: Executor,
    program: Program,
    frames: Sequence[np.ndarray],
    labels: Sequence[str],
    kind: TaskKind,
    decider: Decider,
    drift: _Degrading | None = None,
) -> list[Outcome]:
    """Each frame's outcome under one fixed ``decider`` (told each frame's position, ``drift``)."""
    outcomes = []
    for i, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        if drift is not None:
            drift.at_frame(i)
        outcomes.append(outcome(executor.run(program, frame, decider), kind, label))
    return outcomes


def hindsight_reward(table: list[list[Outcome]], labels: Sequence[str], kind: TaskKind, lam: float) -> np.ndarray:
    """Per frame, the most program reward ``R = task - lambda * cost`` any policy over these
    configurations could have had: the best configuration in hindsight. Regret is measured against
    it (the ``oracle`` run, the cheapest right answer, can score less when lambda prices a right
    answer above its reward)."""
    return np.array(
        [
            max(task_reward(kind, o.answer, label) - lam * o.cost for o in row)
            for row, label in zip(table, labels, strict=True)
        ]
    )


def oracle(table: list[list[Outcome]]) -> list[Outcome]:
    """Per frame, the cheapest configuration that answers correctly (the cheapest one if none does)."""
    picks = []
    for row in table:
        right = [o for o in row if o.correct]
        picks.append(min(right or row, key=lambda o: o.cost))
    return picks


def replay_query(query: TrackQuery, kind: TaskKind, setup: ReplaySetup) -> QueryResult:
    """Every baseline and policy on one query's stream, summed up per run."""
    program, runs, configs, best, off_policy = query_outcomes(query, kind, setup)
    return QueryResult(
        query=query.query,
        type=query.type,
        kind=kind,
        labels=list(query.labels),
        runs={key: RunStats.of(outcomes, kind, query.labels) for key, outcomes in runs.items()},
        configurations=configs,
        sites=[s.id for s in program.call_sites],
        best_frames=best,
        plans={
            (plan.run(algorithm), setup.label_lambda): (algorithm, plan)
            for algorithm in sorted(GATED & set(setup.policies))
            for plan in setup.label_plans
        },
        off_policy=off_policy,
    )


def query_outcomes(
    query: TrackQuery, kind: TaskKind, setup: ReplaySetup
) -> tuple[Program, dict[tuple[str, float | None], list[Outcome]], int, dict[float, np.ndarray], list[OffPolicy]]:
    """Every baseline's and policy's outcome on each frame of one query's stream; also the
    compiled program, its number of configurations, per lambda the hindsight reward, and the
    off-policy estimates."""
    backends = setup.backends
    executor = Executor(backends)
    program = compile_program(query.program)
    monolithic = compile_program(monolithic_program(query.query))
    frames = [setup.images(ref) for ref in query.frames]
    labels = list(query.labels)

    configs = configurations(program, backends)
    table = run_all(executor, program, frames, labels, kind, configs)
    mono_configs = configurations(monolithic, backends)
    mono_table = run_all(executor, monolithic, frames, labels, kind, mono_configs)

    def column(configs_: Sequence[dict[str, str]], table_: list[list[Outcome]], pick: str) -> list[Outcome]:
        costs = {b.name: b.cost for b in backends.values()}
        totals = [sum(costs[name] for name in c.values()) for c in configs_]
        i = (min if pick == "small" else max)(range(len(configs_)), key=totals.__getitem__)
        return [row[i] for row in table_]

    logs: dict[tuple[str, float], tuple[PolicySpec, list[LoggedRun]]] = {}
    runs: dict[tuple[str, float | None], list[Outcome]] = {
        ("static-small", None): column(configs, table, "small"),
        ("static-large", None): column(configs, table, "large"),
        ("monolithic-small", None): column(mono_configs, mono_table, "small"),
        ("monolithic-large", None): column(mono_configs, mono_table, "large"),
        ("oracle", None): oracle(table),
    }
    if setup.random:
        spec = policy_spec(program, backends, 0.0, "random", setup.seed)
        runs[("random", None)] = replay(spec, frames, labels, kind, table, configs)
    if GATED & set(setup.policies):  # the reference lines of deciding each call when it runs
        candidates = site_backends(program, backends)
        detect_large = {
            site.id: (max if site.function == Function.detect else min)(candidates[site.id], key=lambda b: b.cost).name
            for site in program.call_sites
        }
        at = configs.index(detect_large)
        runs[("static-detect-large", None)] = [row[at] for row in table]
        fixed = CascadeDecider.for_backends(backends)
        runs[("cascade-fixed", None)] = run_decider(executor, program, frames, labels, kind, fixed)
        if setup.drift is not None and kind == "binary":
            drifting, switch = degrading(backends, setup.drift, len(frames), setup.seed)
            runs[("cascade-fixed-drift", None)] = run_decider(
                Executor(drifting), program, frames, labels, kind, fixed, drift=switch
            )
    for lam in setup.lambdas:
        for algorithm in setup.policies:
            spec = policy_spec(
                program, backends, lam, algorithm, setup.seed, kind, setup.hyperparameters.get(algorithm)
            )
            if algorithm in GATED:
                log = [] if setup.off_policy and lam == setup.label_lambda else None
                runs[(algorithm, lam)] = replay_gated(spec, executor, program, frames, labels, kind, log=log)
                if log is not None:
                    logs[(algorithm, lam)] = (spec, log)
                for plan in setup.label_plans if lam == setup.label_lambda else ():
                    runs[(plan.run(algorithm), lam)] = replay_gated(
                        plan.spec(spec), executor, program, frames, labels, kind, plan=plan,
                        teacher=runs[("static-large", None)],
                    )  # fmt: skip
            else:
                log = [] if setup.off_policy and lam == setup.label_lambda else None
                runs[(algorithm, lam)] = replay(spec, frames, labels, kind, table, configs, log=log)
                if log is not None:
                    logs[(algorithm, lam)] = (spec, log)
        if setup.drift is not None and kind == "binary":
            for algorithm in sorted(GATED & set(setup.policies)):
                drifting, switch = degrading(backends, setup.drift, len(frames), setup.seed)
                spec = policy_spec(
                    program, backends, lam, algorithm, setup.seed, kind, setup.hyperparameters.get(algorithm)
                )
                runs[(f"{algorithm}-drift", lam)] = replay_gated(
                    spec, Executor(drifting), program, frames, labels, kind, drift=switch
                )
        if setup.whole_query:
            spec = policy_spec(monolithic, backends, lam, "whole_query", setup.seed)
            runs[("whole_query", lam)] = replay(spec, frames, labels, kind, mono_table, mono_configs)
    best = {lam: hindsight_reward(table, labels, kind, lam) for lam in setup.lambdas}
    return program, runs, len(configs), best, estimate_off_policy(logs, runs, kind, setup)


def estimate_off_policy(
    logs: Mapping[tuple[str, float], tuple[PolicySpec, list[LoggedRun]]],
    runs: Mapping[tuple[str, float | None], list[Outcome]],
    kind: TaskKind,
    setup: ReplaySetup,
) -> list[OffPolicy]:
    """Each logged learned run's estimates of the other policies that were run live on the frames:
    the same algorithm at the other lambdas (where its decisions say how they were drawn: gates or
    score spreads), the static programs and random."""
    dearest_detector = max(setup.backends.for_function(Function.detect), key=lambda b: b.cost).name
    statics = [
        (Target(kind="static", backends="cheapest"), ("static-small", None)),
        (Target(kind="static", backends="largest"), ("static-large", None)),
        (Target(kind="static", backends={"detect": dearest_detector}), ("static-detect-large", None)),
        (Target(kind="random"), ("random", None)),
    ]
    estimates = []
    for (algorithm, lam), (spec, log) in logs.items():
        drawn = bool(log) and all(run.decision.gates or run.decision.score_spreads for run in log)
        others = [
            (Target(kind="lambda", lam=other), (algorithm, other)) for other in setup.lambdas if other != lam and drawn
        ]
        targets = [(target, live) for target, live in [*others, *statics] if live in runs]
        evaluations = evaluate([target for target, _ in targets], log, spec.sites, kind, lam)
        estimates += [
            OffPolicy(logged=(algorithm, lam), live=live, evaluation=evaluation)
            for (_, live), evaluation in zip(targets, evaluations, strict=True)
        ]
    return estimates


# -- worker processes -------------------------------------------------------------------------------

_WORKER: dict[str, object] = {}


def load_backends(config: Path, costs: Path | None, functions: set[str] | None = None) -> BackendRegistry:
    """The configuration's backends, loaded in this process, priced by ``costs`` (a backend
    configuration whose backends of the same names give the cost) when given."""
    from fmprog.backends import load_catalog
    from fmprog.backends.base import Backend
    from fmprog.engines import build_engine
    from fmprog.engines.base import local_model

    catalog = load_catalog(config)
    prices = {s.name: s.cost for s in load_catalog(costs).backends} if costs else {}
    missing = sorted(s.name for s in catalog.backends if costs and s.name not in prices)
    if missing:
        raise ValueError(f"the cost table {costs} has no price for backend(s) {', '.join(missing)}")
    backends = []
    for spec in catalog.backends:
        if functions is not None and spec.function.value not in functions:
            continue
        engine = build_engine(spec)
        engine.load()
        priced = spec.model_copy(update={"cost": prices.get(spec.name, spec.cost)})
        backends.append(Backend(priced, local_model(engine)))
    return BackendRegistry(backends)


def worker_init(
    config: Path, costs: Path | None, cache_path: Path | None, images: ImageResolver, **setup: object
) -> None:
    import torch

    torch.set_num_threads(1)
    exit_with_parent()
    cache = OutputCache(cache_path)
    backends = cached_registry(load_backends(config, costs), cache)
    _WORKER["cache"] = cache
    _WORKER["setup"] = ReplaySetup(backends=backends, images=images, **setup)  # type: ignore[arg-type]


def worker_replay(query: TrackQuery, kind: TaskKind) -> tuple[QueryResult, dict[str, tuple[int, int, float]]]:
    cache: OutputCache = _WORKER["cache"]  # type: ignore[assignment]
    result = replay_query(query, kind, _WORKER["setup"])  # type: ignore[arg-type]
    cache.flush()
    stats = {name: (s.hits, s.misses, s.model_s) for name, s in cache.stats.items()}
    cache.stats.clear()
    return result, stats
