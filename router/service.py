"""The router's domain service: everything behind its HTTP routes, with no HTTP in it.

It registers programs (and their policies), answers frames (a decision from the policy, or the
fallback when the policy cannot be reached; the program run against the backends), takes
feedback (the task reward, forwarded to the policy with the executed sites and their costs; kept
in the outbox when the policy is down) and keeps the metrics.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import BackendCatalog
from fmprog.images import ImageError, decode_image
from policy.rewards import RewardConfig, task_loss
from router.answering import Answerer, FallbackRule, check_decision
from router.errors import DecisionRejected, FrameRejected, SynthesisFailed, Unavailable
from router.feedback import FeedbackHandler
from router.metrics import RouterMetrics
from router.outbox import Outbox
from router.policy_client import PolicyPort, PolicyRejected, PolicyUnavailable
from router.programs import ProgramRegistry
from router.schemas import AnswerResult, FeedbackIn, FeedbackResult, ProgramCreate, ProgramPublic
from router.store import Store
from router.synthesis import ProgramSynthesizer


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
    ):
        self.store = store
        self.programs = ProgramRegistry(store, catalog, synthesizer, synthesis_off=synthesis_off)
        self.answerer = Answerer(self.programs, backends, fallback=fallback, retries=retries)
        self.feedback_handler = FeedbackHandler(store, rewards)
        self.policy = policy
        self.outbox = outbox
        self.metrics = metrics or RouterMetrics()
        self._delivery = threading.Lock()
        self._deciders = ThreadPoolExecutor(max_workers=decide_threads, thread_name_prefix="decide")

    # -- programs -------------------------------------------------------------------------------

    def register(self, request: ProgramCreate) -> ProgramPublic:
        started = time.perf_counter()
        try:
            program = self.programs.register(request)
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
        self._to_policy("register", program.id, program.model_dump(mode="json", by_alias=True))
        return program

    def delete(self, program_id: str) -> None:
        self.programs.delete(program_id)
        self._to_policy("delete", program_id, {})

    def close(self) -> None:
        """Stop the threads that ask the policy (waiting for those in flight)."""
        self._deciders.shutdown(wait=True, cancel_futures=True)

    # -- answers --------------------------------------------------------------------------------

    def answer(self, program_id: str, image: bytes, *, frame_id: str | None = None) -> AnswerResult:
        """Answer one frame (PNG or JPEG bytes) of a registered program.

        The policy decides while this thread decodes the frame: the two are independent, and the
        policy's round trip is most of what the router adds to the backends' time."""
        started = time.perf_counter()
        program = self.programs.get(program_id)  # NotFound before any work
        decision_id = uuid.uuid4().hex
        deciding = self._deciders.submit(self._decide, program, decision_id, image)
        try:
            frame = decode_image(image)
        except ImageError as exc:
            deciding.cancel()  # or, already asked, the policy refuses the same bytes: nothing is left pending
            raise FrameRejected(f"image: {exc}") from None
        decision = deciding.result()
        result = self.answerer.answer(program_id, frame, decision, frame_id=frame_id, decision_id=decision_id)
        self.metrics.answered(result, time.perf_counter() - started)
        return result

    def _decide(self, program: ProgramPublic, decision_id: str, image: bytes) -> dict[str, str] | None:
        """The policy's decision, or None (the fallback) when the policy is absent, unreachable,
        refuses (e.g. its registration of the program is still in the outbox), or answers with a
        decision that does not fit the program."""
        if self.policy is None:
            self.metrics.fallbacks.labels(program.id, "no_policy").inc()
            return None
        start = time.perf_counter()
        try:
            decision = self.policy.decide(program.id, decision_id, base64.b64encode(image).decode("ascii"))
            check_decision(program, decision)
        except PolicyRejected:
            self.metrics.fallbacks.labels(program.id, "policy_rejected").inc()
            return None
        except PolicyUnavailable:
            self.metrics.fallbacks.labels(program.id, "policy_unavailable").inc()
            return None
        except DecisionRejected:
            self.metrics.fallbacks.labels(program.id, "policy_decision_rejected").inc()
            return None
        finally:
            self.metrics.policy_latency.observe(time.perf_counter() - start)
        return decision

    # -- feedback -------------------------------------------------------------------------------

    def feedback(self, request: FeedbackIn) -> FeedbackResult:
        result = self.feedback_handler.feedback(request)
        outcome = "repeat" if result.repeat else "new"
        self.metrics.feedback.labels(result.program_id, outcome).inc()
        if not result.repeat:
            decision = self.store.get_decision(result.decision_id)
            right = task_loss(decision.kind, decision.answer, result.label) == 0
            self.metrics.labelled(result.program_id, decision.kind, decision.answer, result.label, right)
            if decision.fallback:
                return result  # the policy did not make this decision, so it has nothing to learn from it
            message = {
                "decision_id": result.decision_id,
                "reward": result.reward,
                "executed_sites": result.executed_sites,
                "costs": result.site_costs,
            }
            self._to_policy("feedback", result.program_id, message)
        return result

    # -- delivery to the policy -------------------------------------------------------------------

    def _to_policy(self, kind: str, program_id: str, payload: dict) -> None:
        """Queue a message for the policy and try to deliver the queue now (in order)."""
        if self.policy is None:
            return
        self.outbox.put(kind, program_id, payload)
        self.deliver()

    def deliver(self) -> int:
        """Deliver queued policy messages, oldest first; returns how many were delivered."""
        if self.policy is None:
            return 0
        with self._delivery:
            delivered = self.outbox.deliver(self.policy)
            self.metrics.outbox.set(self.outbox.pending())
        return delivered
