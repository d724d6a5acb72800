"""Reuse gates per program and camera: the decision the policy service owns (and a router without one).

Each (program, camera) has its own ``ReuseGate``: cameras differ in noise and in how often their
scenes change, programs in how stable their answers are. A request brings the outcome of the
camera's last run with it (did the answer change?), which the gate learns before it decides, so
the self-supervision costs no message of its own; a label for a reused frame comes as an outcome
on its own (``learn``). The gates' states can be taken (``changed``) to be stored, and restored.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmprog.contract import ReuseObservation, ReuseOutcome, ReuseReply, ReuseRequest
from fmprog.streams.reuse import ReuseFeatures, ReuseGate, ReuseParams


class ReuseSettings(BaseModel):
    """How the reuse gates decide (a service's setting, e.g. ``FMPROG_POLICY_REUSE='{"tolerance": 0.05}'``);
    what is left unset is the gate's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerance: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Reuse a camera's last answer while the estimated chance that it changed is below this (0.08).",
    )
    exploration: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="The share of the frames a gate would reuse that run anyway, so that it keeps learning (0.05).",
    )

    def params(self) -> ReuseParams:
        return ReuseParams(**self.model_dump(exclude_none=True))


def features(observation: ReuseObservation) -> ReuseFeatures:
    return ReuseFeatures(mean_diff=observation.mean_diff, changed=observation.changed, age=observation.age)


def observation(features: ReuseFeatures) -> ReuseObservation:
    return ReuseObservation(mean_diff=features.mean_diff, changed=features.changed, age=features.age)


class CameraGates:
    """The reuse gates of every (program, camera), at most ``max_gates`` (the least recently used
    forgotten first); thread-safe."""

    def __init__(self, params: ReuseParams | None = None, *, max_gates: int = 4096, seed: int | None = None):
        self.params = params or ReuseParams()
        self.max_gates = max_gates
        self._seed = seed
        self._gates: OrderedDict[tuple[str, str], ReuseGate] = OrderedDict()
        self._changed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def _gate(self, program_id: str, camera: str, max_age: int | None) -> ReuseGate:
        """The camera's gate (a new one from the defaults when it has none); ``max_age`` the bound
        its frames ask for now (None: keep the gate's)."""
        key = (program_id, camera)
        gate = self._gates.get(key)
        if gate is None:
            params = self.params if max_age is None else dataclasses.replace(self.params, max_age=max_age)
            gate = self._gates[key] = ReuseGate(params, seed=self._seed)
            while len(self._gates) > self.max_gates:
                self._changed.discard(self._gates.popitem(last=False)[0])
        elif max_age is not None and gate.params.max_age != max_age:  # the stream's own bound, as it asks now
            gate.params = dataclasses.replace(gate.params, max_age=max_age)
        self._gates.move_to_end(key)
        self._changed.add(key)
        return gate

    def decide(self, program_id: str, request: ReuseRequest) -> ReuseReply:
        """Learn the camera's last outcome, if the request brings one, then decide on its frame."""
        with self._lock:
            gate = self._gate(program_id, request.camera, request.max_age)
            if request.outcome is not None:
                gate.learn(features(request.outcome.features), request.outcome.unchanged)
            choice = gate.decide(features(request.features))
        return ReuseReply(
            reuse=choice.reuse, propensity=choice.propensity, p_change=choice.p_change, reason=choice.reason
        )

    def learn(self, program_id: str, outcome: ReuseOutcome) -> None:
        with self._lock:
            self._gate(program_id, outcome.camera, None).learn(features(outcome.features), outcome.unchanged)

    def forget(self, program_id: str) -> None:
        with self._lock:
            for key in [key for key in self._gates if key[0] == program_id]:
                del self._gates[key]
                self._changed.discard(key)

    def summary(self, program_id: str) -> dict[str, dict[str, Any]]:
        """Per camera of the program, what its gate decided and learned."""
        with self._lock:
            return {key[1]: gate.summary() for key, gate in self._gates.items() if key[0] == program_id}

    def changed(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The states of the gates that changed since the last call: (program, camera, state)."""
        with self._lock:
            taken = [(key[0], key[1], self._gates[key].state()) for key in self._changed if key in self._gates]
            self._changed.clear()
        return taken

    def restore(self, program_id: str, camera: str, state: dict[str, Any]) -> None:
        """Put back a stored gate (ValueError for a state that is not one)."""
        gate = ReuseGate.from_state(state)
        mine = self.params  # what it learned is kept; how it decides is as configured now
        gate.params = dataclasses.replace(gate.params, tolerance=mine.tolerance, exploration=mine.exploration)
        with self._lock:
            self._gates[(program_id, camera)] = gate
