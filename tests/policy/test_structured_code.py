"""``structured_code``: the authors' code variant (ResNet-18 sub-policies, diagonal U, raw task
reward, a training round every ``train_every`` feedback events)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmprog.contract import Feedback
from policy.algorithms import build_policy
from policy.algorithms.resnet import ResNet18
from policy.algorithms.structured_code import StructuredCodeParams, as_batch, network_input
from policy.decisions import PendingDecision
from tests.policy.conftest import SITE, SITES, make_spec

OTHER = SITES[1]["id"]
CHEAP = {"input_size": 64, "width": 4}


def policy(**hyper):
    return build_policy(make_spec("structured_code", seed=5, **(CHEAP | hyper)))


def test_defaults_are_the_authors():
    p = StructuredCodeParams()
    assert (p.input_size, p.width, p.reg, p.nu, p.lr, p.train_every, p.epochs, p.batch_size) == (
        256,
        64,
        1e-4,
        0.1,
        1e-3,
        64,
        5,
        16,
    )
    # torchvision's resnet18 has 11,689,512 parameters with its 1000-way head (512 * 1000 + 1000)
    assert sum(w.numel() for w in ResNet18(1000).parameters()) == 11_689_512


def test_input_is_the_resized_frame_as_uint8(frames):
    pixels = network_input(frames[0], 256)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 256, 256)
    assert np.array_equal(network_input(frames[0], 128), frames[0].transpose(2, 0, 1))  # no resizing at 128
    decision = policy().decide(frames[0])
    assert decision.context_dtype == "uint8" and decision.context_shape == [3, 64, 64]
    again = PendingDecision.model_validate_json(decision.model_dump_json())
    assert np.array_equal(again.context_array(), network_input(frames[0], 64))


def test_scores_are_logit_plus_noise_minus_lambda_cost(frames):
    p = policy(nu=0.0)
    decision = p.decide(frames[1])
    x = as_batch([decision.context_array()])
    for site in p.spec.sites:
        with torch.no_grad():
            logits = p.nets[site.id](x)[0].double().numpy()
        expected = logits - p.spec.lam * np.asarray(site.costs)
        assert list(decision.scores[site.id].values()) == pytest.approx(expected.tolist(), rel=1e-5)
        assert decision.backends[site.id] == site.backend_names[int(np.argmax(expected))]


def test_sigma_is_the_gradient_norm_under_the_initial_u(frames):
    """With ``U = reg`` everywhere, ``sigma_a^2 = reg * sum(g_a^2 / reg) = |g_a|^2``."""
    p = policy(reg=0.5)
    net = p.nets[SITE]
    x = as_batch([network_input(frames[2], 64)])
    _, sigma = p._logits_and_sigma(net, p.u[SITE], x)
    for a in range(2):
        net.zero_grad()
        net(x)[0, a].backward()
        norm = torch.sqrt(sum((w.grad.double() ** 2).sum() for w in net.parameters()))
        assert sigma[a] == pytest.approx(float(norm), rel=1e-4)


def test_only_executed_sites_get_the_sample_and_the_u_update(frames):
    p = policy()
    before = {s: [u.clone() for u in p.u[s]] for s in p.u}
    decision = p.decide(frames[3])
    p.observe(decision, Feedback(reward=100.0, executed_sites=[SITE], costs={SITE: 10.0}))
    # the other site: nothing
    assert p.buffers[OTHER] == []
    assert all(torch.equal(a, b) for a, b in zip(p.u[OTHER], before[OTHER], strict=True))
    # the executed site: the raw task reward (no cost, no 1/N) and U += g_chosen^2
    ((pixels, arm, reward),) = p.buffers[SITE]
    assert reward == 100.0 and SITES[0]["backends"][arm]["name"] == decision.backends[SITE]
    net = p.nets[SITE]
    net.zero_grad()
    net(as_batch([pixels]))[0, arm].backward()
    for u, old, w in zip(p.u[SITE], before[SITE], net.parameters(), strict=True):
        assert torch.allclose(u, old + w.grad**2, rtol=1e-5, atol=1e-12)


def test_a_training_round_every_64_feedback_events(frames):
    p = policy(epochs=1, batch_size=16)
    initial = {k: v.clone() for k, v in p.nets[SITE].state_dict().items()}
    for i in range(63):
        executed = [SITE] if i % 2 else [SITE, OTHER]
        p.observe(p.decide(frames[i % 8]), Feedback(loss=float(i % 3 == 0), executed_sites=executed))
        assert p.train() is None
    assert len(p.buffers[SITE]) == 63 and len(p.buffers[OTHER]) == 32
    p.observe(p.decide(frames[0]), Feedback(loss=0.0))  # the 64th event, nothing executed: still counts
    report = p.train()
    assert report is not None
    assert report.samples == 63 + 32
    assert report.steps == 4 + 2  # one epoch, batches of 16: 63 -> 4 batches, 32 -> 2
    assert p.buffers == {SITE: [], OTHER: []} and p.rounds == []
    assert p.train() is None
    trained = p.nets[SITE].state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)


def test_how_often_train_is_called_does_not_change_what_is_learned(frames):
    """Rounds are closed in ``observe``: on the same samples, training after every event or once
    after many gives the same networks (each closed round is trained on its own, in order)."""
    maker = policy()
    eager, lazy = policy(train_every=4, epochs=2, batch_size=3), policy(train_every=4, epochs=2, batch_size=3)
    for i in range(10):
        decision = maker.decide(frames[i % 8])
        for p in (eager, lazy):
            p.observe(decision, Feedback(reward=float(i % 3) - 1.0, executed_sites=[SITE, OTHER]))
        eager.train()
    assert len(lazy.rounds) == 2 and len(lazy.buffers[SITE]) == 2
    assert lazy.train().samples == 16
    for site in (SITE, OTHER):
        a, b = eager.nets[site].state_dict(), lazy.nets[site].state_dict()
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_refuses_a_context_of_another_input_size(frames):
    decision = policy(input_size=96).decide(frames[0])
    with pytest.raises(ValueError, match="input size"):
        policy().observe(decision, Feedback(loss=0.0, executed_sites=[SITE]))


def test_rounds_waiting_for_training_are_capped(frames):
    p = policy(train_every=1, max_pending_rounds=2, epochs=1)
    for i in range(5):
        p.observe(p.decide(frames[i]), Feedback(reward=1.0, executed_sites=[SITE]))
    assert [n for n, _ in p.rounds] == [4, 5] and p.dropped_rounds == 3
    restored = build_policy(p.spec)
    restored.load_state_dict(p.state_dict())
    assert [n for n, _ in restored.rounds] == [4, 5] and restored.dropped_rounds == 3
    report = p.train()
    assert report is not None and report.samples == 2 and p.rounds == []
