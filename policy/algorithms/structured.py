"""``structured`` (default): the paper's structured REINFORCE with gradient Thompson sampling.

One sub-policy per call site: a small CNN on the frame downsampled to ``input_size`` (default
32 x 32, area averaging) with one output per backend and one more, a baseline (below). The
sub-policy's score for backend ``a`` is its predicted sub-reward ``r'_a = f_a(x) - lambda * C_a /
reward_scale``: the network predicts the part of the sub-reward that depends on the frame (the
task term) and the known cost term is added to it, so a new policy starts out preferring the
cheaper backend in proportion to ``lambda`` instead of at random. Deciding is gradient Thompson
sampling: per backend ``a`` draw from ``N(r'_a, (nu * sigma_a)^2)``, ``sigma_a^2 = reg * g_a^T U^-1 g_a``,
and take the argmax; the decision's propensities are each backend's probability of winning that
draw (:func:`fmprog.thompson.argmax_probabilities`), sites drawn independently, and its
``score_spreads`` each draw's mean and spread (the cost term ``lambda * C_a / reward_scale`` moving
its mean by ``-C_a / reward_scale`` per unit of ``lambda``).

``U`` is kept over the **last layer's parameters** only (a full ``U`` over every parameter is too
large). The gradient of ``r'_a`` with respect to the last linear layer is the penultimate
activation ``h`` (with a 1 for the bias) in row ``a`` and zero elsewhere, so
``U = reg * I + sum g g^T`` over past chosen backends of executed sites is block-diagonal, one
``(h+1) x (h+1)`` block per backend, and is kept exactly as its inverse (Sherman-Morrison). The
``h`` stored with a sample is the one computed when deciding.

Training is REINFORCE on the paper's sub-rewards ``r_i = -lambda * C_i - L / N`` of executed
sites: loss ``-A * log softmax(r')[a]``. The advantage ``A = (r_i - m) / s - v(x)`` uses a baseline
for variance reduction: ``m`` is the running mean of the site's sub-rewards, ``s`` their running
standard deviation but at least ``reward_scale`` (the reward's unit: a cost gap between two
backends on frames whose task reward never changes stays the small number it is), and ``v(x)``,
the extra output, is trained (squared error, weight ``value_weight``) to predict ``(r_i - m) / s``
for the frame. The baseline must depend on the frame: Thompson sampling
mostly picks the backend with the highest score, not one drawn from ``softmax(r')``, so with a
frame-independent baseline a backend whose reward beats the average keeps being pushed up on
every frame it is chosen for (the right backend on hard frames is pushed down once the policy
does well on easy ones, and logits run away); with ``v(x)`` the chosen backend's advantage
settles at zero where it is the right one. ``baseline: "mean"`` (frame-independent) and
``"none"`` remain selectable for comparison. Every ``train_every`` feedback samples, ``train()``
runs ``epochs`` passes at ``batch_size`` with Adam on a copy of the networks over the samples
gathered since the last training, then swaps the copy in; deciding meanwhile uses the current
networks, and the samples stay in the persisted buffer until the swap.

``reward_scale`` is the unit of the task reward (1 for the 0/1 loss, ~100 for the authors'
rewards, as ``fast``'s): it sets how strongly the cost term shapes a new policy's scores.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.contract import Feedback, PolicySpec
from fmprog.thompson import argmax_probabilities, score_spreads
from policy.algorithms.base import Policy, TrainReport, training_copies
from policy.decisions import PendingDecision


class StructuredParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(default=32, ge=8, le=256)
    hidden: int = Field(default=32, ge=4, le=512, description="Width of the last hidden layer.")
    reg: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    nu: float = Field(default=0.5, ge=0, allow_inf_nan=False)
    lr: float = Field(default=3e-3, gt=0, allow_inf_nan=False)
    train_every: int = Field(default=32, ge=1)
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=16, ge=1)
    baseline: Literal["value", "mean", "none"] = Field(
        default="value", description="Frame-dependent learned baseline, running mean only, or none."
    )
    value_weight: float = Field(default=0.5, ge=0, allow_inf_nan=False, description="Weight of the baseline's loss.")
    reward_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="Unit of the task reward.")


def build_subpolicy(n_outputs: int, hidden: int):
    """A small CNN: three stride-2 convolutions, global average pooling, a hidden layer, outputs."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_outputs),
    )


def downsample(frame: np.ndarray, size: int) -> np.ndarray:
    """The frame as ``3 x size x size`` floats in 0..1 (area averaging), centred at 0."""
    import torch
    from torch.nn import functional

    pixels = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0
    small = functional.interpolate(pixels, size=(size, size), mode="area")[0] - 0.5
    return small.numpy()


