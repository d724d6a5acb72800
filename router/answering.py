"""Answering a frame: run the program under a decision, record the answer with its trace.

The decision (a backend for every call site) comes from the policy (the ``backends`` of its
``PolicyDecision``) as a plain mapping, checked once, by the executor, against the program's
candidates and the backends. When none is available the configured fallback decision is used
instead, and the result says so. When the policy's decision carries gates (per call site, linear
scores evaluated at each invocation, ``router.gating``), the program runs under a ``GateDecider``
instead, the ``backends`` deciding the sites without a gate; the gates are checked against the
candidates once, as the mapping is. A backend call that fails is retried (``retries`` times),
then tried on the site's other candidates, nearest in cost first; the trace records every attempt.
This is synchronous on purpose: the service runs it in a thread pool, since backend calls block.
With ``workers`` the program runs in a pool of worker processes (``fmprog.program.workers``) that
kills a run at its deadline; the backend calls are still made here, in the answering thread, and a
killed run's answer is charged for them and credits the sites it executed (memo hits included).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Literal

import numpy as np

from fmprog.backends.base import BackendRegistry
from fmprog.contract import SiteGate
from fmprog.program import ExecutionLimits, Executor, GateDecider, InvalidDecision, Program, Trace
from fmprog.program.workers import WorkerPool
from router.errors import DecisionRejected, FrameRejected
from router.gating import gate_problem
from router.programs import ProgramRegistry
from router.schemas import AnswerRecord, AnswerResult, InvocationPublic, ProgramPublic, ProgramStopped
from router.store import utc_now

FallbackRule = Literal["cheapest", "largest"]


def fallback_decision(program: ProgramPublic, rule: FallbackRule = "cheapest") -> dict[str, str]:
    """A static decision over the program's candidates: the cheapest (or the most expensive,
    ``"largest"``) backend at every call site; ties go to the first candidate."""
    pick = min if rule == "cheapest" else max
    return {site.id: pick(site.candidates, key=lambda c: c.cost).name for site in program.call_sites}


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


def candidates(program: ProgramPublic) -> dict[str, list[str]]:
    """The backends each call site of a registered program may use."""
    return {site.id: [c.name for c in site.candidates] for site in program.call_sites}


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
        fallback: FallbackRule = "cheapest",
        retries: int = 1,
        retry_backoff_s: tuple[float, float] = (0.0, 0.0),
        workers: int = 0,
        worker_memory_mb: int = 1536,
    ):
        self.programs = programs
        self.store = programs.store
        self.executor: Executor | WorkerPool = (
            WorkerPool(
                backends,
                limits,
                workers=workers,
                retries=retries,
                retry_backoff_s=retry_backoff_s,
                memory_mb=worker_memory_mb,
            )
            if workers > 0
            else Executor(backends, limits, retries=retries, retry_backoff_s=retry_backoff_s)
        )
        self.fallback = fallback

    def close(self) -> None:
        """Stop the worker processes, if programs run in them."""
        if isinstance(self.executor, WorkerPool):
            self.executor.close()

    def answer(
        self,
        program_id: str,
        frame: np.ndarray,
        decision: Mapping[str, str] | None,
        *,
        frame_id: str | None = None,
        decision_id: str | None = None,
    ) -> AnswerResult:
        """Run the program on ``frame`` under ``decision`` and record the answer: :meth:`run`, then
        :meth:`record`. Raises NotFound for an unknown program, and what :meth:`run` raises."""
        public, program = self.programs.compiled(program_id)
        record = self.run(public, program, frame, decision, frame_id=frame_id, decision_id=decision_id)
        return self.record(record)

    def run(
        self,
        public: ProgramPublic,
        program: Program,
        frame: np.ndarray,
        decision: Mapping[str, str] | None,
        *,
        frame_id: str | None = None,
        decision_id: str | None = None,
        gates: Mapping[str, SiteGate] | None = None,
        fallback: FallbackRule | None = None,
    ) -> AnswerRecord:
        """Run the program on ``frame`` under ``decision`` (the fallback decision when None: by
        ``fallback``, else the configured rule), or,
        with ``gates``, under a ``GateDecider`` over them and ``decision``; the
        answer as ``decision_id`` (a new id when None; the router mints it first when it asks the
        policy, so both know the decision by the same id), not stored yet.

        The decision is checked here, once: DecisionRejected for one that does not fit the
        program's candidates or the backends; FrameRejected for a frame that is not an RGB uint8
        image. A program that stops while running is an answer too: ``error`` says why.
        """
        is_fallback = decision is None
        chosen = dict(fallback_decision(public, fallback or self.fallback) if decision is None else decision)
        allowed = candidates(public)
        try:
            runner: Mapping[str, str] | GateDecider = chosen
            if gates and not is_fallback:
                self.executor.check_decision(program, chosen, allowed)
                problem = gate_problem(gates, public)
                if problem is not None:
                    raise InvalidDecision(problem)
                runner = GateDecider(gates, chosen)
            trace = self.executor.run(
                program, frame, runner, alternates(public, chosen, self.executor.backends), candidates=allowed
            )
        except InvalidDecision as exc:  # not a candidate, or a candidate these backends do not serve
            raise DecisionRejected(str(exc)) from None
        except ValueError as exc:  # the decision and the alternates fit, so this is the frame
            raise FrameRejected(str(exc)) from None
        return _record(public, chosen, is_fallback, trace, frame_id, decision_id or uuid.uuid4().hex)

    def record(self, record: AnswerRecord, charge_window: datetime | None = None) -> AnswerResult:
        """Store the answer (with ``charge_window``, its cost charged to its program's budget in
        that window); what the client gets back."""
        self.store.add_answer(record, charge_window)
        return AnswerResult(
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
    program: ProgramPublic,
    decision: dict[str, str],
    fallback: bool,
    trace: Trace,
    frame_id: str | None,
    decision_id: str,
) -> AnswerRecord:
    site_costs: dict[str, list[float]] = {}
    for invocation in trace.invocations:
        site_costs.setdefault(invocation.site_id, []).append(invocation.cost)
    return AnswerRecord(
        id=decision_id,
        program_id=program.id,
        kind=program.kind,
        frame_id=frame_id,
        decision=decision,
        fallback=fallback,
        answer=trace.answer,
        error=ProgramStopped(**trace.error.model_dump()) if trace.error else None,
        trace=[InvocationPublic(site=i.site_id, **i.model_dump(exclude={"site_id"})) for i in trace.invocations],
        executed_sites=trace.executed_sites,
        site_costs={site: math.fsum(costs) for site, costs in site_costs.items()},
        cost=trace.cost,
        latency_s=trace.latency_s,
        status="answered",
        created_at=utc_now(),
        propensity=1.0 if fallback else None,  # the fallback's, without chance; the policy's: router.evaluation
    )
