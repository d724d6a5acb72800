from __future__ import annotations

import io

import numpy as np
import pytest

from fmprog.contract import Feedback
from policy.algorithms import ALGORITHMS, algorithm_class, build_policy, check_spec
from policy.snapshots import load_policy, save_policy
from tests.policy.conftest import SITE, SITES, contextual_run, make_spec, one_site_policy

IMPLEMENTED = sorted(ALGORITHMS)


def feed(policy, frames, rounds: int = 3) -> None:
    """Decide on each frame and feed back a loss that depends on the frame and the choice."""
    for r in range(rounds):
        for i, frame in enumerate(frames):
            decision = policy.decide(frame)
            executed = [s["id"] for s in SITES if (i + r) % 3 or s["id"] == SITE]
            costs = {
                s: {b["name"]: b["cost"] for site in SITES for b in site["backends"]}[decision.backends[s]]
                for s in executed
            }
            policy.observe(decision, Feedback(loss=float(i % 2), executed_sites=executed, costs=costs))
            policy.train()


CHEAP = {
    "structured": {"train_every": 4},
    "structured_code": {"input_size": 64, "width": 4, "train_every": 4, "epochs": 2, "batch_size": 2},
}


def small_hyper(algorithm: str) -> dict:
    """Hyper-parameters that make training happen within a few events and keep the networks small."""
    return CHEAP.get(algorithm, {})


@pytest.mark.parametrize("algorithm", IMPLEMENTED)
def test_decides_only_allowed_backends(algorithm, frames):
    policy = build_policy(make_spec(algorithm, **small_hyper(algorithm)))
    feed(policy, frames, rounds=1)
    allowed = {s["id"]: {b["name"] for b in s["backends"]} for s in SITES}
    for frame in frames:
        decision = policy.decide(frame)
        assert decision.algorithm == algorithm
        assert set(decision.backends) == set(allowed)
        assert all(decision.backends[s] in allowed[s] for s in allowed)


