"""Deciding a frame: which backend runs each call site, in one place (no HTTP in it).

A frame's *decision* is the policy's or the router's fallback. The policy is asked through its
``PolicyPort`` (``router.policy_client``), in a thread of its own, under the decision id the router
mints first (so both know the decision by the same id). It is sent what its algorithm reads of the
frame (``fmprog.contract.frame_input`` of the program's spec): nothing (asked at once), the frame's
bytes as received (asked at once, while the router decodes the frame; a frame received decoded, a
stream's, as JPEG) or a thumbnail (``fmprog.images.thumbnail``, as PNG; asked once the frame is
decoded).

The fallback decision is the configured rule's backend at every call site (the cheapest, or the
dearest: ``largest``). It replaces the policy's, counted in ``fmprog_fallbacks`` with its reason:

- ``no_policy``: the router runs without a policy;
- ``policy_open_circuit``: the policy failed decisions in a row and is being skipped (its circuit
  breaker, ``policy_breaker``, is open; a ``BreakerProbe`` half-opens it once the policy is ready);
- ``policy_rejected``: the policy refused (e.g. its registration of the program is still in the
  outbox);
- ``policy_unavailable``: it could not be reached or failed (a timeout, no connection, a 5xx);
- ``budget_exhausted``: the program's cost budget is spent: the cheapest backends, without asking;
- ``policy_decision_rejected``: the policy's decision does not fit the program (a backend that is
  not a candidate of its site or that these backends do not serve, checked once by the executor;
  gates that do not fit, checked here): the frame runs under the fallback instead.

A camera's frames first go to its reuse gate (``router.cameras``): the policy's, or this router's
own without a policy; one that cannot be asked runs the frame (``reuse_unavailable``).

What the executor runs a frame under (``FrameDecision.runner``) is the decision's backends, a
mapping, or, when the policy sent gates, a ``GateDecider`` over them (the backends deciding the
sites without a gate). A backend call that keeps failing is tried on its site's other candidates
that these backends serve, nearest in cost first (``alternates``). The program's teacher runs
under ``teacher_decision``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
from pybreaker import (
    STATE_CLOSED,
    STATE_OPEN,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitBreakerListener,
    CircuitBreakerState,
)

from fmprog.backends.config import Function
from fmprog.contract import FrameInput, PolicyDecision, ReuseReply, ReuseRequest, SiteGate
from fmprog.images import encode_jpeg, encode_png, thumbnail
from fmprog.program import GateDecider, InvalidDecision, Program
from fmprog.streams.gates import CameraGates
from fmprog.streams.reuse import ReuseParams
from router.errors import BackendsRejected, DecisionRejected
from router.metrics import RouterMetrics
from router.policy_client import PolicyPort, PolicyRejected, PolicyUnavailable
from router.schemas import BudgetState, ProgramPublic

logger = logging.getLogger(__name__)

FallbackRule = Literal["cheapest", "largest"]
FallbackReason = Literal[
    "no_policy",
    "policy_open_circuit",
    "policy_rejected",
    "policy_unavailable",
    "budget_exhausted",
    "policy_decision_rejected",
    "reuse_unavailable",
]
"""Why a frame (or, ``reuse_unavailable``, a camera's reuse gate) got no decision of the policy's:
the ``reason`` label of ``fmprog_fallbacks``."""

DecisionCheck = Callable[[Program, Mapping[str, str], Mapping[str, Collection[str]]], None]
"""Raises InvalidDecision unless a decision names, for every call site of the program, one of the
site's candidates that the backends serve (the executor's ``check_decision``)."""

FrameInputs = Callable[[ProgramPublic], FrameInput]
"""What of a frame a program's policy reads (``ProgramRegistry.frame_input``)."""

Result = TypeVar("Result")


# -- decisions over a program's candidates ---------------------------------------------------------


def candidates(program: ProgramPublic) -> dict[str, list[str]]:
    """The backends each call site of a registered program may use."""
    return {site.id: [c.name for c in site.candidates] for site in program.call_sites}


def fallback_decision(program: ProgramPublic, rule: FallbackRule = "cheapest") -> dict[str, str]:
    """A static decision over the program's candidates: the cheapest (or the most expensive,
    ``"largest"``) backend at every call site; ties go to the first candidate."""
    pick = min if rule == "cheapest" else max
    return {site.id: pick(site.candidates, key=lambda c: c.cost).name for site in program.call_sites}


