"""The router's domain service: everything behind its HTTP routes, with no HTTP in it.

It registers programs (and their policies, checked by the policy service first), answers frames
(a decision from the policy, or the fallback when the policy cannot be reached or its decision
does not fit; the program run against the backends, under the decision's gates when it has them),
takes feedback (the task reward, for the policy with the executed sites and their costs, and for a
gated answer a record per invocation; queued in the outbox, which a background thread delivers,
batched, and keeps while the policy is down) and keeps the metrics.

A program may have a label budget and a teacher (``router.labels``): each answer says whether its
label is wanted, and on the frames its teacher labels the router runs the teacher's configuration
in the background and takes its answer as the label. Decisions left unlabelled past the label
window expire (``expire``, run in the background): their labels are refused from then on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta

import numpy as np
from pybreaker import (
    STATE_CLOSED,
    STATE_OPEN,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitBreakerListener,
    CircuitBreakerState,
)
from pydantic import ValidationError

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import BackendCatalog
from fmprog.contract import (
    ExpiredDecisions,
    Feedback,
    PolicyDecision,
    PolicySpec,
    ReuseReply,
    ReuseRequest,
    RewardConfig,
    score_answer,
)
from fmprog.images import ImageError, check_image, decode_image, encode_jpeg
from fmprog.program import ExecutionLimits, Program
from fmprog.program import workers as program_pool
from fmprog.streams.gates import CameraGates
from fmprog.streams.reuse import ReuseParams
from router.answering import Answerer, FallbackRule, Unreached
from router.budgets import budget_state, window_start
from router.cameras import Cameras, CameraView
from router.errors import (
    BackendsUnavailable,
    BudgetExhausted,
    Conflict,
    DecisionRejected,
    Expired,
    FrameRejected,
    LabelRejected,
    NotFound,
    PolicyInvalid,
    SynthesisFailed,
    Unavailable,
)
from router.evaluation import evaluate_program, logged_decision
from router.feedback import FeedbackHandler
from router.gating import invocation_records, runtime_trace
from router.labels import LabelRequests, label_value
from router.metrics import RouterMetrics
from router.outbox import Courier, Outbox
from router.policy_client import PolicyPort, PolicyRejected, PolicyUnavailable
from router.programs import ProgramRegistry, teacher_decision
from router.schemas import (
    AnswerRecord,
    AnswerResult,
    BudgetState,
    DeadLetter,
    EvaluationReport,
    EvaluationRequest,
    FeedbackBatch,
    FeedbackIn,
    FeedbackItem,
    FeedbackResult,
    LabelBudget,
    ProgramCreate,
    ProgramPublic,
    TeacherRun,
)
from router.settings import DEFAULT_LAMBDA
from router.store import Pruned, QueuedMessage, Store, utc_now
from router.synthesis import ProgramSynthesizer
from router.tenants import OPERATOR, Caller

logger = logging.getLogger(__name__)


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


def _visible(program: ProgramPublic, caller: Caller) -> ProgramPublic:
    """``program``, if ``caller`` may see it; another tenant's is NotFound, as an unknown one."""
    if not caller.sees(program.tenant):
        raise NotFound(f"no program with id {program.id!r}")
    return program


def backends_unavailable(unreached: Unreached, decision_id: str) -> BackendsUnavailable:
    """The error of a frame none of whose backends could be reached, naming them."""
    names = ", ".join(repr(name) for name in unreached.backends)
    return BackendsUnavailable(
        f"no backend could be reached for call site {unreached.site} ({names}); the frame is recorded as "
        f"decision {decision_id}, a backend_error",
        retry_after_s=unreached.retry_after_s,
    )


def program_pool_size(workers: int, memory_mb: int, share: float) -> int:
    """How many program workers this machine's memory allows (``pool_size``), logged with why
    when fewer than ``workers``: each may use its whole address space, ``memory_mb``."""
    size = program_pool.pool_size(workers, memory_mb, share)
    if size < workers:
        memory = program_pool.machine_memory() or 0
        logger.warning(
            "%d program workers, not %d: their address spaces (%d MB each) may add up to %g of this "
            "machine's %d MB of memory",
            size,
            workers,
            memory_mb,
            share,
            memory >> 20,
        )
    return size


