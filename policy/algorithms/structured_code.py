"""``structured_code``: the structured policy as the authors' research code runs it.

Where the paper and the authors' code differ, ``structured`` follows the paper and this module
the code (see PAPER.md, "What the authors' code does"). File and line references are to that
code (github.com/Flitternie/FMProgramming, commit 3e4c464); its per-site policy is ``Reinforce``
in routing/algorithms.py, driven by ``StructuredRouter`` in routing/__init__.py.

- **Sub-policy**: per call site the network their ``CNN(num_classes)`` builds (routing/networks.py
  56-63): torchvision's ResNet-18, not pretrained, built with its 1000-way head, which is then
  replaced by a new linear head with one logit per backend
  (:func:`.resnet.resnet18_with_new_head`: the same initial weights for the same torch seed). The
  networks are drawn one after another in the spec's site order from torch's generator seeded
  with the spec's seed (default 42: they call ``set_seed(42)`` before building each query's
  router, main_verification.py 46, main_vqa.py 51). The input is the raw frame resized to
  ``input_size`` x ``input_size`` (default 256) by PIL's bilinear resize, which is what their
  ``transforms.Resize((256, 256))`` does to a PIL image, in [0, 1] (their ``ToTensor``;
  utils_verification.py 52-55). ``width`` (default 64, ResNet-18 proper) and ``input_size`` can
  be lowered for tests and CPUs.
- **Batch norm**: their networks are never put in eval mode (``train()`` calls
  ``self.model.train()``, nothing calls ``eval()``), so batch norm always normalises by the
  statistics of the batch at hand: the one frame when deciding (the logits and the gradients
  ``g`` for sigma), the training batch when training. The same here, and also for the gradient of
  the ``U`` update. Train mode never reads the running statistics (``running_mean``,
  ``running_var``, ``num_batches_tracked``), so they change no logit, gradient or decision. Their
  code updates them on every forward; here only training's forwards update them, on the copies
  that training swaps in. Deciding and ``observe`` run :meth:`.resnet.ResNet18.forward` with
  ``update_running_stats=False``, which writes nothing to the network: concurrent decisions then
  neither race on the buffers (unlocked in-place updates from several threads) nor change a
  network while training copies it or a snapshot holds its tensors (both rely on a network being
  changed only by swapping in another). ``input_size >= 64`` keeps the last stage at least
  2 x 2, so the batch statistics of one frame are defined. Normalising a frame by its own
  statistics drops each channel's level and scale in that frame, which training's batch
  statistics over up to 16 frames keep, so what training learns carries over to deciding only in
  part: on the project's synthetic scenes the policy learns to leave a backend that is always
  wrong, but not to tell easy frames from hard ones.
- **Deciding** (``Reinforce.select``, routing/algorithms.py 470-506): per backend ``a`` the score
  ``logit_a + Normal(0, nu * sigma_a) - lambda * cost_a`` (cost in the spec's unit, millions of
  parameters), argmax. ``sigma_a^2 = reg * sum(g_a^2 / U)`` with ``g_a`` the gradient of
  ``logit_a`` with respect to **all** the sub-policy's parameters and ``U`` **diagonal**, one entry
  per parameter, initialised to ``reg`` (default 1e-4; ``nu`` 0.1). ``sigma_a^2`` is clamped below
  at 1e-6 as in that code. Cost enters only here. The noise is drawn as theirs: one
  ``torch.normal`` of one element per backend (their ``Normal(0, nu * sigma_a).sample()``), site
  after site, backend after backend, from a generator that continues the one that drew the
  networks (theirs continues torch's global generator after ``set_seed(42)`` and the networks), so
  the same seed gives the same draws. The decision's propensities are each backend's probability
  of winning that draw (:func:`fmprog.thompson.argmax_probabilities`), sites drawn independently;
  its ``score_spreads`` each draw's mean and spread (the cost term moving the mean by ``-cost_a``
  per unit of lambda).
- **Feedback** (``ParallizedStructuredReinforce.update`` and ``Reinforce.update``, lines 745-759 and
  508-523): only sites that executed get the sample ``(input, chosen backend, task reward)`` and
  the update ``U += g_chosen^2``. The task reward is the raw one (``Feedback.task_term``: the
  authors' +100 / -100, or ``-L``): no cost term, no ``1/N`` split, no baseline.
- **Training** (``Reinforce.train``, lines 525-568): every ``train_every`` (64) feedback events,
  executed or not, each site's buffer of the samples since the last round is closed; ``train()``
  then runs, per site and per closed round, ``epochs`` (5) passes of REINFORCE in order (no
  shuffling) at ``batch_size`` (16, the last batch partial), loss
  ``-mean(r * log(softmax(logits)[a] + 1e-6))``, with one AdamW (``lr`` 1e-3, ``weight_decay``
  0.01, kept across rounds) per site.

Where this module still differs from their code, and why:

- **The gradient of the ``U`` update** is recomputed in ``observe`` from the stored input with the
  network current then. Theirs keeps ``g_chosen`` from deciding (``self.g_list``, lines 503 and
  522): a 45 MB vector per site for ResNet-18 that would have to wait in every pending decision.
  The two are equal unless a training round swaps in a new network between the decision and its
  feedback, which cannot happen in their synchronous loop. ``observe`` therefore costs a forward
  and a backward pass per executed site.
- **Training runs apart from feedback.** Theirs trains inside the 64th ``update`` call, before the
  next frame is decided (routing/__init__.py 275-280); here ``observe`` closes the round and the
  service's background thread calls ``train()``, so decisions made meanwhile use the previous
  networks. A round of full ResNet-18s on a CPU can take longer than 64 feedback events take to
  arrive, so at most ``max_pending_rounds`` closed rounds wait for training and the oldest is
  dropped beyond that (counted in ``dropped_rounds``); theirs never drops one. Rounds are closed
  in ``observe``, so how often ``train()`` is called does not change what is learned.
- **The schedule is honoured.** Their ``StructuredRouter`` trains at 64 / 5 / 16 whatever it is
  given (lines 279-280 ignore ``update_freq``, ``num_epochs`` and ``batch_size``; the open-form
  runner passes 16 and 8, main_vqa.py 72-73); here ``train_every``, ``epochs`` and ``batch_size``
  apply, and their defaults are what their code runs.
- **Running statistics** are updated by training's forwards only (see Batch norm): what a snapshot
  holds in those buffers differs, no decision or update does.
- **Rounding.** ``sigma^2`` sums ``g^2 / U`` per parameter tensor in float32 and adds the sums in
  float64; theirs sums one concatenated float32 vector (line 495). Scores are float64; theirs are
  stored in a float32 tensor (lines 486 and 499). Their networks run on CUDA (one GPU per site,
  lines 697-702), these on the CPU. All of these change results only at float32 rounding.
- **Call sites** are the spec's: one sub-policy per call in the program's source, in source order.
  Theirs keys a site by method name and literal string arguments (execution/backend.py 311-338),
  so identical calls share one network and the networks are built in the order of a pre-order
  walk of the syntax tree; the two agree for programs whose routed calls are distinct and one to
  a line. At most ``max_sites`` (8) sites are served; theirs has no limit.
- **The noise generator** is the policy's own. Theirs is torch's global generator, which anything
  else in the process could also draw from between two decisions; nothing in their loop does
  (their datasets shuffle with Python's ``random``, training draws nothing). A snapshot restores
  it; one taken before it was kept restarts it from its state after the networks were drawn.
- **The context** of a decision is the network input itself, ``3 x input_size x input_size``
  **uint8** (192 KiB at 256; base64 in the pending and feedback logs), not their float tensor:
  the same values, a quarter of the size. Deciding, the ``U`` update and training see exactly the
  same input.

Deciding computes outside the policy's lock on the current network and ``U`` (neither is ever
changed in place: training swaps in new networks, ``observe`` replaces ``U``, and deciding
writes nothing to a network), so concurrent decisions, feedback and training do not wait for one
another; only the noise draw is locked.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.contract import Feedback, PolicySpec, ScoreSpread
from fmprog.thompson import argmax_probabilities, score_spreads
from policy.algorithms.base import Policy, TrainReport, training_copies
from policy.decisions import PendingDecision

Sample = tuple[np.ndarray, int, float]  # uint8 input, chosen backend index, task reward
LOG_EPSILON = 1e-6  # the authors' log(p + 1e-6)
MIN_SIGMA2 = 1e-6  # the authors' clamp of sigma^2


class StructuredCodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(default=256, ge=64, le=512, description="Side of the network input, pixels.")
    width: int = Field(default=64, ge=2, le=128, description="Channels of ResNet-18's first stage (64 = ResNet-18).")
    reg: float = Field(default=1e-4, gt=0, allow_inf_nan=False, description="Initial U and scale of sigma^2.")
    nu: float = Field(default=0.1, ge=0, allow_inf_nan=False, description="Exploration scale.")
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.01, ge=0, allow_inf_nan=False, description="AdamW's decoupled decay.")
    train_every: int = Field(default=64, ge=1, description="Feedback events per training round.")
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=16, ge=1)
    max_pending_rounds: int = Field(default=4, ge=1, description="Closed rounds kept while training lags.")


def network_input(frame: np.ndarray, size: int) -> np.ndarray:
    """The frame resized to ``3 x size x size`` uint8 by PIL's bilinear resize (antialiased when
    shrinking), as torchvision's ``Resize`` resizes a PIL image."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1).copy()


