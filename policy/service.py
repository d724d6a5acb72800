"""The policy service's domain: one policy per program, decisions, feedback, training, persistence.

No HTTP here. Deciding runs the program's policy on the frame (or on what the router sends of
it: nothing, or a thumbnail, as ``fmprog.contract.frame_input`` says) and records the decision as
pending; feedback is logged durably, then observed by the policy; a background trainer calls each
policy's ``train()`` and snapshots it. Deciding never waits for training: algorithms train on
copies and swap parameters in under a short lock.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fmprog.contract import (
    ExpiredDecisions,
    Feedback,
    FeedbackList,
    FeedbackListItem,
    FeedbackListReply,
    PolicyDecision,
    PolicySpec,
    ReuseOutcome,
    ReuseReply,
    ReuseRequest,
)
from fmprog.streams.gates import CameraGates
from policy.algorithms import build_policy, check_spec
from policy.algorithms.base import Policy
from policy.algorithms.evidence import Evidence, pooled
from policy.schemas import PolicyInfo, SpecAccepted
from policy.settings import PolicySettings
from policy.snapshots import load_policy, policy_bytes
from policy.state import PolicyState

logger = logging.getLogger(__name__)

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class UnknownPolicy(LookupError):
    """No policy is registered for that program."""


class UnknownDecision(LookupError):
    """No pending decision with that id (never made, expired, or its program was deleted)."""


class DuplicateDecision(ValueError):
    """A decision id that was used before: every decision needs an id of its own."""


class FeedbackConflict(ValueError):
    """Feedback for a decision that already received different feedback."""


@dataclass
class _Slot:
    policy: Policy
    seq: int = 0  # the last logged feedback the policy has observed
    since_snapshot: int = 0
    trained_steps: int = 0
    train_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    writing: threading.Lock = field(default_factory=threading.Lock)  # one snapshot at a time, in seq order


class PolicyMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.decisions = Counter(
            "fmprog_policy_decisions_total", "Decisions made.", ["program", "algorithm"], registry=r
        )
        self.decision_latency = Histogram(
            "fmprog_policy_decide_seconds", "Time to decide one frame.", ["algorithm"], buckets=BUCKETS, registry=r
        )
        self.feedback = Counter("fmprog_policy_feedback_total", "Feedback events.", ["program", "outcome"], registry=r)
        self.training_steps = Counter("fmprog_policy_training_steps_total", "Training steps.", ["program"], registry=r)
        self.pending = Gauge("fmprog_policy_pending_decisions", "Decisions waiting for feedback.", registry=r)
        self.expired = Counter("fmprog_policy_expired_total", "Pending decisions expired.", ["resolution"], registry=r)
        self.reuse = Counter(
            "fmprog_policy_reuse_decisions_total",
            "Reuse decisions for cameras' frames, by reason: unchanged (reused), changed, explore, max_age, first.",
            ["program", "reason"],
            registry=r,
        )
        self.restarts = Counter(
            "fmprog_service_restarts",
            "Times the supervisor (fmprog up) restarted this service after it died (set at start-up).",
            registry=r,
        )


class PolicyService:
    def __init__(self, settings: PolicySettings, state: PolicyState | None = None):
        self.settings = settings
        self.state = state or PolicyState(settings.state_dir)
        self.metrics = PolicyMetrics()
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self.reuse_gates = CameraGates(settings.reuse.params())

    # -- lifecycle ------------------------------------------------------------------------------

    def restore(self) -> int:
        """Rebuild every stored policy from its snapshot and replay the feedback logged after it.
        What :meth:`info` counts comes back with it: ``observed`` and ``last_feedback_seq`` from
        the snapshot and the replay, ``pending`` from the log, and the training (``trained_steps``,
        ``train_seconds``) that made the snapshot's parameters (training after the last snapshot
        is lost with its parameters, and done again on the replayed feedback)."""
        for program_id, spec in self.state.specs().items():
            snapshot = self.state.read_snapshot(program_id)
            if snapshot is None:
                slot = _Slot(build_policy(spec))
            else:
                try:
                    slot = _Slot(
                        load_policy(snapshot.blob),
                        seq=snapshot.seq,
                        trained_steps=snapshot.trained_steps,
                        train_seconds=snapshot.train_seconds,
                    )
                except (ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:
                    # written by a version whose state this one cannot read (a model's shape
                    # changed): rebuilt from the whole feedback log, which holds every event (an
                    # untrained policy again: its training counts start over)
                    logger.warning("snapshot of %s unreadable (%s); replaying its whole feedback log", program_id, exc)
                    slot = _Slot(build_policy(spec))
            for seq, decision, feedback in self.state.feedback_after(program_id, slot.seq):
                slot.policy.observe(decision, feedback)
                slot.seq, slot.since_snapshot = seq, slot.since_snapshot + 1
            self._slots[program_id] = slot
        for program_id, camera, gate in self.state.gates():
            try:
                self.reuse_gates.restore(program_id, camera, gate)
            except ValueError as exc:  # a gate is relearned quickly: its outcomes are every frame that runs
                logger.warning("reuse gate of %s, camera %s, unreadable (%s); it starts over", program_id, camera, exc)
        self.metrics.pending.set(self.state.pending_count())
        return len(self._slots)

    def close(self) -> None:
        for program_id in list(self._slots):
            self.snapshot(program_id)
        self.save_gates()
        self.state.close()

    # -- policies ---------------------------------------------------------------------------------

    def check(self, spec: PolicySpec) -> SpecAccepted:
        """Whether a policy can be built from ``spec`` (known algorithm, hyper-parameters it takes,
        call sites it can serve), without building or storing it; ValueError names the problem."""
        params = check_spec(spec)
        return SpecAccepted(algorithm=spec.algorithm, hyperparameters=params.model_dump(mode="json"))

    def put(self, program_id: str, spec: PolicySpec) -> PolicyInfo:
        """Create the program's policy, or replace it when the spec changed (learning restarts);
        ValueError, before anything is stored, for a spec no policy can be built from."""
        check_spec(spec)
        with self._lock:
            current = self._slots.get(program_id)
            if current is None or current.policy.spec != spec:
                if current is not None:
                    self.state.delete(program_id)
                self.state.put_spec(program_id, spec)
                self._slots[program_id] = _Slot(build_policy(spec, self._pooled_evidence()))
        self.snapshot(program_id)
        return self.info(program_id)

    def _pooled_evidence(self) -> dict[str, Evidence]:
        """What every program's policy learned, per model key, for a new policy to start from
        (algorithms that pool evidence; a program's own evidence lives in its snapshots, so the
        pool is rebuilt from them after a restart)."""
        return pooled(*(slot.policy.evidence() for slot in list(self._slots.values()) if slot.policy.pools_evidence))

    def delete(self, program_id: str) -> None:
        with self._lock:
            if self._slots.pop(program_id, None) is None:
                raise UnknownPolicy(f"no policy for program {program_id}")
        self.reuse_gates.forget(program_id)
        self.state.delete(program_id)

    def _slot(self, program_id: str) -> _Slot:
        try:
            return self._slots[program_id]
        except KeyError:
            raise UnknownPolicy(f"no policy for program {program_id}") from None

    def info(self, program_id: str) -> PolicyInfo:
        slot = self._slot(program_id)
        return PolicyInfo(
            program_id=program_id,
            algorithm=slot.policy.name,
            sites=len(slot.policy.spec.sites),
            observed=slot.policy.observed,
            pending=self.state.pending_count(program_id),
            trained_steps=slot.trained_steps,
            train_seconds=slot.train_seconds,
            last_feedback_seq=slot.seq,
            prior=slot.policy.prior_uses(),
            drifts=slot.policy.drifts(),
        )

    def programs(self) -> list[str]:
        return sorted(self._slots)

    # -- decisions and feedback -------------------------------------------------------------------

    def decide(self, program_id: str, decision_id: str, frame: np.ndarray | None) -> PolicyDecision:
        """The program's policy decides on ``frame`` (what ``fmprog.contract.frame_input`` says the
        router sends: ``None`` for an algorithm that reads no pixels, else the thumbnail or the
        frame) and the decision is kept pending under ``decision_id``. ValueError when the algorithm
        reads the frame and none was sent; DuplicateDecision when the id was used before."""
        slot = self._slot(program_id)
        start = time.perf_counter()
        decision = slot.policy.decide(frame)
        self.metrics.decision_latency.labels(slot.policy.name).observe(time.perf_counter() - start)
        if not self.state.add_pending(program_id, decision_id, decision):
            raise DuplicateDecision(f"decision id {decision_id} was used before; send a new id per decision")
        self.metrics.decisions.labels(program_id, slot.policy.name).inc()
        self.metrics.pending.inc()
        return decision.reply()

    def feedback(self, program_id: str, feedback: Feedback) -> bool:
        """Learn from feedback for a pending decision; True when it is a repeat of feedback already
        taken (nothing happens again). Different feedback for a resolved decision is a conflict."""
        if feedback.decision_id is None:
            raise ValueError("feedback needs the decision_id")
        slot = self._slot(program_id)
        # check, log and observe as one step per program: two copies of the same feedback racing
        # must not both find the decision unresolved (the second would then fail to log it)
        with slot.lock:
            earlier = self.state.logged(feedback.decision_id)
            if earlier is not None:
                if earlier != feedback:
                    raise FeedbackConflict(f"decision {feedback.decision_id} already received different feedback")
                self.metrics.feedback.labels(program_id, "repeat").inc()
                return True
            pending = self.state.pending(feedback.decision_id)
            if pending is None or pending[0] != program_id:
                raise UnknownDecision(f"no pending decision {feedback.decision_id} for program {program_id}")
            decision = pending[1]
            slot.policy.check_feedback(decision, feedback)
            seq = self.state.log_feedback(program_id, feedback.decision_id, decision, feedback)
            slot.policy.observe(decision, feedback)
            slot.seq, slot.since_snapshot = seq, slot.since_snapshot + 1
        self.metrics.feedback.labels(program_id, "new").inc()
        self.metrics.pending.dec()
        return False

    def feedback_list(self, program_id: str, batch: FeedbackList) -> FeedbackListReply:
        """Learn from several feedback of one program, each on its own and in order, as
        :meth:`feedback` would (a repeat is learned once): one refused does not stop the others,
        and is answered with why. UnknownPolicy, for the whole list, for an unknown program."""
        self._slot(program_id)
        results = []
        for item in batch.feedback:
            decision_id = item.decision_id or ""
            try:
                repeat = self.feedback(program_id, item)
            except (UnknownDecision, UnknownPolicy) as exc:  # the program deleted meanwhile: the rest are unknown
                results.append(FeedbackListItem(decision_id=decision_id, outcome="unknown", detail=str(exc)))
            except FeedbackConflict as exc:
                results.append(FeedbackListItem(decision_id=decision_id, outcome="conflict", detail=str(exc)))
            except ValueError as exc:
                results.append(FeedbackListItem(decision_id=decision_id, outcome="invalid", detail=str(exc)))
            else:
                results.append(FeedbackListItem(decision_id=decision_id, outcome="repeat" if repeat else "accepted"))
        return FeedbackListReply(results=results)

    def forget(self, program_id: str, expired: ExpiredDecisions) -> int:
        """Drop the program's pending decisions whose label window closed at the router (it
        refuses their labels from then on): nothing is learned from them. Returns how many were
        pending (the others were resolved or dropped before)."""
        self._slot(program_id)  # UnknownPolicy for an unknown program
        dropped = self.state.drop_pending_of(program_id, expired.decision_ids)
        self.metrics.pending.dec(dropped)
        self.metrics.expired.labels("router").inc(dropped)
        return dropped

    def expire(self) -> int:
        """Drop the decisions that waited longer than ``pending_timeout_s`` (a backstop: the router
        expires its decisions sooner, and says so). Nothing is learned from them: a reward made up
        here would charge no cost, and bias the policy toward dear backends."""
        expired = self.state.expired(self.settings.pending_timeout_s)
        for decision_id, _program_id, _decision in expired:
            self.state.drop_pending(decision_id)
            self.metrics.pending.dec()
            self.metrics.expired.labels("timeout").inc()
        return len(expired)

    # -- reuse: a camera's frame answered with its last answer ---------------------------------------

    def reuse(self, program_id: str, request: ReuseRequest) -> ReuseReply:
        """Whether a camera's frame reuses the camera's last answer (the gate of that program and
        camera learns the outcome the request brings first); UnknownPolicy for an unknown program."""
        self._slot(program_id)
        reply = self.reuse_gates.decide(program_id, request)
        self.metrics.reuse.labels(program_id, reply.reason).inc()
        return reply

    def reuse_outcome(self, program_id: str, outcome: ReuseOutcome) -> None:
        """An outcome on its own (a label for a reused frame): the camera's gate learns it."""
        self._slot(program_id)
        self.reuse_gates.learn(program_id, outcome)

    def save_gates(self) -> int:
        """Store the reuse gates that changed; how many."""
        changed = self.reuse_gates.changed()
        if changed:
            self.state.put_gates(changed)
        return len(changed)

    # -- training and snapshots -------------------------------------------------------------------

    def train_once(self) -> int:
        """One pass of the background trainer over every policy; returns the training steps done."""
        steps = 0
        for program_id in list(self._slots):
            slot = self._slots.get(program_id)
            if slot is None:
                continue
            report = slot.policy.train()
            if report is not None and report.steps:
                slot.trained_steps += report.steps
                slot.train_seconds += report.seconds
                self.metrics.training_steps.labels(program_id).inc(report.steps)
                steps += report.steps
            if slot.since_snapshot >= self.settings.snapshot_every or (report is not None and report.steps):
                self.snapshot(program_id)
        self.save_gates()
        return steps

    def snapshot(self, program_id: str) -> None:
        slot = self._slots.get(program_id)
        if slot is None:
            return
        with slot.writing:
            with slot.lock:  # a consistent state and seq; serialising it (large networks) waits for nothing
                state, seq = slot.policy.state_dict(), slot.seq
                trained_steps, train_seconds = slot.trained_steps, slot.train_seconds
                slot.since_snapshot = 0
            self.state.write_snapshot(
                program_id,
                policy_bytes(slot.policy, state),
                seq,
                trained_steps=trained_steps,
                train_seconds=train_seconds,
            )
