"""``structured_code``: the authors' code variant (ResNet-18 sub-policies, diagonal U, raw task
reward, a training round every ``train_every`` feedback events)."""

from __future__ import annotations

import copy
import io
import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fmprog.contract import Feedback
from policy.algorithms import build_policy
from policy.algorithms.resnet import IMAGENET_CLASSES, ResNet18, resnet18_with_new_head
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
    # PIL's bilinear resize, as torchvision's Resize((256, 256)) on the authors' PIL images
    wide = np.asarray(Image.fromarray(frames[0]).resize((333, 211)))
    resized = np.asarray(Image.fromarray(wide).resize((256, 256), Image.Resampling.BILINEAR))
    assert np.array_equal(network_input(wide, 256), resized.transpose(2, 0, 1))
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
            logits = p.nets[site.id](x, update_running_stats=False)[0].double().numpy()
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
        net(x, update_running_stats=False)[0, a].backward()
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
    net(as_batch([pixels]), update_running_stats=False)[0, arm].backward()
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


# -- the authors' networks: train-mode batch norm, their initial weights, their noise ---------------


def logits_of(decision, policy) -> dict[str, list[float]]:
    """The logits behind a decision made with ``nu = 0`` (its scores plus the cost terms)."""
    return {s: (np.asarray(list(decision.scores[s].values())) + policy.cost_terms[s]).tolist() for s in decision.scores}


def test_deciding_normalises_by_the_frames_own_statistics(frames):
    """As the authors' networks, never put in eval mode: the logits of a frame are those of a
    train-mode forward, whatever the running statistics hold, and not those of an eval-mode one."""
    p = policy(nu=0.0)
    decision = p.decide(frames[4])
    x = as_batch([decision.context_array()])
    for site in (SITE, OTHER):
        net = p.nets[site]
        assert net.training and all(m.training for m in net.modules())
        with torch.no_grad():
            train_mode = copy.deepcopy(net)(x)[0].tolist()
            eval_mode = copy.deepcopy(net).eval()(x)[0].tolist()
        assert logits_of(decision, p)[site] == pytest.approx(train_mode, rel=1e-6, abs=1e-7)
        assert logits_of(decision, p)[site] != pytest.approx(eval_mode, rel=1e-3, abs=1e-4)
    # running statistics are never read: filled with anything, the decision does not move
    generator = torch.Generator().manual_seed(0)
    for module in p.nets[SITE].modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 5.0, generator=generator)
            module.running_var.uniform_(0.1, 10.0, generator=generator)
    assert logits_of(p.decide(frames[4]), p) == logits_of(decision, p)


def test_deciding_and_feedback_write_nothing_to_the_network(frames):
    """Deciding and the ``U`` update normalise by batch statistics without updating the running
    ones, so a network (and a snapshot holding its tensors) stays as it was while decisions run
    concurrently; training's forwards update the running statistics of the networks it swaps in."""
    p = policy(nu=0.0, train_every=4, epochs=1, batch_size=2)
    snapshot = p.state_dict()["nets"]
    before = {s: {k: v.clone() for k, v in net.state_dict().items()} for s, net in p.nets.items()}

    decisions: dict[int, object] = {}
    failures: list[BaseException] = []

    def decide(i: int) -> None:
        try:
            decisions[i] = p.decide(frames[i])
        except BaseException as error:  # the test reports any failure
            failures.append(error)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and len(decisions) == 6
    alone = policy(nu=0.0)  # the same networks, deciding one frame at a time
    for i, decision in decisions.items():
        assert decision.scores == alone.decide(frames[i]).scores
    for i in range(3):
        p.observe(decisions[i], Feedback(reward=1.0, executed_sites=[SITE, OTHER]))
    for site, net in p.nets.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, before[site][key]) and torch.equal(snapshot[site][key], before[site][key]), key

    p.observe(decisions[3], Feedback(reward=1.0, executed_sites=[SITE]))
    report = p.train()
    assert report is not None and report.steps == 2 + 2  # 4 samples and 3 samples in batches of 2
    trained = p.nets[SITE].state_dict()
    assert int(trained["bn1.num_batches_tracked"]) == 2  # the two training batches of the site
    assert not torch.equal(trained["bn1.running_mean"], before[SITE]["bn1.running_mean"])


