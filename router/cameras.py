"""Cameras: per program and camera, the last frame that ran the program, and the reuse decision.

At a fixed camera most frames barely differ from the one before. For a frame of a named camera (a
stream's, or ``POST /answer`` with ``camera``) the router compares it with the camera's last frame
that ran the program (``fmprog.streams.reuse``: grey 96x72 signatures) and asks the reuse gate
whether to answer it with that frame's answer: at cost 0, under a new decision id. The gate is the
policy service's (``POST /policies/{id}/reuse``; one per program and camera, learned there), or,
for a router without a policy, one in this process (``fmprog.streams.gates.CameraGates``).

Every frame that runs is an outcome for the gate at no cost: did its answer differ from the answer
the gate would have reused, at the difference it saw? That outcome rides along with the camera's
next request. A label for a reused frame is an outcome too (``outcome_of``; the service queues it
for the policy with the label, in one transaction). When the
gate cannot be asked, the frame runs: the safe choice. The cameras' last runs live in this router's
memory (at most ``max_cameras``, the least recently seen forgotten first): a restarted router, or
another one taking a stream over, runs the first frame of each camera again.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fmprog.contract import ReuseObservation, ReuseOutcome, ReuseReply, ReuseRequest
from fmprog.streams.gates import observation
from fmprog.streams.reuse import reuse_features, signature
from router.schemas import FrameRecord, ProgramPublic, ReuseRecord
from router.store import utc_now

Decide = Callable[[str, ReuseRequest], ReuseReply | None]  # None: the gate cannot be asked (run the program)


@dataclass
class _Camera:
    digest: str  # the program's source digest: a program replaced under the same id starts over
    signature: np.ndarray
    record: FrameRecord  # the last run's answer
    age: int = 0  # frames since the last run
    outcome: ReuseOutcome | None = None  # the last run's outcome, for the gate with the next request


@dataclass(frozen=True)
class CameraView:
    """What the gate made of a frame: the features it saw and its reply; ``reused`` is the frame's
    answer when it reused the last one (else the program runs, and ``Cameras.ran`` takes its answer)."""

    program_id: str
    camera: str
    digest: str
    signature: np.ndarray
    features: ReuseObservation | None  # None: the camera's first frame (nothing to reuse or learn)
    reuse: ReuseRecord | None  # the gate's decision, when it gave one
    reused: FrameRecord | None


class Cameras:
    """The last run of each (program, camera), and the gate's decisions on their frames; thread-safe."""

    def __init__(self, decide: Decide, *, max_cameras: int = 1024):
        self.decide = decide
        self.max_cameras = max_cameras
        self._cameras: OrderedDict[tuple[str, str], _Camera] = OrderedDict()
        self._lock = threading.Lock()

    def forget(self, program_id: str) -> None:
        """Drop a deleted program's cameras."""
        with self._lock:
            for key in [key for key in self._cameras if key[0] == program_id]:
                del self._cameras[key]

    def look(
        self, program: ProgramPublic, camera: str, frame: np.ndarray, max_age: int, frame_id: str | None = None
    ) -> CameraView:
        """The gate's view of a frame of ``camera``: reused (its answer ready) or to run."""
        current = signature(frame)
        key = (program.id, camera)
        with self._lock:
            state = self._cameras.get(key)
            if state is None or state.digest != program.digest:
                return CameraView(program.id, camera, program.digest, current, None, None, None)
            self._cameras.move_to_end(key)
            age = state.age + 1
            features = observation(reuse_features(current, state.signature, age))
            outcome, state.outcome = state.outcome, None
            previous = state.record
        request = ReuseRequest(camera=camera, features=features, max_age=max_age, outcome=outcome)
        reply = self.decide(program.id, request)
        if reply is None:
            return CameraView(program.id, camera, program.digest, current, features, None, None)
        reuse = ReuseRecord(
            camera=camera,
            reused=reply.reuse,
            reused_from=previous.id if reply.reuse else None,
            features=features.model_dump(),
            propensity=reply.propensity,
            p_change=reply.p_change,
            reason=reply.reason,
        )
        if not reply.reuse:
            return CameraView(program.id, camera, program.digest, current, features, reuse, None)
        with self._lock:
            state = self._cameras.get(key)
            if state is not None and state.record.id == previous.id:
                state.age = age
        reused = previous.model_copy(
            update={
                "id": uuid.uuid4().hex,
                "frame_id": frame_id,
                "fallback": False,
                "trace": [],
                "executed_sites": [],
                "site_costs": {},
                "cost": 0.0,
                "latency_s": 0.0,
                "status": "answered",
                "created_at": utc_now(),
                "propensity": reply.propensity,
                "policy_decision": None,  # the gate decided this frame, not the policy's backends
                "reuse": reuse,
            }
        )
        return CameraView(program.id, camera, program.digest, current, features, reuse, reused)

    def ran(self, view: CameraView, record: FrameRecord) -> FrameRecord:
        """Take the answer of a frame that ran: it becomes the camera's last run, and, compared with
        the answer the gate would have reused, the outcome the gate learns with the camera's next
        frame. The record, with the gate's decision attached (the off-policy log)."""
        key = (view.program_id, view.camera)
        with self._lock:
            state = self._cameras.get(key)
            outcome = None
            if view.features is not None and state is not None and state.digest == view.digest:
                same = record.error is None and state.record.error is None and record.answer == state.record.answer
                outcome = ReuseOutcome(camera=view.camera, features=view.features, unchanged=same)
            self._cameras[key] = _Camera(view.digest, view.signature, record, outcome=outcome)
            self._cameras.move_to_end(key)
            while len(self._cameras) > self.max_cameras:
                self._cameras.popitem(last=False)
        return record if view.reuse is None else record.model_copy(update={"reuse": view.reuse})

    @staticmethod
    def outcome_of(record: FrameRecord, correct: bool) -> ReuseOutcome | None:
        """What a label teaches the camera's gate: for a reused answer, whether reusing it was
        right (None for any other answer)."""
        if record.reuse is None or not record.reuse.reused:
            return None
        features = ReuseObservation.model_validate(record.reuse.features)
        return ReuseOutcome(camera=record.reuse.camera, features=features, unchanged=correct)
