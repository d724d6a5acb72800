"""Off-policy evaluation (``fmprog.off_policy``) against the real cascade policy and executor: a
run's probability against how often the policy actually makes that run, and the estimates of a
policy at another lambda and of static policies against live runs of those policies on the same
frames."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fmprog.contract import CONTEXT_FEATURES, Feedback, GateSpread, PolicySpec, SiteGate
from fmprog.off_policy import (
    LoggedRun,
    RunEvents,
    Target,
    evaluate,
    gated_probabilities,
    run_events,
    run_probability,
)
from fmprog.program import Executor, GateDecider, compile_program
from fmprog.rewards import RewardConfig, is_yes, score_answer
from policy.algorithms import build_policy
from router.gating import gate_records
from tests.fakes import CANDIDATE, COSTS, Zoo, box

FRAME = np.zeros((8, 8, 3), np.uint8)
PROGRAM = compile_program(CANDIDATE)


def spec(algorithm: str, lam: float, seed: int = 3) -> PolicySpec:
    sites = [
        {
            "id": site.id,
            "function": site.function.value,
            "backends": [{"name": n, "cost": c} for n, c in COSTS.items() if n.startswith(site.function.value)],
        }
        for site in PROGRAM.call_sites
    ]
    # plain Thompson draws (nu 1, not the default's narrower ones): a logger that explores
    hyper = {"base_rate": 0.3, "warm_start": False, "nu": 1.0} if algorithm == "cascade" else {}
    return PolicySpec.model_validate(
        {"sites": sites, "lambda": lam, "algorithm": algorithm, "hyperparameters": hyper, "seed": seed}
    )


class World:
    """Frames the fake zoo answers: a red car on some, found by the dear detector always and by the
    cheap one on most; the cheap VQA misses most red cars, the dear one none."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.zoo = Zoo()
        self.executor = Executor(self.zoo.registry())

    def frame(self) -> tuple[str, dict[str, object]]:
        car, red, cheap_sees = (self.rng.random() < p for p in (0.6, 0.5, 0.7))
        label = "yes" if car and red else "no"
        misses = self.rng.random() < 0.8
        return label, {"car": car, "cheap_sees": cheap_sees, "misses": misses, "red": car and red}

    def set(self, state: dict[str, object]) -> None:
        found = [box(0, 0, 4, 4, 0.8)] if state["car"] else []
        self.zoo.models["detect-large"].boxes = {"car": found}
        self.zoo.models["detect-small"].boxes = {"car": found if state["cheap_sees"] else []}
        truth = "yes" if state["red"] else "no"
        self.zoo.models["vqa-large"].answer = lambda image, question: truth
        self.zoo.models["vqa-small"].answer = lambda image, question: "no" if state["misses"] else truth

    def run(self, decision, state, label: str, seed: int = 0) -> LoggedRun:
        self.set(state)
        gated = decision.gates is not None
        trace = self.executor.run(
            PROGRAM, FRAME, GateDecider(decision.gates, decision.backends) if gated else decision.backends
        )
        answer = "" if trace.answer is None else str(trace.answer)
        scored = score_answer("binary", answer, label)
        return LoggedRun(
            decision=decision, trace=trace.invocations, cost=trace.cost, task=scored.reward, correct=scored.correct,
            positive=is_yes(label), predicted=is_yes(answer), seed=seed,
        )  # fmt: skip


def learned_cascade(lam: float, frames: int = 150):
    """A cascade policy that has learned from ``frames`` labelled frames (its posteriors narrowed
    but not settled), and the world that taught it."""
    world = World(seed=11)
    policy = build_policy(spec("cascade", lam))
    for _ in range(frames):
        label, state = world.frame()
        decision = policy.decide(FRAME)
        run = world.run(decision, state, label)
        feedback = Feedback(
            reward=run.task,
            executed_sites=sorted({i.site for i in run.trace}),
            costs=dict(Counter({i.site: 0.0 for i in run.trace}) | _site_costs(run)),
            invocations=gate_records(run.trace, "binary", label, RewardConfig()),
        )
        policy.observe(decision, feedback)
    return policy, world


def _site_costs(run: LoggedRun) -> dict[str, float]:
    costs: dict[str, float] = {}
    for invocation in run.trace:
        costs[invocation.site] = costs.get(invocation.site, 0.0) + invocation.cost
    return costs


def signature(run: LoggedRun) -> tuple:
    events = run_events(run.decision, run.trace)
    return (
        tuple(sorted((site, tuple(b for _, b in calls)) for site, calls in events.choices.items())),
        tuple(sorted((site, tuple(r for _, r in calls)) for site, calls in events.escalations.items())),
    )