def teacher_decision(program: ProgramPublic) -> dict[str, str]:
    """The decision the program's teacher runs under: per call site, the backend its teacher names
    for the site's function, else the site's dearest candidate. BackendsRejected for a named
    backend that is not a candidate of every call site of its function."""
    named = program.teacher.backends if program.teacher is not None else "largest"
    decision = {}
    for site in program.call_sites:
        choice = named.get(site.function) if isinstance(named, dict) else None
        names = [c.name for c in site.candidates]
        if choice is not None and choice not in names:
            raise BackendsRejected(
                f"the teacher names {choice!r} for {site.function.value}, which is not a candidate of call site "
                f"{site.id} (its candidates: {', '.join(names)})"
            )
        decision[site.id] = choice or max(site.candidates, key=lambda c: c.cost).name
    return decision


def alternates(program: ProgramPublic, decision: Mapping[str, str], available: Collection[str]) -> dict[str, list[str]]:
    """Per call site, the other candidates that are available, nearest in cost to the decided
    backend first (a failed large model is best replaced by the next largest, a small one by the
    next smallest)."""
    order = {}
    for site in program.call_sites:
        costs = {c.name: c.cost for c in site.candidates}
        if decision.get(site.id) not in costs:
            continue  # not a candidate: the executor's check of the decision says so
        decided = math.log(costs[decision[site.id]])
        others = [name for name in costs if name != decision[site.id] and name in available]
        order[site.id] = sorted(others, key=lambda name: abs(math.log(costs[name]) - decided))
    return order


def gate_problem(gates: Mapping[str, SiteGate], program: ProgramPublic) -> str | None:
    """Why these gates do not fit the program (None when they do): every gated site must be one of
    its call sites, every backend a gate can pick one of the site's candidates, and only VQA, LLM
    and OCR sites may escalate."""
    sites = {site.id: site for site in program.call_sites}
    for site_id, gate in gates.items():
        site = sites.get(site_id)
        if site is None:
            return f"gates name call site {site_id!r}, which the program does not have"
        names = {c.name for c in site.candidates}
        strays = sorted(gate.backends - names)
        if strays:
            return f"gate of call site {site_id} can pick {strays[0]!r}, which is not one of its candidates"
        if gate.escalate_to is not None and site.function == Function.detect:
            return f"gate of call site {site_id} escalates, but detections cannot be re-asked"
    return None


@dataclass(frozen=True)
class FrameDecision:
    """What one frame runs under: a backend per call site (``backends``, recorded as the frame's
    decision), whether that is the router's fallback, the policy's decision when it made this one
    (its gates and propensities, logged with the answer), each site's candidates and, per site,
    the backends to try when the decided one keeps failing (``alternates``)."""

    backends: dict[str, str]
    fallback: bool
    candidates: dict[str, list[str]]
    alternates: dict[str, list[str]]
    policy: PolicyDecision | None = None

    @property
    def gates(self) -> Mapping[str, SiteGate] | None:
        """The policy's gates, when it sent them."""
        return None if self.policy is None else self.policy.gates

    def runner(self) -> Mapping[str, str] | GateDecider:
        """What the executor runs the program under: a new ``GateDecider`` over the gates (one
        serves one run), the backends deciding the sites without a gate; else the backends."""
        gates = self.gates
        return GateDecider(gates, self.backends) if gates else self.backends


def frame_decision(
    program: ProgramPublic,
    backends: Mapping[str, str],
    available: Collection[str],
    *,
    fallback: bool = False,
    policy: PolicyDecision | None = None,
) -> FrameDecision:
    """The decision of ``backends`` for a frame of ``program``, its alternates among the
    ``available`` backends (``policy``: the policy's decision they are the backends of)."""
    return FrameDecision(
        backends=dict(backends),
        fallback=fallback,
        candidates=candidates(program),
        alternates=alternates(program, backends, available),
        policy=policy,
    )


# -- the policy's circuit breaker --------------------------------------------------------------------


def policy_breaker(failures: int, reset_s: float, metrics: RouterMetrics) -> PolicyBreaker:
    """A circuit breaker around the policy's decisions (pybreaker): after ``failures`` decisions in a
    row that the policy did not give (PolicyUnavailable: a timeout, no connection, a 5xx) it opens,
    and for at most ``reset_s`` frames get the fallback decision without asking; then one frame
    tries the policy again (half-open), which closes it or opens it for another ``reset_s``. A
    ``BreakerProbe`` half-opens it sooner, as soon as the policy says it is ready. A refusal
    (PolicyRejected, a 4xx) is an answer, so it counts as a success."""
    return PolicyBreaker(
        fail_max=failures,
        reset_timeout=reset_s,
        exclude=[PolicyRejected],
        listeners=[_BreakerWatch(metrics)],
        throw_new_error_on_trip=False,  # the call that trips it fails as itself (policy_unavailable)
        name="policy",
    )


