"""The ``cascade`` algorithm: gates drawn per frame, learned from per-invocation feedback.

A small synthetic problem, run through the real ``GateDecider``: a detector finds a candidate on
some frames; the cheap VQA never says yes wrongly but misses half the positives on found
candidates, and is as good as the dear one everywhere else. Re-asking the dear VQA therefore pays
only when the cheap one said "no" about a found candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fmprog.contract import CONTEXT_FEATURES, CallSiteSpec, Feedback, InvocationRecord, PolicySpec
from fmprog.program import EarlierOutput, GateDecider, InvocationContext, context_vector, escalation_vector
from fmprog.rewards import score_answer
from policy.algorithms import build_policy, check_spec
from policy.algorithms.cascade import CascadePolicy, reward_sigma
from policy.service import PolicyService
from policy.settings import PolicySettings
from policy.snapshots import policy_bytes

FIND, ASK = "find@3:4", "verify_property@6:12"
COST = {"detect-small": 172.0, "detect-large": 232.0, "vqa-small": 3750.0, "vqa-large": 73400.0}
LAMBDA = 0.004  # re-asking vqa-large costs about 294 reward units; vqa-large first, 279 more than vqa-small


def spec(seed: int = 0, **hyper) -> PolicySpec:
    sites = [
        {"id": FIND, "function": "detect", "backends": [{"name": n, "cost": COST[n]} for n in COST if "detect" in n]},
        {"id": ASK, "function": "vqa", "backends": [{"name": n, "cost": COST[n]} for n in COST if "vqa" in n]},
    ]
    return PolicySpec.model_validate(
        {
            "sites": sites,
            "lambda": LAMBDA,
            "algorithm": "cascade",
            "hyperparameters": {"base_rate": BASE_RATE, "warm_start": False, **hyper},
            "seed": seed,
        }
    )


FRAME = np.zeros((8, 8, 3), np.uint8)
FOUND = 0.6  # frames where the detector finds a candidate
POSITIVE = 0.5  # labels that are yes, on frames with a candidate (none without one)
MISSED = 0.8  # positives on found candidates the cheap VQA misses (it never says yes wrongly)
BASE_RATE = FOUND * POSITIVE


def context(site: str, function: str, index: int, found: bool, earlier=()) -> InvocationContext:
    return InvocationContext(
        site_id=site, function=function, method="find" if function == "detect" else "verify_property",
        index=index, site_calls=0, box=(0, 0, 4, 4) if found or function == "detect" else None,
        area=0.25 if found else (1.0 if function == "detect" else None), score=0.8 if found else None,
        earlier=earlier, sites_left=1 if function == "detect" else 0,
    )  # fmt: skip


def frame_event(policy, rng: np.random.Generator, decision_id: str | None = None):
    """One frame: decide, run the two calls through a GateDecider, build the feedback."""
    decision = policy.decide(FRAME)
    decider = GateDecider(decision.gates, decision.backends)
    found = bool(rng.random() < FOUND)
    positive = found and bool(rng.random() < POSITIVE)
    find = context(FIND, "detect", 0, False)
    detector = decider.decide(find)
    records = [
        InvocationRecord(site=FIND, backend=detector, call=0, features=list(context_vector(find)), cost=COST[detector])
    ]
    earlier = (EarlierOutput(FIND, "detect", detector, boxes=int(found), top_score=0.8 if found else None),)
    ask = context(ASK, "vqa", 1, found, earlier)
    first = decider.decide(ask)
    truth = "yes" if positive else "no"
    cheap = "no" if found and positive and rng.random() < MISSED else truth
    answer = truth if first == "vqa-large" else cheap
    label = truth

    def reward(text: str) -> float:
        return score_answer("binary", text, label).reward

    records.append(
        InvocationRecord(
            site=ASK, backend=first, call=1, features=list(context_vector(ask)), cost=COST[first], reward=reward(answer)
        )
    )
    final = answer
    dearer = decider.escalate(ask, answer)
    if dearer is not None:
        final = truth
        records.append(
            InvocationRecord(
                site=ASK, backend=dearer, call=1, escalated_from=first, cost=COST[dearer], reward=reward(final),
                features=list(escalation_vector(context_vector(ask), answer)),
            )
        )  # fmt: skip
    costs = {FIND: COST[detector], ASK: sum(r.cost for r in records if r.site == ASK)}
    feedback = Feedback(
        decision_id=decision_id, reward=reward(final), executed_sites=[FIND, ASK], costs=costs, invocations=records
    )
    return decision, feedback


def escalation_cases() -> dict[str, tuple[float, ...]]:
    found = context(ASK, "vqa", 1, True, (EarlierOutput(FIND, "detect", "detect-large", boxes=1, top_score=0.8),))
    whole = context(ASK, "vqa", 1, False, (EarlierOutput(FIND, "detect", "detect-large", boxes=0),))
    return {
        "no_on_found": escalation_vector(context_vector(found), "no"),
        "yes_on_found": escalation_vector(context_vector(found), "yes"),
        "no_unfound": escalation_vector(context_vector(whole), "no"),
    }


def escalation_rates(policy: CascadePolicy, draws: int = 200) -> dict[str, float]:
    """How often fresh draws of the escalation gate re-ask, per kind of first answer."""
    cases = escalation_cases()
    counts = dict.fromkeys(cases, 0)
    for _ in range(draws):
        gate = policy.decide(FRAME).gates[ASK]
        for name, z in cases.items():
            counts[name] += float(np.dot(gate.escalation, z)) > 0
    return {name: count / draws for name, count in counts.items()}


def test_the_reply_carries_a_gate_per_site_that_fits_the_contract():
    policy = build_policy(spec())
    decision = policy.decide(FRAME)
    assert set(decision.gates) == {FIND, ASK}
    find = decision.gates[FIND]
    assert set(find.choice) == {"detect-small", "detect-large"} and find.escalate_to is None
    # the dearest VQA is asked only as an escalation
    ask = decision.gates[ASK]
    assert set(ask.choice) == {"vqa-small"} and ask.escalate_to == "vqa-large"
    assert len(ask.escalation) > len(CONTEXT_FEATURES)
    assert decision.reply().gates == decision.gates
    assert decision.backends == {FIND: decision.backends[FIND], ASK: "vqa-small"}


def test_the_prior_explores_both_ways_before_any_data():
    """A fresh gate (no shipped prior, nothing shared) re-asks where a draw from the base prior
    beats the known cost of the dearer call: ``2 sigma w.z ~ N(0, 4 nu^2 sigma^2 |z|^2 / (reg d))``
    against ``lambda * cost``, at odds between 1/2 (lambda 0) and 0 (plain Thompson, ``nu`` 1,
    here; the default's narrower draws re-ask less)."""
    from statistics import NormalDist

    policy = build_policy(spec(seed=1, nu=1.0))
    rates = escalation_rates(policy, draws=400)
    sigma, d = policy.sigma, len(escalation_cases()["no_on_found"])
    for name, z in escalation_cases().items():
        spread = 2 * sigma * float(np.linalg.norm(z)) / np.sqrt(d)
        expected = NormalDist().cdf(-LAMBDA * COST["vqa-large"] / spread)
        assert 0.05 < expected < 0.45 and abs(rates[name] - expected) < 0.08, (name, rates[name], expected)
    free = escalation_rates(build_policy(spec(seed=1).model_copy(update={"lam": 0.0})), draws=400)
    assert all(0.4 < rate < 0.6 for rate in free.values()), free


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_it_learns_to_escalate_only_a_no_on_a_found_candidate(seed):
    """Re-asking pays about +190 on "no" about a found candidate and costs 294 elsewhere (the rates
    start near 1/2 everywhere: see the test above)."""
    policy = build_policy(spec(seed=seed))
    rng = np.random.default_rng(100 + seed)
    for _ in range(600):
        decision, feedback = frame_event(policy, rng)
        policy.observe(decision, feedback)
    rates = escalation_rates(policy)
    assert rates["no_on_found"] > 0.9, rates
    assert rates["yes_on_found"] < 0.35 and rates["no_unfound"] < 0.15, rates


def test_the_reward_scale_comes_from_the_reward_table():
    params = CascadePolicy.Params()
    assert reward_sigma(params) == pytest.approx(np.sqrt(0.1 * 550**2 + 0.9 * 50.5**2))
    assert reward_sigma(CascadePolicy.Params(kind="open")) == 100.0
    assert reward_sigma(CascadePolicy.Params(rewards={"scheme": "loss"})) == 0.5
    with pytest.raises(ValueError, match="base_rate"):
        check_spec(spec(base_rate=1.5))


def test_feedback_naming_a_backend_outside_the_site_is_refused():
    policy = build_policy(spec())
    decision = policy.decide(FRAME)
    record = InvocationRecord(site=FIND, backend="vqa-large", call=0, features=[0.0] * len(CONTEXT_FEATURES), cost=1)
    bad = Feedback(reward=1.0, executed_sites=[FIND], costs={FIND: 1.0}, invocations=[record])
    with pytest.raises(ValueError, match="not a candidate"):
        policy.observe(decision, bad)


def test_a_crash_loses_no_acknowledged_feedback(tmp_path):
    """Killed without close: the snapshot predates the feedback, replayed from the log into the
    same posterior the running policy had."""
    running, again = fed_and_restarted(tmp_path / "state", snapshot_every=1000, events=40, seed=7)
    before, after = running._slot("p").policy, again._slot("p").policy
    assert after.observed == before.observed == 40
    assert after.baseline == pytest.approx(before.baseline)
    for site in before.choice:
        np.testing.assert_allclose(after.choice[site].theta, before.choice[site].theta)
    np.testing.assert_allclose(after.escalation[ASK].a_inv, before.escalation[ASK].a_inv)


def test_a_new_program_starts_from_what_earlier_programs_learned(tmp_path):
    """The service pools every program's evidence per model key: a program registered after
    another has learned starts with its escalation gate where the other's ended (its intercept
    widened), and learns on; with ``share`` off it starts from the base prior."""
    service = PolicyService(PolicySettings(state_dir=tmp_path / "state"))
    service.restore()
    service.put("first", spec(seed=3))
    feed(service, "first", 600, seed=11)
    learned = escalation_rates(service._slot("first").policy)
    service.put("second", spec(seed=4))
    second = service._slot("second").policy
    assert second.observed == 0
    started = escalation_rates(second)
    assert started["no_on_found"] > 0.8 and started["no_unfound"] < 0.25, (learned, started)
    service.put("alone", spec(seed=4, share=False))
    alone = escalation_rates(service._slot("alone").policy)
    assert alone["no_on_found"] < 0.6, alone
    # the pool holds the first program's own evidence only (the second has seen nothing)
    key = service._slot("first").policy.keys[ASK, "escalation"]
    assert service._pooled_evidence()[key].n == service._slot("first").policy.own[key].n > 0


def test_evidence_survives_a_snapshot_and_pools_after_a_restart(tmp_path):
    running, again = fed_and_restarted(tmp_path / "state", snapshot_every=10, events=25, seed=8)
    before, after = running._pooled_evidence(), again._pooled_evidence()
    assert set(before) == set(after) and before
    for key in before:
        assert after[key].n == before[key].n
        np.testing.assert_allclose(after[key].xtx, before[key].xtx)
        np.testing.assert_allclose(after[key].xty, before[key].xty)


def test_a_prior_built_over_other_features_is_refused():
    from policy.algorithms.cascade import PRIOR_FEATURES
    from policy.algorithms.evidence import Evidence, dump_prior, load_prior

    models = {"k": Evidence(np.eye(2), np.ones(2), 3)}
    text = dump_prior(models, {"choice": ["bias", "x"]}, "test", {"vqa": ["a", "b"]})
    prior = load_prior(text, {"choice": ["bias", "x"]}, "p")
    assert prior.models["k"].n == 3 and prior.backends == {"vqa": ("a", "b")} and prior.about == "test"
    assert prior.built_for("vqa", ["b", "a"]) and not prior.built_for("vqa", ["a", "c"])
    with pytest.raises(ValueError, match="rebuild"):
        load_prior(text, dict(PRIOR_FEATURES))


def test_a_backend_role_is_its_rank_by_cost():
    from policy.algorithms.cascade import CascadeParams, backend_role, role_key

    backends = [{"name": n, "cost": c} for n, c in (("z", 5), ("a", 1), ("m", 5))]
    site = CallSiteSpec.model_validate({"id": FIND, "function": "detect", "backends": backends})
    assert [backend_role(site, name) for name in ("a", "m", "z")] == ["cheapest", "rank-2", "dearest"]
    params = CascadeParams(kind="open")
    assert role_key(params, site, "choice", "m") == "open:authors/detect/3/choice/rank-2"


def shipped_prior_site(names: dict[str, float]) -> PolicySpec:
    """A binary program with one detect site over backends of these names and costs, warm."""
    sites = [{"id": FIND, "function": "detect", "backends": [{"name": n, "cost": c} for n, c in names.items()]}]
    return PolicySpec.model_validate(
        {"sites": sites, "lambda": 0.001, "algorithm": "cascade", "seed": 2, "hyperparameters": {"kind": "binary"}}
    )


def test_backends_of_other_names_start_from_the_prior_by_role(caplog):
    """The shipped prior is keyed by role: the zoo's detectors find the prior built with them,
    other detectors (a production configuration) the same evidence by cost rank, a site of three
    detectors none, which the policy says at start, as it reports where each model started."""
    zoo = build_policy(shipped_prior_site({"detect-small": 172.0, "detect-large": 232.0}))
    other = build_policy(shipped_prior_site({"yolo-n": 8.7, "yolo-x": 194.0}))
    assert {use.matched for use in zoo.prior_uses()} == {"backends"}
    assert {use.matched for use in other.prior_uses()} == {"role"}
    for name, renamed in (("detect-small", "yolo-n"), ("detect-large", "yolo-x")):
        np.testing.assert_allclose(
            other.choice[FIND].theta[other.spec.sites[0].backend_names.index(renamed)],
            zoo.choice[FIND].theta[zoo.spec.sites[0].backend_names.index(name)],
        )
    assert "no shipped prior" not in caplog.text
    three = build_policy(shipped_prior_site({"a": 1.0, "b": 2.0, "c": 3.0}))
    uses = {use.model: use for use in three.prior_uses()}
    assert uses["choice:b"].matched == "none" and uses["choice:b"].key == "binary:authors/detect/3/choice/rank-2"
    assert "no shipped prior holds 3 of the 3 models" in caplog.text
    np.testing.assert_allclose(three.choice[FIND].theta, 0.0)
    cold = build_policy(
        shipped_prior_site({"a": 1.0, "b": 2.0}).model_copy(update={"hyperparameters": {"warm_start": False}})
    )
    assert cold.prior_uses() == []


def test_each_default_configuration_starts_warm(caplog):
    """The zoo's backends find the prior built with them; the real-image configuration's, of
    other names, the same prior by role: every model of a detect-then-ask program is warm."""
    zoo = {"detect": {"detect-small": 172.0, "detect-large": 232.0}, "vqa": {"vqa-small": 3750.0, "vqa-large": 73400.0}}
    real = {
        "detect": {"detect-yolo320": 1646.0, "detect-yolo608": 7590.0},
        "vqa": {"vqa-lite0": 797.0, "vqa-lite2": 1667.0},
    }
    for backends, matched in ((zoo, "backends"), (real, "role")):
        sites = [
            {
                "id": site,
                "function": function,
                "backends": [{"name": n, "cost": c} for n, c in backends[function].items()],
            }
            for site, function in ((FIND, "detect"), (ASK, "vqa"))
        ]
        policy = build_policy(
            PolicySpec.model_validate(
                {"sites": sites, "lambda": 0.001, "algorithm": "cascade", "hyperparameters": {"kind": "open"}}
            )
        )
        detectors, (cheap_vqa, _) = list(backends["detect"]), list(backends["vqa"])
        uses = policy.prior_uses()
        assert [use.model for use in uses] == [
            f"choice:{detectors[0]}",
            f"choice:{detectors[1]}",
            f"choice:{cheap_vqa}",
            "escalation",
        ]
        assert {(use.matched, tuple(use.priors)) for use in uses} == {(matched, ("cascade",))}
    assert "no shipped prior" not in caplog.text


def test_the_service_reports_where_a_policy_started(tmp_path):
    service = PolicyService(PolicySettings(state_dir=tmp_path / "state"))
    service.restore()
    info = service.put("p", shipped_prior_site({"yolo-n": 8.7, "yolo-x": 194.0}))
    assert [(use.model, use.matched, use.priors) for use in info.prior] == [
        ("choice:yolo-n", "role", ["cascade"]),
        ("choice:yolo-x", "role", ["cascade"]),
    ]


def feed(service: PolicyService, program_id: str, events: int, seed: int) -> None:
    """``events`` frames through the service: decide, run the synthetic program, feed back."""
    rng = np.random.default_rng(seed)
    for i in range(events):
        decision = service.decide(program_id, f"d{i}", FRAME)
        _, feedback = frame_event(_Replier(decision), rng, decision_id=f"d{i}")
        service.feedback(program_id, feedback)


def fed_and_restarted(state: Path, snapshot_every: int, events: int, seed: int) -> tuple[PolicyService, PolicyService]:
    """A service whose program "p" took ``events`` frames (snapshotting every ``snapshot_every``
    observations), left running without close, and a second service restored from its state."""
    running = PolicyService(PolicySettings(state_dir=state, snapshot_every=snapshot_every))
    running.restore()
    running.put("p", spec(seed=5))
    feed(running, "p", events, seed=seed)
    again = PolicyService(PolicySettings(state_dir=state))
    again.restore()
    return running, again


class _Replier:
    """Hands frame_event the decision the service already made."""

    def __init__(self, decision):
        self.decision = decision

    def decide(self, frame):
        return self.decision


def test_the_shipped_prior_starts_a_binary_detector_on_the_dear_detector():
    """``policy/priors/cascade.json`` (built from the zoo's held-out scenes) matches today's
    features, and a fresh binary program with the zoo's detectors draws detect-large first on most
    frames at lambda 0.001 (the prior saw it find the positives detect-small misses)."""
    from policy.algorithms.cascade import PRIOR_FEATURES
    from policy.algorithms.evidence import shipped_priors

    zoo = next(prior for prior in shipped_priors("cascade", PRIOR_FEATURES) if prior.name == "cascade")
    assert "binary:authors/detect/2/choice/dearest" in zoo.models
    assert zoo.backends["detect"] == ("detect-small", "detect-large")
    sites = [
        {"id": FIND, "function": "detect", "backends": [{"name": n, "cost": COST[n]} for n in COST if "detect" in n]}
    ]
    shaped = {"sites": sites, "lambda": 0.001, "algorithm": "cascade", "seed": 2}
    warm = build_policy(PolicySpec.model_validate({**shaped, "hyperparameters": {"kind": "binary"}}))
    cold = build_policy(
        PolicySpec.model_validate({**shaped, "hyperparameters": {"kind": "binary", "warm_start": False}})
    )
    find = context(FIND, "detect", 0, False)

    def share_large(policy) -> float:
        picks = [GateDecider(policy.decide(FRAME).gates, {}).decide(find) for _ in range(200)]
        return picks.count("detect-large") / len(picks)

    assert share_large(warm) > 0.8 and share_large(cold) < 0.7


def test_a_snapshot_this_version_cannot_read_is_rebuilt_from_the_whole_log(tmp_path):
    """A snapshot whose models have another shape (written by another version) is set aside: the
    policy is rebuilt from its spec and every logged feedback event, so nothing learned is lost."""
    import torch

    settings = PolicySettings(state_dir=tmp_path / "state", snapshot_every=5)
    running = PolicyService(settings)
    running.restore()
    running.put("p", spec(seed=6))
    feed(running, "p", 12, seed=9)
    running.train_once()  # snapshots
    policy = running._slot("p").policy
    state = policy.state_dict()
    state["choice"][FIND]["a_inv"] = torch.zeros((2, 3, 3), dtype=torch.float64)  # a shape of another version
    running.state.write_snapshot("p", policy_bytes(policy, state), running._slot("p").seq)
    again = PolicyService(PolicySettings(state_dir=tmp_path / "state"))
    assert again.restore() == 1
    after = again._slot("p").policy
    assert after.observed == policy.observed == 12
    for site in policy.choice:
        np.testing.assert_allclose(after.choice[site].theta, policy.choice[site].theta)


def test_each_gate_carries_the_posterior_its_weights_are_drawn_from():
    """The spread in a reply (``GateSpread``) is what the draws scatter by: over many frames the
    drawn scores at a vector average the spread's mean score and vary by its variance."""
    policy = build_policy(spec(seed=3))
    rng = np.random.default_rng(7)
    for _ in range(150):  # a posterior shaped by data, not the isotropic prior
        policy.observe(*frame_event(policy, rng))
    find_x = context_vector(context(FIND, "detect", 0, False))
    no_on_found = escalation_cases()["no_on_found"]
    draws = [policy.decide(FRAME).gates for _ in range(600)]
    large = draws[0][FIND].choice_spread["detect-large"]
    checks = [
        ([float(np.dot(g[FIND].choice["detect-large"], find_x)) for g in draws], large, find_x),
        ([float(np.dot(g[ASK].escalation, no_on_found)) for g in draws], draws[0][ASK].escalation_spread, no_on_found),
    ]
    for scores, spread, x in checks:
        assert spread is not None
        sd = np.sqrt(spread.variance(x))
        assert sd > 0
        assert abs(np.mean(scores) - spread.mean_score(x)) < 4 * sd / np.sqrt(len(scores))
        assert 0.85 < np.std(scores) / sd < 1.15