@pytest.mark.parametrize("algorithm", IMPLEMENTED)
def test_same_seed_same_decisions(algorithm, frames):
    runs = []
    for _ in range(2):
        policy = build_policy(make_spec(algorithm, seed=7, **small_hyper(algorithm)))
        feed(policy, frames, rounds=2)
        runs.append([(d.backends, d.scores) for d in map(policy.decide, frames)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("algorithm", IMPLEMENTED)
def test_state_round_trip_gives_identical_decisions(algorithm, frames):
    policy = build_policy(make_spec(algorithm, seed=3, **small_hyper(algorithm)))
    feed(policy, frames, rounds=2)
    policy.decide(frames[0])  # a pending (buffered) sample may remain; it must survive too
    buffer = io.BytesIO()
    save_policy(policy, buffer)
    buffer.seek(0)
    restored = load_policy(buffer)
    assert type(restored) is type(policy) and restored.observed == policy.observed
    for p in (policy, restored):  # the same future, feedback and training included
        feed(p, frames[:4], rounds=1)
    assert [(d.backends, d.scores) for d in map(policy.decide, frames)] == [
        (d.backends, d.scores) for d in map(restored.decide, frames)
    ]


def test_rejects_bad_frames_and_foreign_feedback(frames):
    policy = build_policy(make_spec("fast"))
    with pytest.raises(ValueError, match="H x W x 3"):
        policy.decide(np.zeros((4, 4)))
    decision = policy.decide(frames[0])
    with pytest.raises(ValueError, match="unknown call site"):
        policy.observe(decision, Feedback(loss=0, executed_sites=["nope@1:1"]))
    other = build_policy(make_spec("random")).decide(frames[0])
    with pytest.raises(ValueError, match="made by 'random'"):
        policy.observe(other, Feedback(loss=0))


def test_static_modes(frames):
    cheapest = build_policy(make_spec("static")).decide(frames[0]).backends
    largest = build_policy(make_spec("static", mode="largest")).decide(frames[1]).backends
    fixed = build_policy(make_spec("static", mode="map", backends={"query@2:5": "vqa-m"})).decide(frames[2]).backends
    assert cheapest == {SITE: "small", "query@2:5": "vqa-s"}
    assert largest == {SITE: "large", "query@2:5": "vqa-l"}
    assert fixed == {SITE: "small", "query@2:5": "vqa-m"}


def test_random_is_roughly_uniform(frames):
    policy = build_policy(make_spec("random", seed=1))
    picks = [policy.decide(frames[0]).backends["query@2:5"] for _ in range(900)]
    for name in ("vqa-s", "vqa-m", "vqa-l"):
        assert 240 < picks.count(name) < 360
    assert policy.decide(frames[0]).propensities["query@2:5"]["vqa-m"] == pytest.approx(1 / 3)


def test_ucb1_tries_each_backend_then_exploits(frames):
    policy = build_policy(make_spec("ucb1", sites=SITES[1:], c=0.2))
    site = SITES[1]["id"]
    reward = {"vqa-s": -1.0, "vqa-m": 0.0, "vqa-l": -0.5}
    first = []
    for step in range(60):
        decision = policy.decide(frames[0])
        name = decision.backends[site]
        if step < 3:
            first.append(name)
        policy.observe(decision, Feedback(reward=reward[name], executed_sites=[site], costs={site: 0.0}))
    assert first == ["vqa-s", "vqa-m", "vqa-l"]
    assert policy.counts[site].tolist()[1] > 40  # the best backend dominates
    assert policy.decide(frames[0]).backends[site] == "vqa-m"


def test_unstructured_refuses_huge_joint_space():
    sites = [
        {"id": f"find@{i}:1", "function": "detect", "backends": [{"name": f"d{j}", "cost": j + 1} for j in range(4)]}
        for i in range(7)
    ]  # 4**7 = 16384 configurations
    with pytest.raises(ValueError, match="16384 configurations"):
        check_spec(make_spec("unstructured", sites=sites))
    with pytest.raises(ValueError, match="16384 configurations"):
        build_policy(make_spec("unstructured", sites=sites))
    assert build_policy(make_spec("unstructured", sites=sites, max_configurations=20000)).name == "unstructured"


def test_unknown_algorithm_class():
    with pytest.raises(ValueError, match="unknown algorithm"):
        algorithm_class("nope")
    spec = make_spec("fast")
    with pytest.raises(ValueError, match="not 'random'"):
        algorithm_class("random")(spec)
    # each registered name finds the class that calls itself by it
    assert {name: algorithm_class(name).name for name in ALGORITHMS} == {name: name for name in ALGORITHMS}
    assert algorithm_class("fast")(spec).name == "fast"


@pytest.mark.parametrize(
    ("algorithm", "events", "margin", "hyper", "seeds"),
    [
        ("fast", 200, 0.5, {}, 3),
        ("structured", 300, 0.5, {}, 3),
        ("whole_query", 200, 0.5, {}, 3),
        ("unstructured", 300, 0.4, {}, 3),
        # not structured_code: deciding with batch norm over the frame alone, as the authors' code
        # does, it picks large on every frame here (tests/policy/test_structured_code.py)
    ],
)
def test_learns_large_on_hard_frames(algorithm, events, margin, hyper, seeds):
    """Averaged over seeds, the policy picks the large backend clearly more often on hard frames
    (where small is wrong) than on easy frames (where small is right and cheaper)."""
    gaps = []
    for seed in range(seeds):
        share = contextual_run(one_site_policy(algorithm, seed, **hyper), events, seed)
        gaps.append(share["hard"] - share["easy"])
    assert np.mean(gaps) > margin, gaps
    assert min(gaps) > 0, gaps


def test_fast_draws_as_wide_as_the_residual_noise(frames):
    """``fast``'s draws scale with each site's residual noise: rewards that never move narrow
    them below the prior's unit, rewards that swing widen them above it."""
    steady = one_site_policy("fast", seed=1)
    swinging = one_site_policy("fast", seed=1)
    rng = np.random.default_rng(0)
    for i in range(300):
        frame = frames[i % len(frames)]
        for policy, reward in ((steady, 1.0), (swinging, float(rng.choice([-6.0, 6.0])))):
            decision = policy.decide(frame)
            policy.observe(decision, Feedback(reward=reward, executed_sites=[SITE], costs={}))
    assert steady.residual_sd(SITE) < 0.4
    assert swinging.residual_sd(SITE) > 3.0


@pytest.mark.parametrize(("algorithm", "limit"), [("structured", 64), ("structured_code", 8)])
def test_a_program_too_large_for_the_algorithm_is_refused(algorithm, limit):
    def sites(n: int) -> list[dict]:
        return [{"id": f"find@{i}:1", "function": "detect", "backends": [{"name": "a", "cost": 1}]} for i in range(n)]

    check_spec(make_spec(algorithm, sites(limit)))
    with pytest.raises(ValueError, match=f"at most {limit} call sites.*has {limit + 1}: choose fast or cascade"):
        check_spec(make_spec(algorithm, sites(limit + 1)))
    check_spec(make_spec("fast", sites(256)))
