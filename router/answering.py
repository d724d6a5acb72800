"""Answering a frame: run the program under what ``router.deciding`` decided, record the answer
with its trace.

The executor gets the decision's runner (``FrameDecision.runner``: a mapping of a backend per call
site, checked once, by the executor, against the program's candidates and the backends; or a
``GateDecider`` over the policy's gates) and, per call site, the alternates: a backend call that
fails is retried (``retries`` times), then tried on the site's other candidates, nearest in cost
first; the trace records every attempt. The trace is the runtime's own
(``fmprog.program.Invocation``), stored and returned as it is. This is synchronous on purpose: the
service runs it in a thread pool, since backend calls block. With ``workers`` the program runs in
a pool of worker processes (``fmprog.program.workers``) that kills a run at its deadline; the
backend calls are still made here, in the answering thread, and a killed run's answer is charged
for them and credits the sites it executed (memo hits included).

A run that stops with a ``backend_error`` because no backend its last call tried could be reached
(``unreachable``: no connection, a timeout, no replica, an open circuit; not a refusal of the call
or a malformed answer) says so (:meth:`Answerer.attempt`): the backend calls are watched as they
are made, in the answering thread, so the failures are judged from the exceptions themselves, not
from the trace's text.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pybreaker import STATE_OPEN, CircuitBreaker

from fmprog.backends.base import Backend, BackendRegistry, FunctionModel
from fmprog.backends.functions import FUNCTIONS
from fmprog.program import ExecutionLimits, Executor, InvalidDecision, Program, Trace
from fmprog.program.workers import WorkerPool
from router.deciding import FrameDecision, fallback_decision, frame_decision
from router.errors import DecisionRejected, FrameRejected
from router.programs import ProgramRegistry
from router.schemas import FrameRecord, FrameResult, ProgramPublic, ProgramStopped
from router.store import utc_now
from router.tenants import DEFAULT_TENANT

RETRY_AFTER_S = 5.0
"""When to try a frame again whose backends could not be reached, when none of their clients says
how long it skips them (an open circuit's cool-down)."""
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
"""HTTP statuses of a backend that could not serve now: the Serve proxy with no replica behind it,
or a backend deployment whose engine failed (503)."""


@dataclass(frozen=True)
class Unreached:
    """A run that stopped with a ``backend_error`` because none of the backends its last call
    tried could be reached: the call site, those backends (in the order tried) and how long until
    trying again makes sense."""

    site: str
    backends: list[str]
    retry_after_s: float


def unreachable(failure: BaseException, model: object) -> bool:
    """Whether a failed backend call says the backend could not be reached now, rather than that
    it refused the call or answered wrongly: its client is skipping it (its circuit is open, after
    failures in a row), or the client got no reply (no connection, a timeout, a call through a Ray
    handle that failed: its error's ``status`` is None and it is ``retryable``), or the reply was a
    502, 503 or 504 (``UNAVAILABLE_STATUSES``); for a model in this process, a ConnectionError or
    TimeoutError. A refusal (a 4xx), a 500 or anything else is the backend's answer."""
    if _circuit_open(model):
        return True
    if isinstance(failure, ConnectionError | TimeoutError):
        return True
    if not hasattr(failure, "status"):
        return False
    status = failure.status
    if status is None:
        return getattr(failure, "retryable", False) is True
    return status in UNAVAILABLE_STATUSES


def cool_down_left(model: object) -> float | None:
    """How many seconds the backend's client goes on skipping it, when its circuit is open: what is
    left of its circuit breaker's reset timeout (the pybreaker ``breaker`` of the client whose
    ``circuit_open`` the model carries). None when the circuit is closed or the client has none."""
    client = getattr(getattr(model, "circuit_open", None), "__self__", None)
    breaker = getattr(client, "breaker", None)
    if not isinstance(breaker, CircuitBreaker) or breaker.current_state != STATE_OPEN:
        return None
    opened_at = getattr(getattr(breaker, "_state_storage", None), "opened_at", None)
    if opened_at is None:
        return None
    return max(0.0, breaker.reset_timeout - (datetime.now(UTC) - opened_at).total_seconds())


def _circuit_open(model: object) -> bool:
    circuit_open = getattr(model, "circuit_open", None)
    return bool(circuit_open()) if callable(circuit_open) else False


class _Calls(threading.local):
    """The backend calls of the run in this thread, as they are made: the backend, and what it
    raised (None: it answered). None outside a run."""

    def __init__(self) -> None:
        self.made: list[tuple[str, BaseException | None]] | None = None

    def note(self, backend: str, failure: BaseException | None) -> None:
        if self.made is not None:
            self.made.append((backend, failure))


def _watched(backends: BackendRegistry, calls: _Calls) -> BackendRegistry:
    """The backends, each call noted in ``calls`` (the model is looked up at each call, so a
    model's method replaced later is the one called)."""
    return BackendRegistry([Backend(backend.spec, _watched_model(backend, calls)) for backend in backends.values()])


def _watched_model(backend: Backend, calls: _Calls) -> Any:
    method = FUNCTIONS[backend.function].method
    model = backend.model

    def call(*arguments: Any) -> Any:
        try:
            result = getattr(model, method)(*arguments)
        except Exception as exc:
            calls.note(backend.name, exc)
            raise
        calls.note(backend.name, None)
        return result

    return FunctionModel(backend.function, call, repr(model), circuit_open=getattr(model, "circuit_open", None))


def unreached(
    trace: Trace, made: list[tuple[str, BaseException | None]], backends: BackendRegistry
) -> Unreached | None:
    """Why the run stopped, when it stopped with a ``backend_error`` because none of the backends
    its last call tried could be reached (``unreachable``), or ran out of time waiting for them (a
    ``timeout`` whose last call's attempts all failed so); None otherwise. ``made`` is the run's
    backend calls with what each raised; the last call's attempts are the trace's failed
    invocations after its last successful one, matched with the last calls made (None as well
    when they do not match: a call the runtime refused before making it). An attempt the run had
    no time left to send (``called`` False) says nothing either way, but at least one attempt
    must have been sent."""
    if trace.error is None or trace.error.kind not in ("backend_error", "timeout"):
        return None
    tail = []
    for invocation in reversed(trace.invocations):
        if invocation.ok:
            break
        tail.append(invocation)
    tail.reverse()
    if not tail or len(made) < len(tail):
        return None
    last = made[len(made) - len(tail) :]
    if [name for name, _ in last] != [invocation.backend for invocation in tail]:
        return None
    sent = [(name, failure) for name, failure in last if getattr(failure, "called", True)]
    if not sent or any(failure is None or not unreachable(failure, backends[name].model) for name, failure in sent):
        return None
    names = list(dict.fromkeys(name for name, _ in sent))
    waits = [cool_down_left(backends[name].model) for name in names]
    retry_after_s = min(RETRY_AFTER_S if wait is None else wait for wait in waits)
    return Unreached(site=tail[-1].site, backends=names, retry_after_s=max(1.0, retry_after_s))


class Answerer:
    """Answers frames of registered programs with the given backends and records every answer;
    with ``workers`` (> 0) each program runs in one of that many worker processes, each limited to
    ``worker_memory_mb`` of address space (in this process when 0)."""

    def __init__(
        self,
        programs: ProgramRegistry,
        backends: BackendRegistry,
        *,
        limits: ExecutionLimits | None = None,
        retries: int = 1,
        retry_backoff_s: tuple[float, float] = (0.0, 0.0),
        workers: int = 0,
        worker_memory_mb: int = 1536,
    ):
        self.programs = programs
        self.store = programs.store
        self.backends = backends
        self._calls = _Calls()
        watched = _watched(backends, self._calls)
        self.executor: Executor | WorkerPool = (
            WorkerPool(
                watched,
                limits,
                workers=workers,
                retries=retries,
                retry_backoff_s=retry_backoff_s,
                memory_mb=worker_memory_mb,
            )
            if workers > 0
            else Executor(watched, limits, retries=retries, retry_backoff_s=retry_backoff_s)
        )

    def close(self) -> None:
        """Stop the worker processes, if programs run in them."""
        if isinstance(self.executor, WorkerPool):
            self.executor.close()

    def fixed_decision(self, program: ProgramPublic, backends: Mapping[str, str] | None) -> FrameDecision:
        """A decision of ``backends`` for a frame of ``program``, or, when None, the cheapest
        fallback (the router's decisions are ``router.deciding``'s; this is for tools and tests)."""
        if backends is None:
            return frame_decision(program, fallback_decision(program), self.backends, fallback=True)
        return frame_decision(program, backends, self.backends)

    def answer(
        self,
        program_id: str,
        frame: np.ndarray,
        decision: Mapping[str, str] | None,
        *,
        frame_id: str | None = None,
        decision_id: str | None = None,
    ) -> FrameResult:
        """Run the program on ``frame`` under ``decision`` (:meth:`fixed_decision`) and record the
        answer: :meth:`run`, then :meth:`record`. Raises NotFound for an unknown program, and what
        :meth:`run` raises."""
        public, program = self.programs.compiled(program_id)
        decided = self.fixed_decision(public, decision)
        record = self.run(public, program, frame, decided, frame_id=frame_id, decision_id=decision_id)
        return self.record(record, tenant=public.tenant)

    def run(
        self,
        public: ProgramPublic,
        program: Program,
        frame: np.ndarray,
        decision: FrameDecision,
        *,
        frame_id: str | None = None,
        decision_id: str | None = None,
    ) -> FrameRecord:
        """:meth:`attempt`'s answer."""
        record, _ = self.attempt(public, program, frame, decision, frame_id=frame_id, decision_id=decision_id)
        return record

    def attempt(
        self,
        public: ProgramPublic,
        program: Program,
        frame: np.ndarray,
        decision: FrameDecision,
        *,
        frame_id: str | None = None,
        decision_id: str | None = None,
    ) -> tuple[FrameRecord, Unreached | None]:
        """Run the program on ``frame`` under ``decision`` (its runner, ``FrameDecision.runner``,
        with its alternates); the answer as ``decision_id`` (a new id when None; the router mints
        it first when it asks the policy, so both know the decision by the same id), not stored yet.

        The executor checks the decision's backends, once: DecisionRejected for a decision that
        does not fit the program's candidates or the backends; FrameRejected for a frame that is
        not an RGB uint8 image. A program that stops while running is an answer too: ``error``
        says why; with it, when it stopped because no backend its last call tried could be
        reached, which those were (``Unreached``; None otherwise).
        """
        try:
            self._calls.made = []
            trace = self.executor.run(
                program, frame, decision.runner(), decision.alternates, candidates=decision.candidates
            )
        except InvalidDecision as exc:  # not a candidate, or a candidate these backends do not serve
            raise DecisionRejected(str(exc)) from None
        except ValueError as exc:  # the decision and the alternates fit, so this is the frame
            raise FrameRejected(str(exc)) from None
        finally:
            made, self._calls.made = self._calls.made or [], None
        record = _record(public, decision, trace, frame_id, decision_id or uuid.uuid4().hex)
        return record, unreached(trace, made, self.backends)

    def record(
        self, record: FrameRecord, charge_window: datetime | None = None, *, tenant: str = DEFAULT_TENANT
    ) -> FrameResult:
        """Store the answer of ``tenant``'s program (with ``charge_window``, its cost charged to its
        program's budget in that window); what the client gets back."""
        self.store.add_frame(record, charge_window, tenant=tenant)
        return FrameResult(
            decision_id=record.id,
            program_id=record.program_id,
            frame_id=record.frame_id,
            answer=record.answer,
            decision=record.decision,
            fallback=record.fallback,
            trace=record.trace,
            cost=record.cost,
            latency_s=record.latency_s,
            error=record.error,
            propensity=record.propensity,
            reused=record.reuse is not None and record.reuse.reused,
            reused_from=None if record.reuse is None else record.reuse.reused_from,
        )


def _record(
    program: ProgramPublic, decision: FrameDecision, trace: Trace, frame_id: str | None, decision_id: str
) -> FrameRecord:
    site_costs: dict[str, list[float]] = {}
    for invocation in trace.invocations:
        site_costs.setdefault(invocation.site, []).append(invocation.cost)
    return FrameRecord(
        id=decision_id,
        program_id=program.id,
        kind=program.kind,
        frame_id=frame_id,
        decision=decision.backends,
        fallback=decision.fallback,
        answer=trace.answer,
        error=ProgramStopped(**trace.error.model_dump()) if trace.error else None,
        trace=trace.invocations,
        executed_sites=trace.executed_sites,
        site_costs={site: math.fsum(costs) for site, costs in site_costs.items()},
        cost=trace.cost,
        latency_s=trace.latency_s,
        status="answered",
        created_at=utc_now(),
        propensity=1.0 if decision.fallback else None,  # the fallback's, without chance; the policy's: off_policy
    )