def torchvision_draws(width: int, head: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """What torchvision's ``ResNet.__init__`` draws for ``resnet18(num_classes=head)``, in order,
    as ``(draw, parameter, shape)``: each convolution's default initialisation as it is built
    (per stage the shortcut's before the blocks'; overwritten later, so their order among
    themselves draws the same), the head's default initialisation, then a Kaiming-normal redraw of
    every convolution in module order (within a block: conv1, conv2, then the shortcut)."""
    built = module_order = [("conv1", (width, 3, 7, 7))]
    channels = width
    for stage, out in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
        first = [(f"layer{stage}.0.conv1", (out, channels, 3, 3)), (f"layer{stage}.0.conv2", (out, out, 3, 3))]
        second = [(f"layer{stage}.1.conv1", (out, out, 3, 3)), (f"layer{stage}.1.conv2", (out, out, 3, 3))]
        shortcut = [(f"layer{stage}.0.downsample.0", (out, channels, 1, 1))] if out != channels else []
        built = built + shortcut + first + second
        module_order = module_order + first + shortcut + second
        channels = out
    return (
        [("conv default", f"{name}.weight", shape) for name, shape in built]
        + [("linear default", "fc", (head, 8 * width))]
        + [("kaiming normal", f"{name}.weight", shape) for name, shape in module_order]
    )


def draw_by_hand(width: int, head: int, new_head: int | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The parameters ``torchvision_draws`` gives (and, with ``new_head``, the authors' new head
    drawn after them), by explicit init calls on the global generator; then the generator's next
    draw."""
    expected: dict[str, torch.Tensor] = {}

    def linear(outputs: int) -> None:  # nn.Linear's default initialisation
        expected["fc.weight"] = nn.init.kaiming_uniform_(torch.empty(outputs, 8 * width), a=math.sqrt(5))
        expected["fc.bias"] = torch.empty(outputs).uniform_(-1 / math.sqrt(8 * width), 1 / math.sqrt(8 * width))

    for draw, name, shape in torchvision_draws(width, head):
        if draw == "conv default":
            nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5))
        elif draw == "linear default":
            linear(shape[0])
        else:
            expected[name] = nn.init.kaiming_normal_(torch.empty(shape), mode="fan_out", nonlinearity="relu")
    if new_head is not None:
        linear(new_head)
    return expected, torch.rand(8)


@pytest.mark.parametrize("width", [2, 4])
def test_initial_weights_are_drawn_as_torchvision_and_the_authors_code_draw_them(width):
    """``ResNet18(n)`` draws as torchvision's ``resnet18(num_classes=n)``; the authors' network
    (:func:`resnet18_with_new_head`) draws the 1000-way head of ``resnet18()``, then the
    convolutions, then a new head. Checked draw for draw against explicit init calls, and by what
    the generator draws next."""
    with torch.random.fork_rng():  # the test seeds the global generator
        for build, head, new_head in (
            (lambda: ResNet18(3, width), 3, None),
            (lambda: resnet18_with_new_head(3, width), IMAGENET_CLASSES, 3),
        ):
            torch.manual_seed(11)
            net = build()
            after = torch.rand(8)
            torch.manual_seed(11)
            expected, after_by_hand = draw_by_hand(width, head, new_head)
            for name, value in net.named_parameters():
                if name in expected:
                    assert torch.equal(value, expected[name]), name
                else:  # batch norm: weight 1, bias 0
                    assert name.rsplit(".", 2)[-2].startswith(("bn", "1")), name
                    assert torch.equal(value, torch.full_like(value, float(name.endswith("weight")))), name
            assert len(expected) == 2 + 20  # the head and every convolution
            assert torch.equal(after, after_by_hand)
        # so the authors' network is not resnet18(num_classes=3): every convolution differs
        torch.manual_seed(11)
        plain = ResNet18(3, width).state_dict()
        torch.manual_seed(11)
        authors = resnet18_with_new_head(3, width).state_dict()
        assert not torch.equal(plain["conv1.weight"], authors["conv1.weight"])


def test_networks_and_noise_continue_one_generator_seeded_with_the_spec_seed(frames):
    """As the authors' ``set_seed(42)`` then one network per site: the sites' networks drawn in
    order from the seed, the Thompson noise drawn after them from the same generator, one
    ``torch.normal`` per backend, site after site."""
    p = policy()
    with torch.random.fork_rng():
        torch.manual_seed(5)
        by_hand = [resnet18_with_new_head(len(s.backends), 4) for s in p.spec.sites]
        for site, net in zip(p.spec.sites, by_hand, strict=True):
            mine = p.nets[site.id].state_dict()
            assert all(torch.equal(v, mine[k]) for k, v in net.state_dict().items()), site.id
        x = as_batch([network_input(frames[5], 64)])
        expected = {}
        for site in p.spec.sites:
            logits, sigma = p._logits_and_sigma(p.nets[site.id], p.u[site.id], x)
            spread = p.params.nu * sigma
            noise = [float(torch.normal(torch.tensor(0.0), torch.tensor(float(s)))) for s in spread]
            expected[site.id] = (logits + np.asarray(noise) - p.cost_terms[site.id]).tolist()
    decision = p.decide(frames[5])
    assert {s: list(v.values()) for s, v in decision.scores.items()} == expected


def test_a_snapshot_keeps_the_noise_generator_and_an_older_one_still_loads(frames):
    p = policy()
    for i in range(3):
        p.observe(p.decide(frames[i]), Feedback(reward=1.0, executed_sites=[SITE]))
    buffer = io.BytesIO()
    torch.save(p.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = build_policy(p.spec)
    restored.load_state_dict(state)
    assert restored.decide(frames[6]).scores == p.decide(frames[6]).scores
    assert all(net.training for net in restored.nets.values())
    # a snapshot from before the noise generator was kept: everything else loads
    older = {k: v for k, v in state.items() if k != "noise"}
    legacy = build_policy(p.spec)
    legacy.load_state_dict(older)
    assert len(legacy.buffers[SITE]) == 3
    assert all(torch.equal(a, b) for a, b in zip(legacy.u[SITE], p.u[SITE], strict=True))


def test_learns_to_leave_a_backend_that_is_always_wrong(frames):
    """Trained with batch statistics and deciding with each frame's own, as the authors' code,
    the policy still learns: the cheap backend, chosen at first for its cost, is always wrong, and
    after six rounds the expensive one is chosen on every frame."""
    sites = [
        {"id": SITE, "function": "detect", "backends": [{"name": "small", "cost": 1}, {"name": "large", "cost": 30}]}
    ]
    p = build_policy(make_spec("structured_code", sites, seed=1, **CHEAP, train_every=32))

    def large_chosen() -> int:
        return [p.decide(frame).backends[SITE] for frame in frames for _ in range(3)].count("large")

    assert large_chosen() <= 6
    for i in range(6 * 32):
        decision = p.decide(frames[i % len(frames)])
        p.observe(decision, Feedback(loss=float(decision.backends[SITE] == "small"), executed_sites=[SITE]))
        p.train()
    assert p.trained_steps == 6 * 5 * 2  # six rounds of five epochs of two batches
    assert large_chosen() == 3 * len(frames)