def test_a_gated_runs_probability_is_how_often_the_policy_makes_it():
    policy, world = learned_cascade(lam=0.004)
    label, state = "no", {"car": True, "cheap_sees": True, "misses": True, "red": False}
    runs = [world.run(policy.decide(FRAME), state, label, seed=i) for i in range(3000)]
    counts = Counter(signature(run) for run in runs)
    assert len(counts) > 1, "the policy must still explore for the test to mean anything"
    for sig, count in counts.most_common(3):
        run = next(r for r in runs if signature(r) == sig)
        probability = run_probability(run.decision, run.trace, seed=0, draws=20_000)
        frequency = count / len(runs)
        error = np.sqrt(frequency * (1 - frequency) / len(runs)) + np.sqrt(frequency / 20_000)
        assert probability == pytest.approx(frequency, abs=5 * error + 0.005), sig


def test_the_same_lambda_weighs_every_run_one():
    policy, world = learned_cascade(lam=0.004)
    runs = []
    for i in range(200):
        label, state = world.frame()
        runs.append(world.run(policy.decide(FRAME), state, label, seed=i))
    [result] = evaluate(
        [Target(kind="lambda", lam=0.004)], runs, spec("cascade", 0.004).sites, "binary", 0.004, draws=512
    )
    assert result.matched == result.runs == 200 and result.max_weight == pytest.approx(1.0)
    for estimate in (result.ips, result.snips, result.dr):
        assert estimate.cost_per_frame == pytest.approx(result.logged.cost_per_frame)
        assert estimate.f1 == pytest.approx(result.logged.f1)


def frozen_run(policy, world: World, frames) -> list[LoggedRun]:
    return [world.run(policy.decide(FRAME), state, label, seed=i) for i, (label, state) in enumerate(frames)]


@pytest.mark.parametrize("target_lambda", [0.001, 0.02])
def test_another_lambda_is_estimated_within_its_error_of_a_live_run(target_lambda):
    # a policy still unsure where re-asking pays: a gate that has settled makes the other lambda's
    # runs too rarely for any weighting to see them (the mean weight says so; see below)
    logging, world = learned_cascade(lam=0.004, frames=40)
    frames = [world.frame() for _ in range(1500)]
    logged = frozen_run(logging, world, frames)
    # the same posteriors at the target's lambda, run live on the same frames
    live_policy = build_policy(spec("cascade", target_lambda, seed=99))
    live_policy.load_state_dict(logging.state_dict())
    live = frozen_run(live_policy, world, frames)
    live_cost = np.mean([r.cost for r in live])
    live_accuracy = np.mean([r.correct for r in live])
    assert abs(live_cost - np.mean([r.cost for r in logged])) > 0.05 * live_cost, "lambda must matter here"
    [result] = evaluate(
        [Target(kind="lambda", lam=target_lambda)], logged, spec("cascade", 0.004).sites, "binary", 0.004
    )
    assert result.effective_runs > 50 and result.mean_weight == pytest.approx(1.0, abs=0.1)
    assert result.snips.cost_per_frame == pytest.approx(live_cost, rel=0.1)
    assert result.snips.accuracy == pytest.approx(live_accuracy, abs=0.03)
    assert result.dr.cost_per_frame == pytest.approx(live_cost, rel=0.1)
    assert result.ips.cost_per_frame == pytest.approx(live_cost, rel=0.2)


def test_a_settled_gate_leaves_another_lambdas_runs_unseen_and_the_mean_weight_says_so():
    logging, world = learned_cascade(lam=0.004, frames=150)
    frames = [world.frame() for _ in range(1500)]
    [result] = evaluate(
        [Target(kind="lambda", lam=0.02)],
        frozen_run(logging, world, frames),
        spec("cascade", 0.004).sites,
        "binary",
        0.004,
    )
    assert result.mean_weight < 0.95


@pytest.mark.parametrize("target_lambda", [2e-5, 1e-3])
def test_another_lambda_of_structured_is_estimated_from_its_score_spreads(target_lambda):
    def structured(lam: float, seed: int = 3) -> PolicySpec:
        base = spec("structured", lam, seed)
        return base.model_copy(update={"hyperparameters": {"reward_scale": 100.0, "train_every": 8}})

    world = World(seed=4)
    logging = build_policy(structured(1e-4))
    for _ in range(64):
        label, state = world.frame()
        decision = logging.decide(FRAME)
        run = world.run(decision, state, label)
        executed = sorted({i.site for i in run.trace})
        logging.observe(decision, Feedback(reward=run.task, executed_sites=executed, costs=_site_costs(run)))
        logging.train()
    frames = [world.frame() for _ in range(1500)]
    logged = frozen_run(logging, world, frames)
    assert all(r.decision.score_spreads for r in logged)
    # the same networks at the target's lambda (structured adds the known cost term when it decides)
    live_policy = build_policy(structured(target_lambda, seed=9))
    live_policy.load_state_dict(logging.state_dict())
    live = frozen_run(live_policy, world, frames)
    live_cost = np.mean([r.cost for r in live])
    assert abs(live_cost - np.mean([r.cost for r in logged])) > 0.1 * live_cost, "lambda must matter here"
    [result] = evaluate([Target(kind="lambda", lam=target_lambda)], logged, structured(1e-4).sites, "binary", 1e-4)
    assert result.mean_weight == pytest.approx(1.0, abs=0.1)
    assert result.snips.cost_per_frame == pytest.approx(live_cost, rel=0.1)
    assert result.snips.accuracy == pytest.approx(np.mean([r.correct for r in live]), abs=0.04)