def as_batch(inputs: list[np.ndarray]):
    """uint8 inputs as one float batch in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack(inputs)).float().div_(255.0)


class StructuredCodePolicy(Policy):
    name = "structured_code"
    Params = StructuredCodeParams
    # a ResNet-18 per site: about 0.18 s of deciding and, with its optimizer, some 140 MB per site
    # (256 sites grew the policy past 9 GB)
    max_sites = 8

    def __init__(self, spec: PolicySpec):
        import torch

        from policy.algorithms.resnet import resnet18_with_new_head

        super().__init__(spec)
        p = self.params
        with torch.random.fork_rng():
            torch.manual_seed(spec.seed)
            # in train mode, as built, for good (see the module's docstring)
            self.nets = {s.id: resnet18_with_new_head(len(s.backends), p.width) for s in spec.sites}
            self.noise = torch.Generator()  # the Thompson noise: the generator goes on from here
            self.noise.set_state(torch.get_rng_state())
        self.optimizers = {s: self._optimizer(net) for s, net in self.nets.items()}
        self.u = {s: [torch.full_like(w, p.reg) for w in net.parameters()] for s, net in self.nets.items()}
        self.cost_terms = {s.id: spec.lam * np.asarray(s.costs, dtype=np.float64) for s in spec.sites}
        self.buffers: dict[str, list[Sample]] = {s.id: [] for s in spec.sites}  # the open round
        self.rounds: list[tuple[int, dict[str, list[Sample]]]] = []  # closed rounds (number, buffers) to train
        self.dropped_rounds = 0
        self.trained_steps = 0
        self._training = threading.Lock()  # one train() at a time

    def _optimizer(self, net):
        import torch

        return torch.optim.AdamW(net.parameters(), lr=self.params.lr, weight_decay=self.params.weight_decay)

    # -- deciding -------------------------------------------------------------------------------

    def _logits_and_sigma(self, net, u, x) -> tuple[np.ndarray, np.ndarray]:
        """The logits at ``x`` and ``sigma_a = sqrt(reg * sum(g_a^2 / U))`` for every backend."""
        import torch

        weights = list(net.parameters())
        with torch.enable_grad():
            logits = net(x, update_running_stats=False)[0]
        n = logits.shape[0]
        sigma2 = np.empty(n)
        for a in range(n):
            grads = torch.autograd.grad(logits[a], weights, retain_graph=a < n - 1)
            sigma2[a] = self.params.reg * sum(float((g * g / d).sum()) for g, d in zip(grads, u, strict=True))
        return logits.detach().numpy().astype(np.float64), np.sqrt(np.maximum(sigma2, MIN_SIGMA2))

    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        pixels = network_input(self.read_frame(frame), self.params.input_size)
        x = as_batch([pixels])
        with self.lock:
            nets, u = dict(self.nets), dict(self.u)
        estimates = {s.id: self._logits_and_sigma(nets[s.id], u[s.id], x) for s in self.spec.sites}
        backends: dict[str, str] = {}
        scores: dict[str, dict[str, float]] = {}
        propensities: dict[str, dict[str, float]] = {}
        spreads: dict[str, dict[str, ScoreSpread]] = {}
        with self.lock:
            noise = {s.id: self._noise(self.params.nu * estimates[s.id][1]) for s in self.spec.sites}
        for site in self.spec.sites:
            logits, sigma = estimates[site.id]
            mean, spread = logits - self.cost_terms[site.id], self.params.nu * sigma
            sample = logits + noise[site.id] - self.cost_terms[site.id]
            names = site.backend_names
            backends[site.id] = names[int(np.argmax(sample))]
            scores[site.id] = dict(zip(names, sample.tolist(), strict=True))
            propensities[site.id] = dict(zip(names, argmax_probabilities(mean, spread).tolist(), strict=True))
            spreads[site.id] = score_spreads(names, mean, spread, -np.asarray(site.costs, dtype=np.float64))
        return PendingDecision.with_context(
            pixels, dtype="uint8", algorithm=self.name, backends=backends, scores=scores, propensities=propensities,
            score_spreads=spreads,
        )  # fmt: skip

    def _noise(self, spreads: np.ndarray) -> np.ndarray:
        """A draw of ``Normal(0, spread)`` per backend, each as the authors' ``Normal(0,
        spread).sample()`` draws it: ``torch.normal`` of one float32 element (called with the lock
        held, so the draws keep their order)."""
        import torch

        zero = torch.zeros(())
        return np.array(
            [float(torch.normal(zero, torch.tensor(float(s)), generator=self.noise)) for s in spreads], dtype=np.float64
        )

    # -- feedback -------------------------------------------------------------------------------

    def _squared_gradient(self, net, x, arm: int) -> list:
        import torch

        weights = list(net.parameters())
        with torch.enable_grad():
            logit = net(x, update_running_stats=False)[0, arm]
        return [g * g for g in torch.autograd.grad(logit, weights)]

    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        self.check_feedback(decision, feedback)
        size = self.params.input_size
        pixels = decision.context_array()
        if pixels.dtype != np.uint8 or pixels.shape != (3, size, size):
            raise ValueError("decision context does not match this policy's input size")
        arms = {
            site_id: self.spec.site(site_id).backend_names.index(decision.backends[site_id])
            for site_id in feedback.executed_sites
        }
        reward = feedback.task_term
        with self.lock:
            nets = dict(self.nets)
        x = as_batch([pixels])
        squares = {site_id: self._squared_gradient(nets[site_id], x, arm) for site_id, arm in arms.items()}
        with self.lock:
            for site_id, arm in arms.items():
                self.u[site_id] = [d + s for d, s in zip(self.u[site_id], squares[site_id], strict=True)]
                self.buffers[site_id].append((pixels, arm, reward))
            self.observed += 1
            if self.observed % self.params.train_every == 0:
                self.rounds.append((self.observed // self.params.train_every, self.buffers))
                if len(self.rounds) > self.params.max_pending_rounds:
                    del self.rounds[0]
                    self.dropped_rounds += 1
                self.buffers = {s.id: [] for s in self.spec.sites}

    # -- training -------------------------------------------------------------------------------

    def train(self) -> TrainReport | None:
        import torch

        with self._training:
            with self.lock:
                if not self.rounds:
                    return None
                rounds = list(self.rounds)
                current = dict(self.nets), dict(self.optimizers)
            start = time.perf_counter()
            # in train mode, as the originals: each forward updates the copies' running statistics
            nets, optimizers = training_copies(*current, self._optimizer)
            p = self.params
            steps, losses, samples = 0, [], 0
            for _, closed in rounds:
                for site_id, buffer in closed.items():
                    samples += len(buffer)
                    for _ in range(p.epochs):
                        for begin in range(0, len(buffer), p.batch_size):
                            chunk = buffer[begin : begin + p.batch_size]
                            x = as_batch([c[0] for c in chunk])
                            arms = torch.tensor([c[1] for c in chunk])
                            rewards = torch.tensor([c[2] for c in chunk], dtype=torch.float32)
                            probs = torch.softmax(nets[site_id](x), dim=1)
                            logp = torch.log(probs[torch.arange(len(chunk)), arms] + LOG_EPSILON)
                            loss = -(rewards * logp).mean()
                            optimizers[site_id].zero_grad()
                            loss.backward()
                            optimizers[site_id].step()
                            steps += 1
                            losses.append(float(loss.detach()))
            for net in nets.values():
                net.zero_grad(set_to_none=True)
            with self.lock:
                self.nets, self.optimizers = nets, optimizers
                last = rounds[-1][0]  # observe may have dropped some meanwhile: remove by number
                self.rounds = [r for r in self.rounds if r[0] > last]
                self.trained_steps += steps
        return TrainReport(
            samples=samples,
            steps=steps,
            seconds=time.perf_counter() - start,
            loss=float(np.mean(losses)) if losses else None,
        )

    # -- persistence ----------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "nets": {s: net.state_dict() for s, net in self.nets.items()},
            "optimizers": {s: opt.state_dict() for s, opt in self.optimizers.items()},
            "u": {s: list(u) for s, u in self.u.items()},
            "noise": self.noise.get_state(),
            "buffers": _pack_round(self.buffers),
            "rounds": [_pack_round(r) for _, r in self.rounds],
            "round_numbers": [n for n, _ in self.rounds],
            "dropped_rounds": self.dropped_rounds,
            "trained_steps": self.trained_steps,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for s, net in self.nets.items():
            net.load_state_dict(state["nets"][s])
            self.optimizers[s] = self._optimizer(net)
            self.optimizers[s].load_state_dict(state["optimizers"][s])
            u = [t.clone() for t in state["u"][s]]
            if [t.shape for t in u] != [w.shape for w in net.parameters()]:
                raise ValueError(f"state's U for site {s!r} does not match the network")
            self.u[s] = u
        self.buffers = _unpack_round(state["buffers"], self.nets)
        self.rounds = [
            (int(n), _unpack_round(r, self.nets)) for n, r in zip(state["round_numbers"], state["rounds"], strict=True)
        ]
        if "noise" in state:  # a snapshot from before the noise came from this generator lacks it
            self.noise.set_state(state["noise"].clone())
        self.dropped_rounds = int(state["dropped_rounds"])
        self.trained_steps = int(state["trained_steps"])


def _pack_round(buffers: dict[str, list[Sample]]) -> dict[str, Any]:
    import torch

    packed: dict[str, Any] = {}
    for site_id, samples in buffers.items():
        inputs = torch.from_numpy(np.stack([s[0] for s in samples])) if samples else torch.zeros(0, dtype=torch.uint8)
        packed[site_id] = {
            "inputs": inputs,
            "arms": [s[1] for s in samples],
            "rewards": [s[2] for s in samples],
        }
    return packed


def _unpack_round(packed: dict[str, Any], sites) -> dict[str, list[Sample]]:
    buffers: dict[str, list[Sample]] = {}
    for site_id in sites:
        entry = packed[site_id]
        inputs = entry["inputs"].numpy()
        buffers[site_id] = [
            (inputs[i].copy(), int(arm), float(reward))
            for i, (arm, reward) in enumerate(zip(entry["arms"], entry["rewards"], strict=True))
        ]
    return buffers