class PolicyBreaker(CircuitBreaker):
    """The policy's circuit breaker, which can be half-opened early, only while it is still open."""

    def try_again(self) -> bool:
        """Half-open the circuit if it is open (the next frame asks the policy); whether it was."""
        with self._lock:  # the check and the change as one: a frame may close it meanwhile
            if self.current_state != STATE_OPEN:
                return False
            self.half_open()
            return True


class _BreakerWatch(CircuitBreakerListener):
    """Logs the breaker's state changes and keeps ``fmprog_policy_circuit_open`` current."""

    def __init__(self, metrics: RouterMetrics):
        self.metrics = metrics

    def state_change(
        self, cb: CircuitBreaker, old_state: CircuitBreakerState | None, new_state: CircuitBreakerState
    ) -> None:
        opened = new_state.name == STATE_OPEN
        self.metrics.policy_circuit_open.set(1 if opened else 0)
        if opened:
            logger.warning(
                "the policy failed %d decisions in a row: frames get the fallback decision for at most %g s",
                cb.fail_max,
                cb.reset_timeout,
            )
        else:
            logger.info("policy circuit %s", new_state.name)


class BreakerProbe(CircuitBreakerListener):
    """While the policy's circuit is open, asks the policy whether it is ready every
    ``interval_s``, from a daemon thread started the first time the circuit opens; once it is, the
    circuit is half-opened, so the next frame asks the policy (and, answered, closes it) instead of
    waiting out the breaker's reset timeout, which stays the upper bound. A restarted policy so
    decides frames again within about ``interval_s`` of being ready.

    A policy that says it is ready but then fails the frame that tries it costs that frame its
    timeout; each such failure in a row doubles the interval (up to the reset timeout), so a policy
    whose readiness is wrong is tried no more often than without probes, in the end. The policy's
    ``ready()`` failing or raising (a port that cannot tell) is "not ready"."""

    def __init__(self, breaker: PolicyBreaker, policy: PolicyPort, interval_s: float):
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.breaker = breaker
        self.policy = policy
        self.interval_s = interval_s
        self.wait_s = interval_s  # the interval now: longer after trials that failed
        self.probes = 0  # readiness asked, for tests and logs
        self._trial = False  # whether the circuit is half-open because a probe found the policy ready
        self._lock = threading.Lock()
        self._opened = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        breaker.add_listener(self)

    def state_change(
        self, cb: CircuitBreaker, old_state: CircuitBreakerState | None, new_state: CircuitBreakerState
    ) -> None:
        """Called by the breaker (under its lock): start probing when it opens."""
        with self._lock:
            if new_state.name == STATE_OPEN:
                if self._trial:  # the policy said it was ready, but failed the frame that tried it
                    self.wait_s = min(2 * self.wait_s, max(self.interval_s, cb.reset_timeout))
                self._trial = False
                if self._stopped.is_set():
                    return
                if self._thread is None:
                    self._thread = threading.Thread(target=self._probe, name="policy-probe", daemon=True)
                    self._thread.start()
                self._opened.set()
            elif new_state.name == STATE_CLOSED:
                self._trial = False
                self.wait_s = self.interval_s

    def _probe(self) -> None:
        while True:
            self._opened.wait()
            if self._stopped.is_set():
                return
            self._opened.clear()
            while self.breaker.current_state == STATE_OPEN:
                if self._stopped.wait(self.wait_s):
                    return
                if self.breaker.current_state != STATE_OPEN or not self._ask():
                    continue
                with self._lock:
                    self._trial = True
                if self.breaker.try_again():
                    logger.info("the policy is ready again: the next frame asks it (circuit half-open)")
                else:
                    with self._lock:
                        self._trial = False

    def _ask(self) -> bool:
        self.probes += 1
        try:
            return bool(self.policy.ready())
        except Exception as exc:  # a port without readiness, or one that breaks: not ready
            logger.debug("the policy's readiness could not be asked: %s", exc)
            return False

    def close(self) -> None:
        """Stop probing (waiting for a probe in flight, briefly)."""
        with self._lock:
            self._stopped.set()
            self._opened.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5.0)


# -- deciding frames ---------------------------------------------------------------------------------


