"""The one interface every policy algorithm implements.

- ``decide(frame)``: a backend per call site for one frame. Fast, thread-safe, never waits for
  training (training works on copies and swaps them in under a short lock). ``frame`` is what the
  router sends for the algorithm (``fmprog.contract.frame_input``): ``None`` for an algorithm that
  reads no pixels (it accepts a frame too, and decides the same), the thumbnail for one that reads
  only a thumbnail (deciding on it as on the frame), or the frame. An algorithm that reads pixels
  refuses ``None`` (:meth:`Policy.read_frame`).
- ``observe(decision, feedback)``: records one sample (cheap; closed-form updates at most).
- ``train()``: does pending training work, if any; called from a background thread by the service.
- ``state_dict()`` / ``load_state_dict()``: everything needed to resume after a restart
  (parameters, optimizer state, buffers, RNG state, uncertainty matrices), as tensors, numbers
  and strings, so that ``torch.save`` / ``torch.load(weights_only=True)`` round-trips it. The
  state is a snapshot: later ``observe``/``train`` calls must not change it (copy what is updated
  in place), so it can be serialised after the lock is released.
"""

from __future__ import annotations

import copy
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from fmprog.contract import Feedback, PolicySpec
from fmprog.images import check_frame
from fmprog.rewards import program_reward, sub_rewards
from policy.algorithms.drift import ModelDrift
from policy.algorithms.evidence import PriorUse
from policy.decisions import PendingDecision


class TrainReport(BaseModel):
    """What one call of ``train()`` did."""

    model_config = ConfigDict(extra="forbid")

    samples: int = 0
    steps: int = 0
    seconds: float = 0.0
    loss: float | None = None


class NoParams(BaseModel):
    """An algorithm without hyper-parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(ABC):
    """A learned (or fixed) choice of one backend per call site."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    max_sites: ClassVar[int | None] = None
    """The most call sites the algorithm serves within the router's policy timeout (``None``: as
    many as a spec may have); :func:`policy.algorithms.check_spec` refuses larger programs."""
    pools_evidence: ClassVar[bool] = False
    """Whether the algorithm starts from, and gives, evidence pooled across programs
    (:mod:`policy.algorithms.evidence`): built with ``evidence=``, read with :meth:`evidence`."""

    def __init__(self, spec: PolicySpec):
        if spec.algorithm != self.name:
            raise ValueError(f"spec names algorithm {spec.algorithm!r}, not {self.name!r}")
        self.spec = spec
        self.params: Any = self.Params.model_validate(spec.hyperparameters)
        self.check_spec(spec)
        self.rng = np.random.default_rng(spec.seed)
        self.lock = threading.RLock()
        self.observed = 0

    # -- the interface --------------------------------------------------------------------------

    @abstractmethod
    def decide(self, frame: np.ndarray | None) -> PendingDecision:
        """A backend per call site for ``frame`` (``H x W x 3`` uint8; ``None`` where the algorithm
        reads no pixels)."""

    @abstractmethod
    def observe(self, decision: PendingDecision, feedback: Feedback) -> None:
        """Record the feedback for a decision this policy made."""

    def evidence(self) -> dict[str, Any]:
        """The evidence of this policy's own observations per model key, for other programs'
        policies to start from (algorithms that pool evidence)."""
        return {}

    def prior_uses(self) -> list[PriorUse]:
        """Where each of the policy's models started, for algorithms that start from a shipped
        prior (:mod:`policy.algorithms.evidence`); empty for the others."""
        return []

    def drifts(self) -> list[ModelDrift]:
        """What each model's drift watch has seen, for algorithms that watch for drift
        (:mod:`policy.algorithms.drift`); empty for the others."""
        return []

    def train(self) -> TrainReport | None:
        """Do pending training work; ``None`` when there was none."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume; subclasses extend :meth:`_state` / :meth:`_load_state`."""
        with self.lock:
            state = {"rng": json.dumps(self.rng.bit_generator.state), "observed": self.observed}
            state.update(self._state())
            return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self.lock:
            self.rng.bit_generator.state = json.loads(state["rng"])
            self.observed = int(state["observed"])
            self._load_state(state)

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        return None

    @classmethod
    def check_spec(cls, spec: PolicySpec) -> None:
        """Refuse specs the algorithm cannot serve (raise ``ValueError``); called by
        :func:`policy.algorithms.check_spec` before a policy is built."""
        return None

    # -- helpers for subclasses -----------------------------------------------------------------

    def read_frame(self, frame: np.ndarray | None) -> np.ndarray:
        """The frame an algorithm that reads pixels decides on, checked (:func:`as_frame`);
        ValueError when there is none."""
        if frame is None:
            raise ValueError(f"algorithm {self.name} reads the frame: send one")
        return as_frame(frame)

    def check_feedback(self, decision: PendingDecision, feedback: Feedback) -> None:
        if decision.algorithm != self.name:
            raise ValueError(f"decision was made by {decision.algorithm!r}, not {self.name!r}")
        known = {s.id for s in self.spec.sites}
        unknown = sorted(set(feedback.executed_sites) - known)
        if unknown:
            raise ValueError(f"feedback names unknown call site {unknown[0]!r}")

    def sub_rewards(self, feedback: Feedback) -> dict[str, float]:
        """The paper's sub-rewards ``r_i = -lambda * C_i + task / N`` of the executed sites."""
        return sub_rewards(
            feedback.task_term, feedback.costs, feedback.executed_sites, len(self.spec.sites), self.spec.lam
        )

    def program_reward(self, feedback: Feedback) -> float:
        """The paper's program reward ``R = task - lambda * C``."""
        return program_reward(feedback.task_term, feedback.total_cost, self.spec.lam)


def training_copies(
    nets: dict[str, Any], optimizers: dict[str, Any], make_optimizer: Callable[[Any], Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of per-site networks, each with a new optimizer (``make_optimizer(net)``) that carries
    the current optimizer's state: training updates these and swaps them in, so deciding never
    waits for it. The originals are never changed in place, so copying needs no lock."""
    copies = {site: copy.deepcopy(net) for site, net in nets.items()}
    fresh = {}
    for site, net in copies.items():
        fresh[site] = make_optimizer(net)
        fresh[site].load_state_dict(copy.deepcopy(optimizers[site].state_dict()))
    return copies, fresh


def check_unread_frame(frame: np.ndarray | None) -> None:
    """For an algorithm that reads no pixels: ``None``, or a frame that passes the frame check
    (:func:`as_frame`), which is then ignored."""
    if frame is not None:
        as_frame(frame)


def as_frame(frame: np.ndarray) -> np.ndarray:
    """A frame as ``H x W x 3`` uint8 (floats in 0..255 are clipped and converted), checked by the
    one frame check (``fmprog.images.check_frame``; ImageError, a ValueError, names the problem)."""
    array = np.asarray(frame)
    if array.dtype != np.uint8 and np.issubdtype(array.dtype, np.number):
        array = np.clip(array, 0, 255).astype(np.uint8)
    return check_frame(array)