def test_static_and_random_targets_from_a_random_policys_log():
    world = World(seed=5)
    frames = [world.frame() for _ in range(2000)]
    policy = build_policy(spec("random", 0.0))
    logged = frozen_run(policy, world, frames)
    assert all(
        run_probability(r.decision, r.trace, 0) == pytest.approx(0.25 if len(r.trace) == 2 else 0.5) for r in logged
    )
    sites = spec("random", 0.0).sites
    for which in ("cheapest", "largest"):
        assignment = Target(kind="static", backends=which).assignment(sites)
        live = [World.run(world, _Fixed(assignment), state, label) for label, state in frames]
        [result] = evaluate([Target(kind="static", backends=which)], logged, sites, "binary", 0.0)
        assert result.uncovered == []
        assert result.snips.cost_per_frame == pytest.approx(np.mean([r.cost for r in live]), rel=0.05)
        assert result.snips.accuracy == pytest.approx(np.mean([r.correct for r in live]), abs=0.04)
        assert result.ips.accuracy == pytest.approx(np.mean([r.correct for r in live]), abs=0.15)
    [same] = evaluate([Target(kind="random")], logged, sites, "binary", 0.0)
    assert same.max_weight == pytest.approx(1.0) and same.ips.cost_per_frame == pytest.approx(
        same.logged.cost_per_frame
    )


class _Fixed:
    """An up-front decision without propensities: the live run of a static target."""

    def __init__(self, backends: dict[str, str]):
        self.backends, self.gates = backends, None


def test_what_the_logs_cannot_support_is_named():
    policy, world = learned_cascade(lam=0.004, frames=20)
    runs = frozen_run(policy, world, [world.frame() for _ in range(30)])
    sites = spec("cascade", 0.004).sites
    [largest] = evaluate([Target(kind="static", backends="largest")], runs, sites, "binary", 0.004)
    assert any("vqa-large" in gap for gap in largest.uncovered)  # asked only as an escalation, never first
    with pytest.raises(ValueError, match="not a candidate"):
        evaluate([Target(kind="static", backends={"vqa": "llm-large"})], runs, sites, "binary", 0.004)
    with pytest.raises(ValueError, match="neither a call site nor a function"):
        evaluate([Target(kind="static", backends={"ocr": "x"})], runs, sites, "binary", 0.004)
    upfront = frozen_run(build_policy(spec("random", 0.0)), world, [world.frame() for _ in range(5)])
    with pytest.raises(ValueError, match="only from decisions that say how they were drawn"):
        evaluate([Target(kind="lambda", lam=0.1)], upfront, sites, "binary", 0.0)
    with pytest.raises(ValueError, match="lambda is given with kind lambda"):
        Target(kind="lambda")
    with pytest.raises(ValueError, match="backends is given with kind static"):
        Target(kind="random", backends="largest")


def random_gate(rng: np.random.Generator, backends: list[str]) -> SiteGate:
    """A first-choice gate over ``backends`` with random means and spreads over CHOICE features."""
    over = [0, 2, 3, 4]
    k = len(over)

    def spread() -> GateSpread:
        root = np.tril(rng.normal(0, 0.6, (k, k)))
        mean = np.zeros(len(CONTEXT_FEATURES))
        mean[over] = rng.normal(0, 0.5, k)
        return GateSpread(mean=mean.tolist(), over=over, root=root[np.tril_indices(k)].tolist())

    spreads = {name: spread() for name in backends}
    return SiteGate(choice={name: s.mean for name, s in spreads.items()}, choice_spread=spreads)


@pytest.mark.parametrize(("backends", "calls"), [(2, 1), (2, 3), (3, 1), (3, 2)])
def test_a_gates_probability_against_draws_of_its_weights(backends, calls):
    rng = np.random.default_rng(backends * 10 + calls)
    names = [f"detect-{i}" for i in range(backends)]
    gate = random_gate(rng, names)
    vectors = [tuple(rng.random(len(CONTEXT_FEATURES))) for _ in range(calls)]
    # draw the weights as the policy does, decide every call with them, count each run
    draws, runs = 20_000, Counter()
    for _ in range(draws):
        weights = {}
        for name, spread in gate.choice_spread.items():
            k = len(spread.over)
            root = np.zeros((k, k))
            root[np.tril_indices(k)] = spread.root
            w = np.asarray(spread.mean)
            w[spread.over] += root @ rng.standard_normal(k)
            weights[name] = w
        runs[
            tuple(max(names, key=lambda n, x=x: (float(weights[n] @ np.asarray(x)), -names.index(n))) for x in vectors)
        ] += 1
    for run, count in runs.most_common(3):
        events = RunEvents(choices={"s": list(zip(vectors, run, strict=True))})
        (probability,) = gated_probabilities({"s": gate}, events, seed=1, draws=10_000)
        frequency = count / draws
        assert probability == pytest.approx(frequency, abs=5 * np.sqrt(frequency / draws + frequency / 10_000) + 0.002)