class StructuredPolicy(Policy):
    name = "structured"
    Params = StructuredParams
    # deciding runs one network per site (about 1 ms each on a busy CPU core) and a training
    # round grows with the sites too: 256 sites made every answer wait out the router's 2 s
    # policy timeout
    max_sites = 64

    def __init__(self, spec: PolicySpec):
        import torch

        super().__init__(spec)
        p = self.params
        self.generator = torch.Generator().manual_seed(spec.seed)
        with torch.random.fork_rng():
            torch.manual_seed(spec.seed)
            # one output per backend and the baseline v(x) last
            self.nets = {s.id: build_subpolicy(len(s.backends) + 1, p.hidden) for s in spec.sites}
        self.optimizers = {s: self._optimizer(net) for s, net in self.nets.items()}
        dim = p.hidden + 1
        self.u_inv = {s.id: np.repeat(np.eye(dim)[None] / p.reg, len(s.backends), axis=0) for s in spec.sites}
        self.buffer: list[tuple[str, np.ndarray, int, float]] = []  # site, input, backend index, sub-reward
        self.stats = {s.id: [0, 0.0, 0.0] for s in spec.sites}  # count, mean, M2 of sub-rewards
        self.cost_terms = {s.id: spec.lam * np.asarray(s.costs) / p.reward_scale for s in spec.sites}
        self.trained_steps = 0
        self._training = threading.Lock()  # one train() at a time

    # -- deciding -------------------------------------------------------------------------------

    def _optimizer(self, net):
        import torch

        return torch.optim.Adam(net.parameters(), lr=self.params.lr)

    def _forward(self, net, x, site_id: str):
        """Scores ``r'``, baseline and the penultimate activation (the last layer's input) for a batch."""
        import torch

        hidden = net[:-1](x)
        out = net[-1](hidden)
        scores = out[:, :-1] - torch.from_numpy(self.cost_terms[site_id]).to(out.dtype)
        return scores, out[:, -1], hidden

    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        import torch

        x = downsample(self.read_frame(frame), self.params.input_size)
        backends: dict[str, str] = {}
        scores: dict[str, dict[str, float]] = {}
        draws: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        hiddens = []
        with self.lock, torch.no_grad():
            batch = torch.from_numpy(x)[None]
            for site in self.spec.sites:
                logits, _, hidden = self._forward(self.nets[site.id], batch, site.id)
                g = np.append(hidden[0].numpy().astype(np.float64), 1.0)
                sigma = np.sqrt(np.maximum(self.params.reg * np.einsum("i,kij,j->k", g, self.u_inv[site.id], g), 0))
                noise = self.rng.standard_normal(len(sigma))
                mean, spread = logits[0].numpy().astype(np.float64), self.params.nu * sigma
                sample = mean + spread * noise
                names = site.backend_names
                backends[site.id] = names[int(np.argmax(sample))]
                scores[site.id] = dict(zip(names, sample.tolist(), strict=True))
                draws[site.id] = mean, spread
                hiddens.append(g[:-1])
        propensities = {
            site.id: dict(zip(site.backend_names, argmax_probabilities(*draws[site.id]).tolist(), strict=True))
            for site in self.spec.sites
        }
        spreads = {
            site.id: score_spreads(
                site.backend_names, *draws[site.id], -np.asarray(site.costs) / self.params.reward_scale
            )
            for site in self.spec.sites
        }
        context = np.concatenate([x.reshape(-1), np.concatenate(hiddens)])
        return PendingDecision.with_context(
            context, algorithm=self.name, backends=backends, scores=scores, propensities=propensities,
            score_spreads=spreads,
        )  # fmt: skip

    # -- feedback -------------------------------------------------------------------------------

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        size, hidden = self.params.input_size, self.params.hidden
        context = decision.context_array()
        n_pixels = 3 * size * size
        if context.shape != (n_pixels + hidden * len(self.spec.sites),):
            raise ValueError("decision context does not match this policy's input size")
        x = context[:n_pixels].reshape(3, size, size)
        order = [s.id for s in self.spec.sites]
        with self.lock:
            for site_id, reward in self.sub_rewards(feedback).items():
                arm = self.spec.site(site_id).backend_names.index(decision.backends[site_id])
                k = order.index(site_id)
                g = np.append(context[n_pixels + k * hidden : n_pixels + (k + 1) * hidden].astype(np.float64), 1.0)
                u = self.u_inv[site_id][arm]
                ug = u @ g
                u -= np.outer(ug, ug) / (1.0 + g @ ug)
                self.buffer.append((site_id, x, arm, reward))
                stats = self.stats[site_id]
                stats[0] += 1
                delta = reward - stats[1]
                stats[1] += delta / stats[0]
                stats[2] += delta * (reward - stats[1])
            self.observed += 1

    def train(self) -> TrainReport | None:
        import torch

        with self._training:
            with self.lock:
                if len(self.buffer) < self.params.train_every:
                    return None
                samples = list(self.buffer)
                current = dict(self.nets), dict(self.optimizers)
                stats = {s: tuple(v) for s, v in self.stats.items()}
                order = torch.randperm(len(samples), generator=self.generator).tolist()
            start = time.perf_counter()
            nets, optimizers = training_copies(*current, self._optimizer)
            steps, losses = 0, []
            p = self.params
            for _ in range(p.epochs):
                for begin in range(0, len(order), p.batch_size):
                    chunk = [samples[i] for i in order[begin : begin + p.batch_size]]
                    for site_id in sorted({c[0] for c in chunk}):
                        mine = [c for c in chunk if c[0] == site_id]
                        x = torch.from_numpy(np.stack([c[1] for c in mine]))
                        arms = torch.tensor([c[2] for c in mine])
                        rewards = torch.tensor([c[3] for c in mine], dtype=torch.float32)
                        logits, value, _ = self._forward(nets[site_id], x, site_id)
                        advantage, value_loss = self._advantage(rewards, value, stats[site_id])
                        logp = torch.log_softmax(logits, dim=1).gather(1, arms[:, None])[:, 0]
                        loss = -(advantage * logp).mean() + p.value_weight * value_loss
                        optimizers[site_id].zero_grad()
                        loss.backward()
                        optimizers[site_id].step()
                        steps += 1
                        losses.append(float(loss.detach()))
            with self.lock:
                self.nets, self.optimizers = nets, optimizers
                del self.buffer[: len(samples)]  # observe only appends
                self.trained_steps += steps
        return TrainReport(
            samples=len(samples),
            steps=steps,
            seconds=time.perf_counter() - start,
            loss=float(np.mean(losses)) if losses else None,
        )

    def _advantage(self, rewards, value, stats: tuple[int, float, float]):
        """REINFORCE's advantage for the sub-rewards and the baseline's squared error."""
        count, mean, m2 = stats
        if self.params.baseline == "none":
            return rewards, value.new_zeros(())
        # the spread of the site's sub-rewards, never below the reward unit: on a stream of true
        # negatives the sub-rewards differ only by the cost term, and dividing that gap by its own
        # tiny spread would turn it into an advantage of about +-1 on every frame
        std = max(float(np.sqrt(m2 / count)) if count > 1 else 0.0, self.params.reward_scale)
        normalised = (rewards - mean) / std
        if self.params.baseline == "mean":
            return normalised, value.new_zeros(())
        return normalised - value.detach(), ((value - normalised) ** 2).mean()

    # -- persistence ----------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        import torch

        return {
            "nets": {s: net.state_dict() for s, net in self.nets.items()},
            "optimizers": {s: opt.state_dict() for s, opt in self.optimizers.items()},
            "u_inv": {s: torch.from_numpy(u.copy()) for s, u in self.u_inv.items()},
            "buffer_sites": [b[0] for b in self.buffer],
            "buffer_x": torch.from_numpy(np.stack([b[1] for b in self.buffer])) if self.buffer else torch.zeros(0),
            "buffer_arms": [b[2] for b in self.buffer],
            "buffer_rewards": [b[3] for b in self.buffer],
            "stats": {s: list(v) for s, v in self.stats.items()},
            "generator": self.generator.get_state(),
            "trained_steps": self.trained_steps,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for s, net in self.nets.items():
            net.load_state_dict(state["nets"][s])
            self.optimizers[s].load_state_dict(state["optimizers"][s])
            self.u_inv[s] = state["u_inv"][s].numpy().copy()
            self.stats[s] = [int(state["stats"][s][0]), float(state["stats"][s][1]), float(state["stats"][s][2])]
        xs = state["buffer_x"].numpy()
        self.buffer = [
            (site, xs[i].copy(), int(arm), float(r))
            for i, (site, arm, r) in enumerate(
                zip(state["buffer_sites"], state["buffer_arms"], state["buffer_rewards"], strict=True)
            )
        ]
        self.generator.set_state(state["generator"])
        self.trained_steps = int(state["trained_steps"])
