"""The router's domain service: everything behind its HTTP routes, with no HTTP in it.

It registers programs (and their policies, checked by the policy service first), answers frames
(read the program, decide while decoding the frame: ``router.deciding``, the policy's decision or
the fallback; run the program under it: ``router.answering``; record, label), takes feedback (the
task reward, for the policy with the executed sites and their costs, and for a gated answer a
record per invocation; queued in the outbox, which a background thread delivers, batched, and
keeps while the policy is down) and keeps the metrics.

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
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
from pydantic import ValidationError

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import BackendCatalog
from fmprog.contract import ExpiredDecisions, Feedback, PolicySpec
from fmprog.images import ImageError, check_image, decode_image
from fmprog.program import ExecutionLimits, Program
from fmprog.program import workers as program_pool
from fmprog.rewards import RewardConfig, score_answer
from fmprog.streams.reuse import ReuseParams
from router.answering import Answerer, Unreached
from router.budgets import budget_state, window_start
from router.cameras import Cameras, CameraView
from router.deciding import Deciding, FallbackRule, FrameDecision, PendingDecision
from router.errors import (
    BackendsUnavailable,
    BudgetExhausted,
    Conflict,
    Expired,
    FrameRejected,
    LabelRejected,
    NotFound,
    PolicyInvalid,
    SynthesisFailed,
    Unavailable,
)
from router.feedback import FeedbackHandler
from router.gating import invocation_records
from router.labels import LabelRequests, label_value
from router.metrics import RouterMetrics
from router.off_policy import evaluate_program, logged_decision
from router.outbox import Courier, Outbox
from router.policy_client import PolicyPort, PolicyRejected, PolicyUnavailable
from router.programs import ProgramRegistry
from router.schemas import (
    BudgetState,
    DeadLetter,
    EvaluationReport,
    EvaluationRequest,
    FeedbackBatch,
    FeedbackIn,
    FeedbackItem,
    FeedbackResult,
    FrameRecord,
    FrameResult,
    LabelBudget,
    ProgramCreate,
    ProgramPublic,
    TeacherRun,
)
from router.settings import DEFAULT_LAMBDA
from router.store import Pruned, QueuedMessage, Store, utc_now
from router.synthesis.synthesizer import ProgramSynthesizer
from router.tenants import OPERATOR, Caller

logger = logging.getLogger(__name__)


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
            retries=retries,
            retry_backoff_s=retry_backoff_s,
            workers=workers,
            worker_memory_mb=program_worker_memory_mb,
        )
        self.feedback_handler = FeedbackHandler(store, rewards, label_window_s)
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
        self.deciding = Deciding(
            policy,
            self.metrics,
            available=backends,
            check=self.answerer.executor.check_decision,
            frame_inputs=self.programs.frame_input,
            fallback=fallback,
            threads=decide_threads,
            breaker_failures=breaker_failures,
            breaker_reset_s=breaker_reset_s,
            breaker_probe_s=breaker_probe_s,
            reuse_params=reuse_params,
        )
        self.cameras = Cameras(self.deciding.reuse)
        self.metrics.watch_quality(store.quality)
        self.metrics.watch_programs(store.program_info)
        self.metrics.watch_outbox(outbox.pending)
        for name in backends:  # backends skipped after failures in a row (their clients' circuit breakers)
            circuit_open = getattr(backends[name].model, "circuit_open", None)
            if circuit_open is not None:
                self.metrics.watch_backend_circuit(name, circuit_open)
        self._delivery = threading.Lock()
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
        self.deciding.local_gates.forget(program_id)
        self._deliver_now()

    def close(self) -> None:
        """Stop the threads that ask the policy and run teachers (waiting for those in flight), the
        probe of the policy's readiness, the program workers, and the outbox's delivery thread
        (after its last round, which offers the policy what the teachers labelled too)."""
        self.deciding.close()
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
    ) -> FrameResult:
        """Answer one frame (PNG or JPEG bytes) of a registered program, in one pass: read the
        program (compiled once), decide while decoding the frame, run, record, label.

        The frame's header is checked first: a frame the router refuses (not a PNG or JPEG, more
        pixels than the limit) never reaches the policy, whose refusal would cost a round trip. Then
        the policy decides (``router.deciding``: on the same bytes, or on nothing, while this thread
        decodes the frame; on its thumbnail once decoded): the policy's round trip is most of what
        the router adds to the backends' time. A frame of a named ``camera`` goes to its reuse gate
        first (:meth:`answer_frame`). Another tenant's program is NotFound to ``caller``."""
        if camera is not None:
            try:
                frame = decode_image(image)
            except ImageError as exc:
                raise FrameRejected(f"image: {exc}") from None
            return self.answer_frame(program_id, frame, frame_id=frame_id, camera=camera, encoded=image, caller=caller)
        started = time.perf_counter()
        public, program = self._compiled(program_id, caller)  # NotFound before any work
        budget = self._budget(public)  # BudgetExhausted for a program that refuses frames past it
        read = time.perf_counter()
        try:
            check_image(image)  # its header alone, before the policy is asked
        except ImageError as exc:
            raise FrameRejected(f"image: {exc}") from None
        pending = self.deciding.ask(public, budget, image)  # the policy asked while the frame is decoded
        try:
            frame = decode_image(image)
        except ImageError as exc:
            pending.cancel()
            raise FrameRejected(f"image: {exc}") from None
        pending.decoded(frame)
        decoded = time.perf_counter()
        self.metrics.answer_stage.labels("program").observe(read - started)
        self.metrics.answer_stage.labels("decode").observe(decoded - read)
        return self._run(public, program, frame, budget, pending, frame_id, started, None)

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
    ) -> FrameResult:
        """Answer a decoded frame (an RGB uint8 array): a stream's, or one of a named ``camera``.

        With a ``camera``, the reuse gate first compares the frame with the camera's last frame
        that ran the program: when it reuses that answer the frame is answered at once, cost 0,
        under its own decision id (a label for it teaches the gate). Otherwise the program runs as
        for any frame, the policy deciding on what it reads of the frame (``encoded``, the frame's
        bytes, when it reads them whole; JPEG when None)."""
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
        pending = self.deciding.ask(public, budget, encoded)
        pending.decoded(frame)
        return self._run(public, program, frame, budget, pending, frame_id, started, view)

    def _run(
        self,
        public: ProgramPublic,
        program: Program,
        frame: np.ndarray,
        budget: BudgetState | None,
        pending: PendingDecision,
        frame_id: str | None,
        started: float,
        view: CameraView | None,
    ) -> FrameResult:
        """Run the program on a decoded frame under its decision (being made: ``pending``) and
        record the answer. A run that stopped because none of the backends its last call tried
        could be reached is recorded all the same (a ``backend_error``, its label window open as
        any decision's), then BackendsUnavailable is raised instead of answering it."""
        stage = self.metrics.answer_stage
        waiting = time.perf_counter()
        decision = pending.decision()
        decided = time.perf_counter()

        def attempt(chosen: FrameDecision) -> tuple[FrameRecord, Unreached | None]:
            record, unreached = self.answerer.attempt(
                public, program, frame, chosen, frame_id=frame_id, decision_id=pending.decision_id
            )
            return logged_decision(record, chosen.policy), unreached

        record, unreached = self.deciding.run(public, program, decision, attempt)
        ran = time.perf_counter()
        if view is not None:
            record = self.cameras.ran(view, record)
        result = self.answerer.record(record, None if budget is None else budget.window_start, tenant=public.tenant)
        if budget is not None:  # what was left before this frame, less what it cost
            self.metrics.budget_remaining.labels(public.id).set(max(0.0, budget.remaining - record.cost))
        requested, taught = self._labelling(public, record)
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

    # -- off-policy evaluation ---------------------------------------------------------------------

    def evaluate(self, program_id: str, request: EvaluationRequest, caller: Caller = OPERATOR) -> EvaluationReport:
        """Estimate each target of ``request`` on the program's last labelled decisions (NotFound
        for an unknown program, EvaluationRejected for a target the logged decisions cannot
        support): see ``router.off_policy``."""
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

    def _labelling(self, program: ProgramPublic, record: FrameRecord) -> tuple[bool, bool]:
        """Whether this answer's label is asked for, and whether the program's teacher labels it:
        the frames the policy doubts most, within the program's label budget and teacher share (a
        program with no budget asks for every label; a fallback answer, which the policy did not
        decide, is not worth a budgeted label)."""
        if program.labels is None and program.teacher is None:
            return True, False
        decision = record.policy_decision  # the policy's, logged with its answer; None for the fallback
        if decision is None:
            return program.labels is None, False
        by_doubt = program.labels is not None or (program.teacher is not None and program.teacher.pick == "doubt")
        value = label_value(decision.gates, decision.propensities, record.trace) if by_doubt else 0.0
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
        run = self.answerer.run(program, compiled, frame, self.deciding.teacher(program))
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
                self.deciding.local_gates.learn(result.program_id, outcome)
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

    def _feedback_message(self, answer: FrameRecord, label: str, reward: float) -> QueuedMessage | None:
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
        expired = self.store.expire_frames(utc_now() - timedelta(seconds=self.label_window_s), self._expiry_messages)
        for answer in expired:
            self.metrics.expired.labels(answer.program_id).inc()
        if expired:
            logger.info("expired %d decisions unlabelled after %g s", len(expired), self.label_window_s)
            self.deliver_soon()
        return len(expired)

    def _expiry_messages(self, expired: list[FrameRecord]) -> list[QueuedMessage]:
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