class RouterService:
    def __init__(
        self,
        store: Store,
        catalog: BackendCatalog,
        backends: BackendRegistry,
        *,
        policy: PolicyPort | None,
        outbox: Outbox,
        rewards: RewardConfig | None = None,
        fallback: FallbackRule = "cheapest",
        retries: int = 1,
        decide_threads: int = 32,
        metrics: RouterMetrics | None = None,
        synthesizer: ProgramSynthesizer | None = None,
        synthesis_off: str = "no synthesizer is configured",
        breaker_failures: int = 5,
        breaker_reset_s: float = 30.0,
        breaker_probe_s: float = 1.0,
        retry_backoff_s: tuple[float, float] = (0.05, 0.2),
        program_workers: int = 0,
        program_worker_memory_mb: int = 1536,
        program_memory_share: float = 0.5,
        limits: ExecutionLimits | None = None,
        label_window_s: float | None = None,
        expiry_reward: float | None = None,
        teacher_threads: int = 2,
        teacher_queue: int = 64,
        default_lambda: float = DEFAULT_LAMBDA,
        reuse_params: ReuseParams | None = None,
        outbox_retry_s: float = 5.0,
    ):
        self.store = store
        self.programs = ProgramRegistry(
            store, catalog, synthesizer, synthesis_off=synthesis_off, default_lambda=default_lambda
        )
        workers = program_pool_size(program_workers, program_worker_memory_mb, program_memory_share)
        self.program_workers = workers  # 0: programs run in this process
        self.answerer = Answerer(
            self.programs,
            backends,
            limits=limits,
            fallback=fallback,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
            workers=workers,
            worker_memory_mb=program_worker_memory_mb,
        )
        self.feedback_handler = FeedbackHandler(store, rewards, label_window_s)
        self.local_gates = CameraGates(reuse_params)  # a router without a policy decides reuse itself
        self.cameras = Cameras(self._reuse_decide)
        self.label_window_s = label_window_s
        self.expiry_reward = expiry_reward
        self.label_requests = LabelRequests()  # per program: the frames whose label is asked for
        self.teacher_picks = LabelRequests()  # per program: the frames its teacher labels, by doubt
        self._teacher_draws = random.Random()  # or at random
        self._teachers = ThreadPoolExecutor(max_workers=teacher_threads, thread_name_prefix="teacher")
        self._teacher_slots = threading.BoundedSemaphore(teacher_queue)
        self.policy = policy
        self.outbox = outbox
        self.metrics = metrics or RouterMetrics()
        self.metrics.watch_quality(store.quality)
        self.metrics.watch_programs(store.program_info)
        self.metrics.watch_outbox(outbox.pending)
        for name in backends:  # backends skipped after failures in a row (their clients' circuit breakers)
            circuit_open = getattr(backends[name].model, "circuit_open", None)
            if circuit_open is not None:
                self.metrics.watch_backend_circuit(name, circuit_open)
        self.breaker = policy_breaker(breaker_failures, breaker_reset_s, self.metrics)
        # while the circuit is open, the policy's readiness half-opens it as soon as it is back
        self.breaker_probe = None
        if policy is not None and breaker_probe_s > 0:
            self.breaker_probe = BreakerProbe(self.breaker, policy, breaker_probe_s)
        self._delivery = threading.Lock()
        self._deciders = ThreadPoolExecutor(max_workers=decide_threads, thread_name_prefix="decide")
        # labels and expiries reach the policy from this thread, woken when they are queued
        self._courier = None if policy is None else Courier(self.deliver, retry_s=outbox_retry_s)

    # -- programs -------------------------------------------------------------------------------

    def register(self, request: ProgramCreate, caller: Caller = OPERATOR) -> ProgramPublic:
        """Register a program for the caller's tenant (see ``ProgramRegistry.register``)."""
        started = time.perf_counter()
        try:
            program = self.programs.register(
                request, self._check_policy, tell_policy=self.policy is not None, tenant=caller.tenant
            )
        except SynthesisFailed as exc:
            self.metrics.synthesised("failed", exc.attempts, time.perf_counter() - started)
            raise
        except Unavailable:
            self.metrics.synthesised("unavailable", 0, time.perf_counter() - started)
            raise
        if program.synthesis is not None:
            cached = program.synthesis.cached
            attempts = 0 if cached else program.synthesis.attempts
            self.metrics.synthesised("cached" if cached else "synthesised", attempts, time.perf_counter() - started)
        self._deliver_now()  # the registration was queued with the program
        return program

    def _check_policy(self, spec: PolicySpec) -> None:
        """Ask the policy service whether it can build this policy (PolicyInvalid, nothing stored,
        when it refuses). When it cannot be reached, the program is registered anyway: the policy
        checks the spec again when the outbox delivers it, and a spec it refuses then leaves the
        program answered by the fallback decision (``policy_rejected`` in the fallback metric)."""
        if self.policy is None:
            return
        try:
            self.policy.check(spec)
        except PolicyRejected as exc:
            raise PolicyInvalid(f"policy rejected: {exc.detail}") from None
        except PolicyUnavailable as exc:
            logger.warning("policy spec not checked, the policy is unavailable (it checks on delivery): %s", exc)

    def delete(self, program_id: str, caller: Caller = OPERATOR) -> None:
        self.owned(program_id, caller)
        self.programs.delete(program_id, tell_policy=self.policy is not None)
        self.cameras.forget(program_id)
        self.local_gates.forget(program_id)
        self._deliver_now()

    def close(self) -> None:
        """Stop the threads that ask the policy and run teachers (waiting for those in flight), the
        probe of the policy's readiness, the program workers, and the outbox's delivery thread
        (after its last round, which offers the policy what the teachers labelled too)."""
        if self.breaker_probe is not None:
            self.breaker_probe.close()
        self._deciders.shutdown(wait=True, cancel_futures=True)
        self._teachers.shutdown(wait=True, cancel_futures=True)
        self.answerer.close()
        if self._courier is not None:
            self._courier.close()

    # -- answers --------------------------------------------------------------------------------

    def answer(
        self,
        program_id: str,
        image: bytes,
        *,
        frame_id: str | None = None,
        camera: str | None = None,
        caller: Caller = OPERATOR,
    ) -> AnswerResult:
        """Answer one frame (PNG or JPEG bytes) of a registered program, in one pass: the program
        read (and compiled) once, the frame decoded once, the decision checked once, one record.

        The frame's header is checked first: a frame the router refuses (not a PNG or JPEG, more
        pixels than the limit) never reaches the policy, whose refusal would cost a round trip. Then
        the policy decides on the same bytes while this thread decodes the frame: the two are
        independent, and the policy's round trip is most of what the router adds to the backends'
        time. A frame of a named ``camera`` goes to its reuse gate first (:meth:`answer_frame`).
        Another tenant's program is NotFound to ``caller``."""
        if camera is not None:
            try:
                frame = decode_image(image)
            except ImageError as exc:
                raise FrameRejected(f"image: {exc}") from None
            return self.answer_frame(program_id, frame, frame_id=frame_id, camera=camera, encoded=image, caller=caller)
        started = time.perf_counter()
        public, program = self._compiled(program_id, caller)  # NotFound before any work
        budget = self._budget(public)  # BudgetExhausted for a program that refuses frames past it
        decision_id = uuid.uuid4().hex
        exhausted = budget is not None and budget.remaining <= 0  # the cheapest backends, without the policy
        read = time.perf_counter()
        try:
            check_image(image)  # its header alone, before the policy is asked
        except ImageError as exc:
            raise FrameRejected(f"image: {exc}") from None
        deciding = None if exhausted else self._deciders.submit(self._decide, public.id, decision_id, image)
        try:
            frame = decode_image(image)
        except ImageError as exc:
            if deciding is not None:
                deciding.cancel()  # or, already asked, the policy refuses the same bytes: nothing is left pending
            raise FrameRejected(f"image: {exc}") from None
        decoded = time.perf_counter()
        self.metrics.answer_stage.labels("program").observe(read - started)
        self.metrics.answer_stage.labels("decode").observe(decoded - read)
        return self._run(public, program, frame, budget, deciding, decision_id, frame_id, started, None)

    def answer_frame(
        self,
        program_id: str,
        frame: np.ndarray,
        *,
        frame_id: str | None = None,
        camera: str | None = None,
        encoded: bytes | None = None,
        max_age: int = 10,
        caller: Caller = OPERATOR,
    ) -> AnswerResult:
        """Answer a decoded frame (an RGB uint8 array): a stream's, or one of a named ``camera``.

        With a ``camera``, the reuse gate first compares the frame with the camera's last frame
        that ran the program: when it reuses that answer the frame is answered at once, cost 0,
        under its own decision id (a label for it teaches the gate). Otherwise the program runs as
        for any frame, the policy deciding on ``encoded`` (the frame's bytes; JPEG when None)."""
        started = time.perf_counter()
        public, program = self._compiled(program_id, caller)
        self.metrics.answer_stage.labels("program").observe(time.perf_counter() - started)
        view = None
        if camera is not None:
            view = self.cameras.look(public, camera, frame, max_age, frame_id)
            if view.reused is not None:
                result = self.answerer.record(view.reused, tenant=public.tenant)
                self.metrics.answered(result, time.perf_counter() - started, public.tenant)
                self.metrics.reused.labels(public.id).inc()
                return result
        budget = self._budget(public)
        decision_id = uuid.uuid4().hex
        exhausted = budget is not None and budget.remaining <= 0
        deciding = None
        if not exhausted:
            image = encoded if encoded is not None else encode_jpeg(frame)
            deciding = self._deciders.submit(self._decide, public.id, decision_id, image)
        return self._run(public, program, frame, budget, deciding, decision_id, frame_id, started, view)

    def _run(
        self,
        public: ProgramPublic,
        program: Program,
        frame: np.ndarray,
        budget: BudgetState | None,
        deciding: Future[PolicyDecision | None] | None,
        decision_id: str,
        frame_id: str | None,
        started: float,
        view: CameraView | None,
    ) -> AnswerResult:
        """Run the program on a decoded frame under the policy's decision (being made by
        ``deciding``; the fallback's when None) and record the answer. A run that stopped because
        none of the backends its last call tried could be reached is recorded all the same (a
        ``backend_error``, its label window open as any decision's), then BackendsUnavailable is
        raised instead of answering it."""
        stage = self.metrics.answer_stage
        waiting = time.perf_counter()
        if deciding is None:
            self.metrics.fallbacks.labels(public.id, "budget_exhausted").inc()
        decision = None if deciding is None else deciding.result()
        decided = time.perf_counter()
        exhausted = deciding is None
        backends = None if decision is None else decision.backends
        gates = None if decision is None else decision.gates
        try:
            record, unreached = self.answerer.attempt(
                public,
                program,
                frame,
                backends,
                frame_id=frame_id,
                decision_id=decision_id,
                gates=gates,
                fallback="cheapest" if exhausted else None,
            )
        except DecisionRejected:
            if backends is None:
                raise
            self.metrics.fallbacks.labels(public.id, "policy_decision_rejected").inc()
            record, unreached = self.answerer.attempt(
                public, program, frame, None, frame_id=frame_id, decision_id=decision_id
            )
        ran = time.perf_counter()
        if not record.fallback:
            record = logged_decision(record, decision)
        if view is not None:
            record = self.cameras.ran(view, record)
        result = self.answerer.record(record, None if budget is None else budget.window_start, tenant=public.tenant)
        if budget is not None:  # what was left before this frame, less what it cost
            self.metrics.budget_remaining.labels(public.id).set(max(0.0, budget.remaining - record.cost))
        requested, taught = self._labelling(public, None if record.fallback else decision, record)
        if taught:
            self._teach(public, program, frame, record.id)
        result = result.model_copy(update={"label_requested": requested, "teacher": taught})
        recorded = time.perf_counter()
        stage.labels("policy_wait").observe(decided - waiting)
        stage.labels("run").observe(ran - decided)
        stage.labels("record").observe(recorded - ran)
        self.metrics.answered(result, recorded - started, public.tenant)
        if unreached is not None:
            raise backends_unavailable(unreached, result.decision_id)
        return result

    def _decide(self, program_id: str, decision_id: str, image: bytes) -> PolicyDecision | None:
        """The policy's decision, or None (the fallback) when the policy is absent, unreachable,
        refuses (e.g. its registration of the program is still in the outbox) or is being skipped
        after failing decisions in a row (its circuit is open). Whether the decision fits the
        program is checked when it is run."""
        if self.policy is None:
            self.metrics.fallbacks.labels(program_id, "no_policy").inc()
            return None
        start = time.perf_counter()
        decision = None
        try:
            # ``calling()`` holds the breaker's lock only around its state, not the policy's round
            # trip (``CircuitBreaker.call`` would hold it and ask the policy one frame at a time).
            with self.breaker.calling():
                decision = self.policy.decide(program_id, decision_id, image)
        except CircuitBreakerError:
            self.metrics.fallbacks.labels(program_id, "policy_open_circuit").inc()
            return None  # the policy was not asked: no latency to observe
        except PolicyRejected:
            self.metrics.fallbacks.labels(program_id, "policy_rejected").inc()
        except PolicyUnavailable:
            self.metrics.fallbacks.labels(program_id, "policy_unavailable").inc()
        self.metrics.policy_latency.observe(time.perf_counter() - start)
        return decision

    def _reuse_decide(self, program_id: str, request: ReuseRequest) -> ReuseReply | None:
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
            self.metrics.fallbacks.labels(program_id, "reuse_unavailable").inc()
            return None

    # -- off-policy evaluation ---------------------------------------------------------------------

    def evaluate(self, program_id: str, request: EvaluationRequest, caller: Caller = OPERATOR) -> EvaluationReport:
        """Estimate each target of ``request`` on the program's last labelled decisions (NotFound
        for an unknown program, EvaluationRejected for a target the logged decisions cannot
        support): see ``router.evaluation``."""
        return evaluate_program(self.store, self.owned(program_id, caller), request)

    # -- cost budgets ------------------------------------------------------------------------------

    def _budget(self, program: ProgramPublic) -> BudgetState | None:
        """Where a program's cost budget stands before a frame (None without one): once it is spent
        the frame is answered with the cheapest backends, or, for a program that refuses frames
        then, BudgetExhausted is raised instead."""
        if program.budget is None:
            return None
        state = self.spending(program)
        if state.remaining <= 0 and program.budget.exhausted == "refuse":
            wait = max(1.0, (state.window_end - utc_now()).total_seconds())
            raise BudgetExhausted(
                f"program {program.id} spent its budget of {program.budget.cost:g} cost units per "
                f"{program.budget.window} ({state.spent:g} spent); frames are refused until "
                f"{state.window_end.isoformat()}",
                retry_after_s=wait,
            )
        return state

    def spending(self, program: ProgramPublic) -> BudgetState:
        """Where the program's budget stands now (it must have one)."""
        assert program.budget is not None
        now = utc_now()
        return budget_state(program.budget, now, self.store.spent(program.id, window_start(program.budget, now)))

    def list_programs(self, caller: Caller = OPERATOR, *, limit: int = 100, offset: int = 0) -> list[ProgramPublic]:
        """The programs ``caller`` sees (its tenant's; every tenant's for an admin), oldest first."""
        tenant = None if caller.admin else caller.tenant
        return self.programs.list_programs(tenant=tenant, limit=limit, offset=offset)

    def owned(self, program_id: str, caller: Caller = OPERATOR) -> ProgramPublic:
        """The stored program, if ``caller`` may see it: another tenant's is NotFound, as an unknown one."""
        return _visible(self.programs.get(program_id), caller)

    def _compiled(self, program_id: str, caller: Caller) -> tuple[ProgramPublic, Program]:
        public, program = self.programs.compiled(program_id)
        return _visible(public, caller), program

    def program(self, program_id: str, caller: Caller = OPERATOR) -> ProgramPublic:
        """The stored program, if ``caller`` may see it, with its budget's state when it has one."""
        program = self.owned(program_id, caller)
        if program.budget is None:
            return program
        return program.model_copy(update={"spending": self.spending(program)})

    # -- labels: which frames, and the teacher -----------------------------------------------------

    def _labelling(
        self, program: ProgramPublic, decision: PolicyDecision | None, record: AnswerRecord
    ) -> tuple[bool, bool]:
        """Whether this answer's label is asked for, and whether the program's teacher labels it:
        the frames the policy doubts most, within the program's label budget and teacher share (a
        program with no budget asks for every label; a fallback answer, which the policy did not
        decide, is not worth a budgeted label)."""
        if program.labels is None and program.teacher is None:
            return True, False
        if decision is None:
            return program.labels is None, False
        by_doubt = program.labels is not None or (program.teacher is not None and program.teacher.pick == "doubt")
        value = label_value(decision.gates, decision.propensities, runtime_trace(record.trace)) if by_doubt else 0.0
        if self._taught(program, value):
            return False, True
        if program.labels is None:
            return True, False
        requested = self.label_requests.wanted(program.id, program.labels, value)
        if requested:
            self.metrics.labels_requested.labels(program.id).inc()
        return requested, False

    def _taught(self, program: ProgramPublic, value: float) -> bool:
        """Whether the program's teacher labels this frame: its share, at random or by doubt."""
        teacher = program.teacher
        if teacher is None:
            return False
        if teacher.pick == "random":
            return self._teacher_draws.random() < teacher.fraction
        return self.teacher_picks.wanted(program.id, LabelBudget(fraction=teacher.fraction), value)

    def _teach(self, program: ProgramPublic, compiled: Program, frame: np.ndarray, decision_id: str) -> None:
        """Run the program's teacher on the frame in the background, its answer the label; a frame
        finding the teacher's queue full is not taught (counted as ``skipped``)."""
        if not self._teacher_slots.acquire(blocking=False):
            self.metrics.teacher_labels.labels(program.id, "skipped").inc()
            return

        def run() -> None:
            try:
                self.teach(program, compiled, frame, decision_id)
            except Exception:
                logger.exception("the teacher of program %s failed on decision %s", program.id, decision_id)
                self.metrics.teacher_labels.labels(program.id, "failed").inc()
            finally:
                self._teacher_slots.release()

        try:
            self._teachers.submit(run)
        except RuntimeError:  # shutting down
            self._teacher_slots.release()

    def teach(self, program: ProgramPublic, compiled: Program, frame: np.ndarray, decision_id: str) -> str:
        """Run the program's teacher on ``frame`` and take its answer as the label of
        ``decision_id``: its calls charged and traced (``fmprog_teacher_cost_total``; the run kept
        with the label), the label learned like a client's. Returns the outcome: ``labelled``,
        ``failed`` (the run stopped, or answered nothing the task can take as a label) or
        ``refused`` (the decision was labelled otherwise meanwhile, or expired)."""
        run = self.answerer.run(program, compiled, frame, teacher_decision(program))
        for call in run.trace:
            self.metrics.teacher_cost.labels(program.id, call.function, call.backend).inc(call.cost)
        if program.budget is not None:  # the teacher spends the program's budget too
            self.store.charge(program.id, window_start(program.budget, utc_now()), run.cost)
        teacher = TeacherRun(decision=run.decision, answer=run.answer, cost=run.cost, trace=run.trace)
        outcome = "failed"
        if run.error is None and isinstance(run.answer, (str, bool, int)) and str(run.answer).strip():
            label = ("yes" if run.answer else "no") if isinstance(run.answer, bool) else str(run.answer)
            try:
                request = FeedbackIn(decision_id=decision_id, label=label)
                labelled = self.feedback_handler.feedback(request, self._feedback_message, teacher=teacher)
            except (ValidationError, LabelRejected):
                pass
            except (Conflict, Expired, NotFound):
                outcome = "refused"
            else:
                outcome = "labelled"
                self.metrics.feedback.labels(program.id, "teacher").inc()
                if labelled.queued:
                    self.deliver_soon()
        self.metrics.teacher_labels.labels(program.id, outcome).inc()
        return outcome

    # -- feedback -------------------------------------------------------------------------------

    def feedback(self, request: FeedbackIn, caller: Caller = OPERATOR) -> FeedbackResult:
        """Take a label; a new one for a decision the policy made is queued for the policy in the
        transaction that stores it, so a router that dies right after cannot lose it (another
        router delivers the outbox, and the label sent again is a repeat). It is delivered in the
        background (``deliver_soon``), batched with the labels queued meanwhile: the client waits
        for the store, never for the policy."""
        result, queued = self._take(request, caller)
        if queued:
            self.deliver_soon()
        return result

    def _take(self, request: FeedbackIn, caller: Caller) -> tuple[FeedbackResult, bool]:
        """Take one label (see :meth:`feedback`); whether a message for the policy was queued. A
        decision of another tenant's program is NotFound to ``caller``."""
        if not caller.admin and self.store.decision_tenant(request.decision_id) != caller.tenant:
            raise NotFound(f"no decision with id {request.decision_id!r}")
        try:
            labelled = self.feedback_handler.feedback(request, self._feedback_message)
        except Expired as exc:
            self.metrics.feedback.labels(exc.program_id, "expired").inc()
            raise
        result = labelled.result
        self.metrics.feedback.labels(result.program_id, "repeat" if result.repeat else "new").inc()
        if self.policy is None and not result.repeat:
            outcome = self.cameras.outcome_of(labelled.answer, labelled.correct)
            if outcome is not None:
                self.local_gates.learn(result.program_id, outcome)
        return result, labelled.queued

    def feedback_batch(self, requests: list[FeedbackIn], caller: Caller = OPERATOR) -> FeedbackBatch:
        """Take a list of labels, each on its own (one refused does not stop the others): per label
        its outcome, in order; what was queued for the policy is delivered in the background."""
        items, queued = [], False
        for request in requests:
            try:
                result, sent = self._take(request, caller)
            except NotFound as exc:
                items.append(FeedbackItem(decision_id=request.decision_id, outcome="unknown", detail=str(exc)))
            except Conflict as exc:
                items.append(FeedbackItem(decision_id=request.decision_id, outcome="conflict", detail=str(exc)))
            except Expired as exc:
                items.append(FeedbackItem(decision_id=request.decision_id, outcome="expired", detail=str(exc)))
            except LabelRejected as exc:
                items.append(FeedbackItem(decision_id=request.decision_id, outcome="rejected", detail=str(exc)))
            else:
                queued = queued or sent
                outcome = "repeat" if result.repeat else "accepted"
                items.append(FeedbackItem(decision_id=request.decision_id, outcome=outcome, feedback=result))
        if queued:
            self.deliver_soon()
        return FeedbackBatch(results=items)

    def _feedback_message(self, answer: AnswerRecord, label: str, reward: float) -> QueuedMessage | None:
        """The policy's message for a new label, or None: no policy, or a fallback decision (the
        policy did not make it, so it has nothing to learn from it). For a reused answer, the
        outcome its camera's reuse gate learns."""
        if answer.reuse is not None and answer.reuse.reused:  # the reuse gate's decision: an outcome for it
            outcome = self.cameras.outcome_of(answer, score_answer(answer.kind, answer.answer, label).correct)
            if self.policy is None or outcome is None:
                return None  # a router without a policy teaches its own gate once the label is taken
            return QueuedMessage("reuse", answer.program_id, outcome.model_dump_json())
        if self.policy is None or answer.fallback:
            return None
        message = Feedback(
            decision_id=answer.id,
            reward=reward,
            executed_sites=answer.executed_sites,
            costs=answer.site_costs,
            invocations=invocation_records(answer, label, self.feedback_handler.rewards),
        )
        return QueuedMessage("feedback", answer.program_id, message.model_dump_json(by_alias=True))

    # -- expiry -----------------------------------------------------------------------------------

    def expire(self) -> int:
        """Expire the decisions answered more than ``label_window_s`` ago and never labelled: their
        labels are refused from now on (410), and the policy is told in the same transaction,
        through the outbox: forget them (``ExpiredDecisions``) or, with ``expiry_reward``, learn
        from each as if labelled with that task reward, charged its real costs. How many expired."""
        if self.label_window_s is None:
            return 0
        expired = self.store.expire_answers(utc_now() - timedelta(seconds=self.label_window_s), self._expiry_messages)
        for answer in expired:
            self.metrics.expired.labels(answer.program_id).inc()
        if expired:
            logger.info("expired %d decisions unlabelled after %g s", len(expired), self.label_window_s)
            self.deliver_soon()
        return len(expired)

    def _expiry_messages(self, expired: list[AnswerRecord]) -> list[QueuedMessage]:
        if self.policy is None:
            return []
        decided = [answer for answer in expired if not answer.fallback]  # fallbacks were never the policy's
        if self.expiry_reward is not None:
            return [
                QueuedMessage(
                    "feedback",
                    answer.program_id,
                    Feedback(
                        decision_id=answer.id,
                        reward=self.expiry_reward,
                        executed_sites=answer.executed_sites,
                        costs=answer.site_costs,
                    ).model_dump_json(by_alias=True),
                )
                for answer in decided
            ]
        by_program: dict[str, list[str]] = {}
        for answer in decided:
            by_program.setdefault(answer.program_id, []).append(answer.id)
        return [
            QueuedMessage("expire", program_id, ExpiredDecisions(decision_ids=ids).model_dump_json())
            for program_id, ids in by_program.items()
        ]

    # -- retention ------------------------------------------------------------------------------

    def prune(self, retention: timedelta) -> Pruned:
        """Delete decisions answered more than ``retention`` ago and their feedback (the label
        counts per program, the programs and the policy's messages stay)."""
        pruned = self.store.prune(utc_now() - retention)
        self.metrics.pruned.labels("decisions").inc(pruned.decisions)
        self.metrics.pruned.labels("feedback").inc(pruned.feedback)
        if pruned.decisions:
            logger.info("retention: pruned %d decisions and %d labels", pruned.decisions, pruned.feedback)
        return pruned

    # -- delivery to the policy -------------------------------------------------------------------

    def _dead_lettered(self, kind: str) -> None:
        self.metrics.dead_letters.labels(kind).inc()

    def dead_letters(self, caller: Caller = OPERATOR, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Policy messages the policy refused, oldest first (kept for an operator): those of the
        caller's programs, every tenant's for an admin."""
        tenant = None if caller.admin else caller.tenant
        return self.store.list_dead_letters(tenant=tenant, limit=limit, offset=offset)

    def deliver_soon(self) -> None:
        """Have the outbox's delivery thread deliver what was just queued (and committed), without
        waiting for it: the policy's latency, or its absence, is never the caller's."""
        if self._courier is not None:
            self._courier.wake()

    def _deliver_now(self) -> None:
        """Deliver what was just queued (and committed) before returning: a registration, which the
        program's first decisions need, and a delete. A failure here is logged, not the client's
        (the delivery thread retries it)."""
        try:
            self.deliver()
        except Exception:
            logger.exception("delivery to the policy failed; the outbox retries it")

    def deliver(self) -> int:
        """Deliver queued policy messages, oldest first, a program's consecutive labels in one
        request; returns how many were delivered. One delivery at a time (a registration's, or the
        delivery thread's)."""
        if self.policy is None:
            return 0
        with self._delivery:
            return self.outbox.deliver(self.policy, self._dead_lettered)
