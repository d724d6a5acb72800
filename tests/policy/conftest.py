"""Shared helpers: small policy specs and a synthetic contextual problem on generated scenes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fmprog.contract import Feedback, PolicySpec
from fmprog.scene import generate_scene
from policy.algorithms import build_policy
from policy.algorithms.base import Policy

SITE = "find@1:1"
SITES = [
    {"id": SITE, "function": "detect", "backends": [{"name": "small", "cost": 1}, {"name": "large", "cost": 10}]},
    {
        "id": "query@2:5",
        "function": "vqa",
        "backends": [{"name": "vqa-s", "cost": 2}, {"name": "vqa-m", "cost": 5}, {"name": "vqa-l", "cost": 20}],
    },
]


def make_spec(algorithm: str, sites: list[dict] | None = None, seed: int = 0, **hyper: Any) -> PolicySpec:
    return PolicySpec.model_validate(
        {"sites": sites or SITES, "lambda": 0.05, "algorithm": algorithm, "hyperparameters": hyper, "seed": seed}
    )


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The policy tests' networks are tiny: one intra-op thread is faster than two and does not
    stall when other processes hold the cores (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def frames() -> list[np.ndarray]:
    return [generate_scene(seed, "hard" if seed % 2 else "easy").image for seed in range(8)]


def contextual_run(policy: Policy, events: int, seed: int) -> dict[str, float]:
    """One call site, small right only on easy frames, large always right; the paper's reward
    ``-L - lambda * C``. Returns how often large is chosen on fresh easy and hard frames."""
    rng = np.random.default_rng(seed)
    for _ in range(events):
        hard = bool(rng.integers(2))
        scene = generate_scene(int(rng.integers(1 << 30)), "hard" if hard else "easy")
        decision = policy.decide(scene.image)
        backend = decision.backends[SITE]
        loss = 1.0 if hard and backend == "small" else 0.0
        policy.observe(
            decision, Feedback(loss=loss, executed_sites=[SITE], costs={SITE: 1.0 if backend == "small" else 10.0})
        )
        policy.train()
    share = {}
    for difficulty in ("easy", "hard"):
        picks = [policy.decide(generate_scene(10**6 + j, difficulty).image).backends[SITE] for j in range(60)]
        share[difficulty] = picks.count("large") / len(picks)
    return share


def one_site_policy(algorithm: str, seed: int, **hyper: Any) -> Policy:
    return build_policy(make_spec(algorithm, SITES[:1], seed, **hyper))