class PendingDecision:
    """One frame's decision while it is being made: the policy asked (or to be asked once the frame
    is decoded, :meth:`decoded`), or, without asking, the fallback for ``reason``. ``decision_id``
    names the decision, and the frame's record with it."""

    def __init__(
        self,
        deciding: Deciding,
        program: ProgramPublic,
        decision_id: str,
        reads: FrameInput | None,
        image: bytes | None,
        reason: FallbackReason | None,
    ):
        self.deciding = deciding
        self.program = program
        self.decision_id = decision_id
        self.reads = reads  # None: the policy is not asked (``reason`` says why)
        self.reason = reason
        self._asked: Future[PolicyDecision | None] | None = None
        if reads is not None and (reads.pixels == "none" or (reads.pixels == "full" and image is not None)):
            self._ask(None if reads.pixels == "none" else image)

    def _ask(self, image: bytes | None) -> None:
        self._asked = self.deciding.asking(self.program.id, self.decision_id, image)

    def decoded(self, frame: np.ndarray) -> None:
        """The frame, decoded: a policy that reads its thumbnail (or, received decoded, the frame
        itself) is asked now."""
        if self.reads is None or self._asked is not None:
            return
        if self.reads.pixels == "thumbnail":
            self._ask(encode_png(thumbnail(frame, self.reads.side)))
        else:  # the whole frame, with no bytes received: a stream's or a camera's
            self._ask(encode_jpeg(frame))

    def cancel(self) -> None:
        """The frame will not run (it could not be decoded): do not ask the policy if not asked yet.
        Asked already on the same bytes, the policy refuses them too; asked with no frame, it keeps
        the decision pending until its own timeout drops it."""
        if self._asked is not None:
            self._asked.cancel()

    def decision(self) -> FrameDecision:
        """What the frame runs under, once the policy decided (waiting for it): its decision, or
        the fallback (counted with its reason) when it gave none."""
        program, deciding = self.program, self.deciding
        if self.reason is not None:
            deciding.fell_back(program.id, self.reason)
            rule: FallbackRule | None = "cheapest" if self.reason == "budget_exhausted" else None
            return deciding.fallback(program, rule)
        assert self._asked is not None, "the frame was not decoded (PendingDecision.decoded)"
        policy = self._asked.result()
        if policy is None:
            return deciding.fallback(program)
        return frame_decision(program, policy.backends, deciding.available, policy=policy)


