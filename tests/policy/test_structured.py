"""``structured``: scores are predicted sub-rewards with the known cost term; a frame-dependent baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.algorithms import build_policy, check_spec
from policy.algorithms.structured import downsample
from tests.policy.conftest import SITES, make_spec


@pytest.mark.parametrize("reward_scale", [1.0, 100.0])
def test_scores_are_the_network_plus_the_cost_term(frames, reward_scale):
    policy = build_policy(make_spec("structured", nu=0.0, reward_scale=reward_scale))
    decision = policy.decide(frames[0])
    x = torch.from_numpy(downsample(frames[0], 32))[None]
    for site in SITES:
        with torch.no_grad():
            out = policy.nets[site["id"]](x)[0].double().numpy()
        costs = np.array([b["cost"] for b in site["backends"]])
        assert out.shape == (len(costs) + 1,)  # one output per backend, then the baseline
        expected = out[:-1] - 0.05 * costs / reward_scale
        assert list(decision.scores[site["id"]].values()) == pytest.approx(expected.tolist(), rel=1e-5)


def test_baseline_choices():
    assert check_spec(make_spec("structured")).baseline == "value"
    for choice in ("mean", "none"):
        assert check_spec(make_spec("structured", baseline=choice)).baseline == choice
    with pytest.raises(ValueError, match="baseline"):
        check_spec(make_spec("structured", baseline=True))