class Deciding:
    """Decides frames: asks the policy (``policy``; None for a router without one) in up to
    ``threads`` threads, behind its circuit breaker (opened after ``breaker_failures`` failures in
    a row, for at most ``breaker_reset_s``; probed for readiness every ``breaker_probe_s`` while
    open, never when 0), else the fallback by ``fallback``; and decides the reuse of cameras'
    frames (the policy's gate, or this router's own, ``local_gates``, without a policy).

    ``available`` is the backends this router serves (their names), ``check`` the executor's check
    of a decision and ``frame_inputs`` what each program's policy reads of a frame."""

    def __init__(
        self,
        policy: PolicyPort | None,
        metrics: RouterMetrics,
        *,
        available: Collection[str],
        check: DecisionCheck,
        frame_inputs: FrameInputs,
        fallback: FallbackRule = "cheapest",
        threads: int = 32,
        breaker_failures: int = 5,
        breaker_reset_s: float = 30.0,
        breaker_probe_s: float = 1.0,
        reuse_params: ReuseParams | None = None,
    ):
        self.policy = policy
        self.metrics = metrics
        self.available = available
        self.check = check
        self.frame_inputs = frame_inputs
        self.fallback_rule: FallbackRule = fallback
        self.local_gates = CameraGates(reuse_params)  # a router without a policy decides reuse itself
        self.breaker = policy_breaker(breaker_failures, breaker_reset_s, metrics)
        # while the circuit is open, the policy's readiness half-opens it as soon as it is back
        self.breaker_probe = None
        if policy is not None and breaker_probe_s > 0:
            self.breaker_probe = BreakerProbe(self.breaker, policy, breaker_probe_s)
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decide")

    def close(self) -> None:
        """Stop the probe of the policy's readiness and the threads that ask the policy (waiting
        for those in flight)."""
        if self.breaker_probe is not None:
            self.breaker_probe.close()
        self._threads.shutdown(wait=True, cancel_futures=True)

    def ask(self, program: ProgramPublic, budget: BudgetState | None, image: bytes | None = None) -> PendingDecision:
        """Start deciding a frame of ``program`` (``image``: its bytes as received, None for a frame
        received decoded) under a new decision id: the policy asked at once when it reads no pixels
        or the frame as received, else once the frame is decoded (``PendingDecision.decoded``);
        not asked when there is none (``no_policy``) or the program's ``budget`` is spent
        (``budget_exhausted``: the cheapest backends)."""
        decision_id = uuid.uuid4().hex
        reason: FallbackReason | None = None
        if budget is not None and budget.remaining <= 0:
            reason = "budget_exhausted"
        elif self.policy is None:
            reason = "no_policy"
        reads = None if reason is not None else self.frame_inputs(program)
        return PendingDecision(self, program, decision_id, reads, image, reason)

    def asking(self, program_id: str, decision_id: str, image: bytes | None) -> Future[PolicyDecision | None]:
        """The policy's decision for a frame (sent ``image``), being asked in a thread of its own."""
        return self._threads.submit(self._decide, program_id, decision_id, image)

    def _decide(self, program_id: str, decision_id: str, image: bytes | None) -> PolicyDecision | None:
        """The policy's decision, or None (the fallback) when it is unreachable, refuses (e.g. its
        registration of the program is still in the outbox) or is being skipped after failing
        decisions in a row (its circuit is open). Whether the decision fits the program is checked
        when it is run."""
        assert self.policy is not None
        start = time.perf_counter()
        decision = None
        try:
            # ``calling()`` holds the breaker's lock only around its state, not the policy's round
            # trip (``CircuitBreaker.call`` would hold it and ask the policy one frame at a time).
            with self.breaker.calling():
                decision = self.policy.decide(program_id, decision_id, image)
        except CircuitBreakerError:
            self.fell_back(program_id, "policy_open_circuit")
            return None  # the policy was not asked: no latency to observe
        except PolicyRejected:
            self.fell_back(program_id, "policy_rejected")
        except PolicyUnavailable:
            self.fell_back(program_id, "policy_unavailable")
        self.metrics.policy_latency.observe(time.perf_counter() - start)
        return decision

    def fell_back(self, program_id: str, reason: FallbackReason) -> None:
        """Count a decision the policy did not give, with why (``fmprog_fallbacks``)."""
        self.metrics.fallbacks.labels(program_id, reason).inc()

    def fallback(self, program: ProgramPublic, rule: FallbackRule | None = None) -> FrameDecision:
        """The fallback decision for a frame of ``program``: by ``rule``, else the configured one."""
        decision = fallback_decision(program, rule or self.fallback_rule)
        return frame_decision(program, decision, self.available, fallback=True)

    def teacher(self, program: ProgramPublic) -> FrameDecision:
        """The decision the program's teacher runs under (``teacher_decision``)."""
        return frame_decision(program, teacher_decision(program), self.available)

    def run(
        self,
        program: ProgramPublic,
        compiled: Program,
        decision: FrameDecision,
        attempt: Callable[[FrameDecision], Result],
    ) -> Result:
        """Run a frame of ``program`` under ``decision`` by ``attempt`` (which raises
        DecisionRejected for a decision that does not fit the program: the executor's check). A
        policy's decision that does not fit, or whose gates do not (checked here first), is
        replaced by the fallback, which runs instead (``policy_decision_rejected``); a fallback
        that does not fit raises DecisionRejected."""
        if decision.fallback:
            return attempt(decision)
        try:
            self._check_gates(program, compiled, decision)
            return attempt(decision)
        except DecisionRejected:
            self.fell_back(program.id, "policy_decision_rejected")
        return attempt(self.fallback(program))

    def _check_gates(self, program: ProgramPublic, compiled: Program, decision: FrameDecision) -> None:
        """DecisionRejected unless a gated decision fits: its backends (the executor checks each
        backend a gate picks as it is picked, not these) and its gates."""
        gates = decision.gates
        if not gates:
            return
        try:
            self.check(compiled, decision.backends, decision.candidates)
        except InvalidDecision as exc:
            raise DecisionRejected(str(exc)) from None
        problem = gate_problem(gates, program)
        if problem is not None:
            raise DecisionRejected(problem)

    def reuse(self, program_id: str, request: ReuseRequest) -> ReuseReply | None:
        """The reuse gate's decision on a camera's frame: the policy's (None, and the frame runs,
        when it cannot be asked), or this router's own gates' without a policy."""
        if self.policy is None:
            return self.local_gates.decide(program_id, request)
        try:
            with self.breaker.calling():
                return self.policy.reuse(program_id, request)
        except CircuitBreakerError:
            return None
        except PolicyUnavailable:  # refused too: e.g. the program's registration still in the outbox
            self.fell_back(program_id, "reuse_unavailable")
            return None
