"""Run a validated program on one frame under a decision, and trace what it cost.

A *decision* maps every call site of the program to a backend of the site's function; a
``Decider`` (``fmprog.program.deciders``) chooses instead at each invocation, when it runs, and may
escalate a VQA, LLM or OCR answer to a dearer backend. Each
backend invocation is charged exactly once, to the call site the program wrote (nested
invocations, such as the detection inside ``exists``, belong to that site). Short-circuited sites
make no invocation and cost nothing.

A backend that fails (raises, or answers with something malformed) can be retried and then
replaced: with ``retries`` the decided backend is tried that many more times, then each of the
site's ``alternates`` (other backends of the same function) once, in order. Every attempt is an
invocation in the trace and is charged; ``attempt`` numbers the tries of one call and
``fallback_from`` names the decided backend when another one ran instead. The run stops with a
``backend_error`` only when every attempt failed.

Detections are memoised per run: the same detector backend asked for the same noun on the same box
(``exists("car")`` then ``find("car")``) answers from memory. Such a call is no invocation (nothing
ran, nothing is charged); the trace lists it in ``memo_hits`` and its site among the executed ones.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import islice
from time import perf_counter
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import Function
from fmprog.backends.deadline import run_deadline
from fmprog.backends.frames import answering
from fmprog.backends.functions import FUNCTIONS, Detection, MalformedResult
from fmprog.program import api
from fmprog.program.callsites import CallSite
from fmprog.program.compiler import Program, lone_surrogate, surrogate_escape
from fmprog.program.deciders import (
    MAX_ANSWER_CHARS,
    Decider,
    EarlierOutput,
    InvocationContext,
    StaticDecider,
    Vector,
    context_vector,
    escalation_vector,
)
from fmprog.program.errors import (
    BackendFailure,
    InvalidAnswer,
    InvalidChoice,
    InvalidDecision,
    ProgramHalt,
    ResourceLimitExceeded,
    SandboxViolation,
)
from fmprog.program.sandbox import ENTRY_POINT, PROGRAM_FILENAME, ExecutionLimits, RunGuards
from fmprog.vision.scope import out_of_vocabulary

Decision = Mapping[str, str]
ErrorKind = Literal[
    "runtime_error",
    "recursion",
    "step_budget",
    "timeout",
    "resource_limit",
    "sandbox_violation",
    "unsupported",
    "backend_error",
    "invalid_decision",
]


def _is_none(value: Any) -> bool:
    return value is None


class InvocationFeatures(BaseModel):
    """What a decider saw before an invocation and what the invocation answered: the features a
    policy learns from (recorded when a ``Decider`` ran the program)."""

    model_config = ConfigDict(frozen=True)

    call: int = Field(description="The call's position in the run (calls decided before it).")
    site_calls: int = Field(description="Calls this site made before this one in the run.")
    sites_left: int = Field(description="Call sites not yet run when the call was decided.")
    box: tuple[int, int, int, int] | None = Field(
        default=None, description="The patch (left, lower, right, upper) in frame coordinates; none for text calls."
    )
    area: float | None = Field(default=None, description="The patch's share of the frame's area.")
    score: float | None = Field(default=None, description="The detector score that found the patch.")
    boxes: int | None = Field(default=None, description="Detections: how many boxes were returned.")
    top_score: float | None = Field(default=None, description="Detections: the best box's score.")
    answer: str | None = Field(default=None, description="VQA, LLM, OCR: the answer (cut to 200 characters).")


class Invocation(BaseModel):
    """One backend invocation of a run: the call site it was charged to (``site``), what ran, its
    cost and latency. The same type from the run to the router's store and replies.

    A failed call is retried, then handed to another backend of the same function: each try is an
    invocation, ``attempt`` counts the tries of one backend, and ``fallback_from`` names the
    decided backend when this one ran in its place. When a ``Decider`` ran the program,
    ``features`` holds what it saw and what the invocation answered, and ``escalated_from`` the
    backend whose answer this one re-asked (both left out otherwise). ``out_of_vocabulary`` says
    why a call was outside the backend's declared vocabulary (left out when it was inside)."""

    model_config = ConfigDict(frozen=True)

    site: str = Field(description="The call site the invocation was charged to.")
    function: Function
    backend: str
    cost: float
    latency_s: float
    ok: bool = True
    attempt: int = Field(default=1, ge=1, description="1 for the first try of a call, 2 for its retry, ...")
    fallback_from: str | None = Field(default=None, description="The decided backend, when another one ran.")
    error: str | None = None
    # Set only when a Decider ran the program; left out of the dump when unset, so a run under a
    # fixed decision serialises exactly as before.
    escalated_from: str | None = Field(
        default=None,
        exclude_if=_is_none,
        description="The backend whose answer the decider re-asked this one about.",
    )
    features: InvocationFeatures | None = Field(default=None, exclude_if=_is_none)
    out_of_vocabulary: str | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Why the call was outside the backend's declared vocabulary (a noun or question it cannot "
        "see or answer): it answered anyway, as well as it could (nothing found, or 'unknown').",
    )


class MemoHit(BaseModel):
    """A detection answered from this run's memory instead of invoking the backend again."""

    model_config = ConfigDict(frozen=True)

    site_id: str
    backend: str
    call: int = Field(description="The call's position in the run, as in InvocationFeatures.call.")


def _unicode(text: str) -> str:
    """``text`` with any lone surrogate written as its escape (``\\ud800``): what a program printed
    or an error's message, which travel as UTF-8 (a lone surrogate has no UTF-8 form)."""
    if lone_surrogate(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


UnicodeText = Annotated[str, AfterValidator(_unicode)]


class ProgramError(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ErrorKind
    message: UnicodeText
    line: int | None = None


class Trace(BaseModel):
    """What one run answered (or why it failed), and every backend invocation it made."""

    answer: JsonValue = None
    error: ProgramError | None = None
    invocations: list[Invocation]
    executed_sites: list[str]
    cost: float
    latency_s: float
    steps: int
    output: UnicodeText = ""
    memo_hits: list[MemoHit] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def fallback_sites(self) -> list[str]:
        """Sites where a backend other than the decided one answered."""
        return list(dict.fromkeys(i.site for i in self.invocations if i.ok and i.fallback_from is not None))


Observer = Callable[[Invocation | MemoHit, int, str], None]
"""Told of one invocation or memo hit, with the run's steps and printed output so far."""


class Executor:
    """Runs programs against a registry of backends, within per-run limits; a failed backend
    call is retried ``retries`` times before the site's alternates are tried, each retry after a
    pause drawn uniformly from ``retry_backoff_s`` (jitter: retries of calls that failed together
    do not arrive together; none by default); with ``memoise`` (the default) a run remembers its
    detections. ``observe``, when given, is told of each invocation and memo hit as soon as it is
    recorded, with the run's steps and printed output so far (a worker process reports them as the
    run goes, so that a run stopped from outside still charges what it invoked and keeps its trace).

    A failure whose exception says ``retryable = False`` (a backend that refused the request, or
    one being skipped after failures in a row) is not retried: the alternates are tried at once."""

    def __init__(
        self,
        backends: BackendRegistry,
        limits: ExecutionLimits | None = None,
        *,
        retries: int = 0,
        memoise: bool = True,
        retry_backoff_s: tuple[float, float] = (0.0, 0.0),
        observe: Observer | None = None,
    ):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        low, high = retry_backoff_s
        if not 0 <= low <= high <= 10:
            raise ValueError(f"retry_backoff_s must be (low, high) with 0 <= low <= high <= 10, got {retry_backoff_s}")
        self.backends = backends
        self.limits = limits or ExecutionLimits()
        self.retries = retries
        self.memoise = memoise
        self.retry_backoff_s = (float(low), float(high))
        self.observe = observe

    def _pause_before_retry(self, guards: RunGuards) -> None:
        """Sleep a random pause from ``retry_backoff_s``, never past the run's deadline."""
        low, high = self.retry_backoff_s
        if high > 0:
            time.sleep(max(0.0, min(random.uniform(low, high), guards.deadline - perf_counter())))

    def check_decision(
        self, program: Program, decision: Decision, candidates: Mapping[str, Collection[str]] | None = None
    ) -> None:
        """InvalidDecision unless ``decision`` names, for every call site and no other, a backend of
        these backends serving the site's function; with ``candidates`` (the backends each site may
        use, e.g. a registered program's), also one of the site's candidates."""
        problems = []
        for site in program.call_sites:
            name = decision.get(site.id)
            problem = (
                f"no backend for call site {site.id}" if name is None else self._choice_problem(site, name, candidates)
            )
            if problem is not None:
                problems.append(problem)
        unknown = sorted(set(decision) - {s.id for s in program.call_sites})
        if unknown:
            problems.append(f"decision names sites the program does not have: {', '.join(unknown)}")
        if problems:
            raise InvalidDecision("; ".join(problems))

    def _choice_problem(
        self, site: CallSite, name: str, candidates: Mapping[str, Collection[str]] | None
    ) -> str | None:
        """Why ``name`` may not serve ``site`` (None when it may)."""
        if candidates is not None and name not in candidates.get(site.id, ()):
            return f"backend {name!r} is not a candidate for call site {site.id}"
        if name not in self.backends:
            return f"unknown backend {name!r} for call site {site.id}"
        if self.backends[name].function != site.function:
            return (
                f"backend {name!r} serves {self.backends[name].function.value}, "
                f"but call site {site.id} needs {site.function.value}"
            )
        return None

    def run(
        self,
        program: Program,
        image: Any,
        decision: Decision | Decider,
        alternates: Mapping[str, Sequence[str]] | None = None,
        *,
        candidates: Mapping[str, Collection[str]] | None = None,
    ) -> Trace:
        """Run ``program`` on ``image``; ``alternates`` lists, per call site, the backends to try
        in order when the decided one keeps failing. A decision (a mapping, or a ``StaticDecider``)
        is checked once, here (see :meth:`check_decision`, with ``candidates``); a ``Decider`` is
        asked at each invocation and each backend it names is checked when named (an unfit one
        stops the run with ``invalid_decision``). Raises InvalidDecision (a ValueError) for a bad
        decision or alternate and ImageError (a ValueError) for a bad image; every failure of the
        program itself is reported in the trace."""
        decision, alternates, pixels = self.prepare(program, image, decision, alternates, candidates)
        started = perf_counter()
        guards = RunGuards(self.limits, started)
        if isinstance(decision, Decider):
            run = _Run(self, program, guards, alternates, decider=decision, candidates=candidates)
        else:
            plans = {
                site.id: self._attempts(decision[site.id], alternates.get(site.id, ())) for site in program.call_sites
            }
            run = _Run(self, program, guards, alternates, plans=plans)
        answer: JsonValue = None
        error = None
        with answering(pixels), run_deadline(guards.deadline):  # the frame sent once; no call outlives the run
            try:
                namespace = guards.globals(run.routed)
                exec(program.code, namespace)
                value = namespace[ENTRY_POINT](api.Frame(pixels, run))
                answer = _AnswerJson(self.limits.max_length, self.limits.max_answer_bytes).convert(value)
            except ProgramHalt as exc:
                error = ProgramError(kind=exc.kind, message=str(exc), line=_program_line(exc))
            except RecursionError as exc:
                error = ProgramError(
                    kind="recursion", message="maximum recursion depth exceeded", line=_program_line(exc)
                )
            except MemoryError as exc:
                error = ProgramError(kind="resource_limit", message="out of memory", line=_program_line(exc))
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                error = ProgramError(kind="runtime_error", message=message, line=_program_line(exc))
        invocations = run.invocations
        return Trace(
            answer=answer,
            error=error,
            invocations=invocations,
            executed_sites=run.executed_sites,
            cost=math.fsum(i.cost for i in invocations),
            latency_s=perf_counter() - started,
            steps=guards.steps,
            output=guards.output,
            memo_hits=run.memo_hits,
        )

    def prepare(
        self,
        program: Program,
        image: Any,
        decision: Decision | Decider,
        alternates: Mapping[str, Sequence[str]] | None = None,
        candidates: Mapping[str, Collection[str]] | None = None,
    ) -> tuple[Decision | Decider, Mapping[str, Sequence[str]], np.ndarray]:
        """What a run starts from, checked: the decision (a ``StaticDecider`` unwrapped to its
        mapping, which is checked; a ``Decider`` as it is), the alternates (checked) and the frame's
        pixels (the one frame check). Raises InvalidDecision or ImageError (ValueErrors)."""
        if isinstance(decision, StaticDecider):
            decision = decision.decision
        if not isinstance(decision, Decider):
            self.check_decision(program, decision, candidates)
        alternates = alternates or {}
        self._check_alternates(program, alternates)
        return decision, alternates, api.as_pixels(image)

    def _check_alternates(self, program: Program, alternates: Mapping[str, Sequence[str]]) -> None:
        sites = {site.id: site for site in program.call_sites}
        for site_id, names in alternates.items():
            if site_id not in sites:
                raise InvalidDecision(f"alternates name a site the program does not have: {site_id}")
            for name in names:
                if name not in self.backends or self.backends[name].function != sites[site_id].function:
                    raise InvalidDecision(f"alternate {name!r} is not a {sites[site_id].function.value} backend")

    def _attempts(self, decided: str, alternates: Sequence[str]) -> list[tuple[str, int]]:
        """The (backend, attempt) tries of one call: the decided backend 1 + retries times, then
        each alternate once."""
        tries = [(decided, n) for n in range(1, self.retries + 2)]
        others = [name for name in dict.fromkeys(alternates) if name != decided]
        return tries + [(name, 1) for name in others]


class _Run:
    """One run's state; the ``Invoker`` the program API charges model calls to.

    Under a decision fixed up front (``plans`` given) each call follows its site's plan; under a
    ``Decider`` each call builds an ``InvocationContext``, asks the decider, checks its choice and
    records the context's features with the invocations. Detections are memoised per run: the
    same detector asked for the same noun on the same box answers from memory, at no cost."""

    def __init__(
        self,
        executor: Executor,
        program: Program,
        guards: RunGuards,
        alternates: Mapping[str, Sequence[str]],
        *,
        plans: Mapping[str, list[tuple[str, int]]] | None = None,
        decider: Decider | None = None,
        candidates: Mapping[str, Collection[str]] | None = None,
    ):
        self._executor = executor
        self._backends = executor.backends
        self._sites = {site.id: site for site in program.call_sites}
        self._plans: dict[Any, list[tuple[str, int]]] = dict(plans or {})
        self._decider = decider
        self._alternates = alternates
        self._candidates = candidates
        self._guards = guards
        self._site: CallSite | None = None
        self._calls = 0
        self._site_calls: dict[str, int] = {}
        self._executed: dict[str, None] = {}
        self._memo: dict[tuple[str, str, int, int, int, int], list[Detection]] = {}
        self._earlier: list[EarlierOutput] = []
        self.invocations: list[Invocation] = []
        self.memo_hits: list[MemoHit] = []

    @property
    def executed_sites(self) -> list[str]:
        return list(self._executed)

    def routed(self, site_id: str, receiver: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        """Entry point of every routed call in the program's source."""
        if receiver is None and method == "llm_query":
            target = lambda *a, **k: api.llm_query(*a, _invoker=self, **k)  # noqa: E731
        elif isinstance(receiver, api.ImagePatch):
            target = getattr(receiver, method)
        else:  # the same name on another object, e.g. "text".find("x"): an ordinary method call
            return self._guards.getattr(receiver, method)(*args, **kwargs)
        self._guards.step()
        outer, self._site = self._site, self._sites[site_id]
        try:
            return target(*args, **kwargs)
        finally:
            self._site = outer

    @property
    def function(self) -> Function:
        return self._current().function

    def _current(self) -> CallSite:
        if self._site is None:
            raise SandboxViolation("models can only be called through a routed call")
        return self._site

    def invoke(self, function: Function, *arguments: Any, patch: api.ImagePatch | None = None) -> Any:
        """Call the backend decided for this call with one call of ``function`` (the table's
        ``check`` validates and converts its answer), retrying and falling back as planned, and
        escalating when the decider says so; raise BackendFailure when every attempt failed."""
        site = self._current()
        if site.function != function:
            raise SandboxViolation(f"call site {site.id} is routed to {site.function.value}, not {function.value}")
        context = None
        if self._decider is None:
            name = self._plans[site.id][0][0]
        else:
            context = self._context(site, patch)
            name = self._ask(site, "decide", self._decider.decide, context)
            self._site_calls[site.id] = context.site_calls + 1
        call = self._calls
        self._calls += 1
        self._executed[site.id] = None
        memo_key = None
        if function == Function.detect and patch is not None and self._executor.memoise:
            memo_key = (str(arguments[-1]), *patch._frame_box())
            remembered = self._memo.get((name, *memo_key))
            if remembered is not None:
                hit = MemoHit(site_id=site.id, backend=name, call=call)
                self.memo_hits.append(hit)
                self._report(hit)
                return remembered
        result, answered_by = self._attempt(site, function, name, arguments, context, None)
        if memo_key is not None:
            self._memo[(answered_by, *memo_key)] = result
        elif context is not None and function != Function.detect:
            dearer = self._ask(site, "escalate", self._decider.escalate, context, result)  # type: ignore[union-attr]
            if dearer is not None:
                if dearer == answered_by:
                    raise InvalidChoice(f"the decider escalated {site.id} to {dearer!r}, which already answered")
                result, _ = self._attempt(site, function, dearer, arguments, context, answered_by)
        return result

    def _report(self, record: Invocation | MemoHit) -> None:
        if self._executor.observe is not None:
            self._executor.observe(record, self._guards.steps, self._guards.output)

    def _context(self, site: CallSite, patch: api.ImagePatch | None) -> InvocationContext:
        box = area = score = None
        if patch is not None:
            root = patch._frame._root
            box = patch._frame_box()
            area = patch.width * patch.height / (root.width * root.height)
            score = patch._score
        return InvocationContext(
            site_id=site.id,
            function=site.function,
            method=site.method,
            index=self._calls,
            site_calls=self._site_calls.get(site.id, 0),
            box=box,
            area=area,
            score=score,
            earlier=tuple(self._earlier),
            sites_left=len(self._sites) - len(self._executed),
        )

    def _ask(self, site: CallSite, what: str, ask: Callable[..., str | None], *arguments: Any) -> str | None:
        """The decider's answer to ``decide`` or ``escalate``, checked: InvalidChoice if it raised
        or named a backend this site may not use."""
        try:
            name = ask(*arguments)
        except ProgramHalt:
            raise
        except Exception as exc:
            raise InvalidChoice(f"the decider failed to {what} at {site.id}: {type(exc).__name__}: {exc}") from None
        if name is None and what == "escalate":
            return None
        if not isinstance(name, str):
            raise InvalidChoice(f"the decider answered {type(name).__name__} for {site.id}, not a backend name")
        problem = self._executor._choice_problem(site, name, self._candidates)
        if problem is not None:
            raise InvalidChoice(problem)
        return name

    def _attempt(
        self,
        site: CallSite,
        function: Function,
        chosen: str,
        arguments: tuple[Any, ...],
        context: InvocationContext | None,
        escalated_from: str | None,
    ) -> tuple[Any, str]:
        """One call: ``chosen`` 1 + retries times, then each alternate once; the result and the
        backend that gave it."""
        record = FUNCTIONS[function]
        plan = self._plans.get(site.id) if context is None else self._plans.get((site.id, chosen))
        if plan is None:
            plan = self._executor._attempts(chosen, self._alternates.get(site.id, ()))
            self._plans[(site.id, chosen)] = plan
        text = record.inputs(arguments)[1]  # the noun or question, checked against each backend's vocabulary
        refused: set[str] = set()  # backends whose failure says retrying them cannot help
        tried, error, failed = 0, None, chosen
        for name, attempt in plan:
            if name in refused:
                continue
            backend = self._backends[name]
            if attempt > 1:
                self._executor._pause_before_retry(self._guards)
            self._guards.check_deadline()
            tried, failed = tried + 1, name
            started = perf_counter()
            error = None
            try:
                result = record.check(getattr(backend.model, record.method)(*arguments))
            except ProgramHalt:
                raise
            except MalformedResult as exc:
                error = str(exc)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if getattr(exc, "retryable", True) is False:
                    refused.add(name)
            latency = perf_counter() - started
            decided: dict[str, Any] = {}  # under a decider only: a fixed decision's trace stays as it was
            if context is not None:
                output = _output(site, function, name, result) if error is None else None
                if output is not None:
                    self._earlier.append(output)
                decided = {"escalated_from": escalated_from, "features": _features(context, output)}
            invocation = Invocation(
                site=site.id,
                function=function,
                backend=name,
                cost=backend.cost,
                latency_s=latency,
                ok=error is None,
                attempt=attempt,
                fallback_from=chosen if name != chosen else None,
                error=error,
                out_of_vocabulary=out_of_vocabulary(backend.spec.vocabulary, function.value, text),
                **decided,
            )
            self.invocations.append(invocation)
            self._report(invocation)
            if error is None:
                return result, name
        tries = f" (after {tried} attempts)" if tried > 1 else ""
        raise BackendFailure(f"backend {failed!r} failed at {site.id}{tries}: {error}")


def _output(site: CallSite, function: Function, backend: str, result: Any) -> EarlierOutput:
    if function == Function.detect:
        return EarlierOutput(
            site_id=site.id,
            function=function,
            backend=backend,
            boxes=len(result),
            top_score=max((d.score for d in result), default=None),
        )
    return EarlierOutput(site_id=site.id, function=function, backend=backend, answer=result[:MAX_ANSWER_CHARS])


def _features(context: InvocationContext, output: EarlierOutput | None) -> InvocationFeatures:
    return InvocationFeatures(
        call=context.index,
        site_calls=context.site_calls,
        sites_left=context.sites_left,
        box=context.box,
        area=context.area,
        score=context.score,
        boxes=None if output is None else output.boxes,
        top_score=None if output is None else output.top_score,
        answer=None if output is None else output.answer,
    )


def gate_vectors(invocations: Sequence[Invocation]) -> list[Vector | None]:
    """For each invocation of a run under a decider, the vector its gate scored, rebuilt from the
    trace alone: the context's (``context_vector``) for a first choice, the context's and the first
    answer's (``escalation_vector``) for an escalation; ``None`` for an invocation that failed, ran
    in place of the decided backend (``fallback_from``) or has no features (a fixed decision).

    The same numbers the ``GateDecider`` saw: a call's context lists the answers of the run's
    earlier calls, which are the successful invocations with a smaller ``call``."""
    vectors: list[Vector | None] = []
    earlier: list[EarlierOutput] = []
    first_answers: dict[int, str | None] = {}
    pending: list[EarlierOutput] = []  # outputs of the current call, seen by later calls only
    current = -1
    for invocation in invocations:
        features = invocation.features
        if features is None:
            vectors.append(None)
            continue
        if features.call != current:
            earlier.extend(pending)
            pending.clear()
            current = features.call
        output = None
        if invocation.ok:
            output = EarlierOutput(
                site_id=invocation.site,
                function=invocation.function,
                backend=invocation.backend,
                boxes=features.boxes,
                top_score=features.top_score,
                answer=features.answer,
            )
            pending.append(output)
        if not invocation.ok or invocation.fallback_from is not None:
            vectors.append(None)
            if invocation.ok and invocation.escalated_from is None:
                first_answers.setdefault(features.call, features.answer)
            continue
        context = InvocationContext(
            site_id=invocation.site,
            function=invocation.function,
            method="",
            index=features.call,
            site_calls=features.site_calls,
            box=features.box,
            area=features.area,
            score=features.score,
            earlier=tuple(earlier),
            sites_left=features.sites_left,
        )
        vector = context_vector(context)
        if invocation.escalated_from is None:
            first_answers.setdefault(features.call, features.answer)
            vectors.append(vector)
        else:
            vectors.append(escalation_vector(vector, first_answers.get(features.call)))
    return vectors


def _program_line(exc: BaseException) -> int | None:
    """The innermost line of the program's own source in the exception's traceback."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == PROGRAM_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class _AnswerJson:
    """A program's return value as JSON (patches become boxes, anything else opaque its repr, at
    most ``max_items`` items a container and 16 levels deep), counting as it goes the bytes of the
    answer's JSON encoding (compact, UTF-8: ``answer_bytes``) and stopping (ResourceLimitExceeded)
    as soon as the count passes ``max_bytes``: an oversized answer is never built whole, nor a large
    shared structure walked, and a long string is refused on its length before it is encoded. Text
    that is not Unicode (a lone surrogate) is no answer (InvalidAnswer)."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.size = 0

    def convert(self, value: Any, depth: int = 0) -> JsonValue:
        if value is None or isinstance(value, bool):
            self._count(len(json.dumps(value)))
            return value
        if isinstance(value, int):
            self._check_at_least(max(1, value.bit_length() // 4))  # as in _text_at_least
            self._count(len(int.__repr__(value)))
            return value
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                return self._text(str(value))
            self._count(len(float.__repr__(value)))  # as json writes it
            return value
        if isinstance(value, api.ImagePatch):
            box = {"left": value.left, "lower": value.lower, "right": value.right, "upper": value.upper}
            return self._object(box, depth)
        if depth >= 16:
            return self._text("...")
        if isinstance(value, list | tuple | set | frozenset):
            self._count(2)  # []
            items: list[JsonValue] = []
            for item in islice(value, self.max_items):
                if items:
                    self._count(1)  # ,
                items.append(self.convert(item, depth + 1))
            return items
        if isinstance(value, dict):
            return self._object(value, depth)
        return self._text(repr(value)[:200])

    def _object(self, value: dict[Any, Any], depth: int) -> dict[str, JsonValue]:
        self._count(2)  # {}
        # The keys as text first (their length counted as they come): two keys with the same text
        # (1 and "1") are one entry, in the first one's place with the last one's value, as in Python.
        items: dict[str, Any] = {}
        texts = 0  # bytes the texts take at least, as JSON strings
        for key, item in islice(value.items(), self.max_items):
            if isinstance(key, str):
                text = key
            else:
                self._check_at_least(texts + _text_at_least(key, self.max_bytes - self.size - texts) + 2)
                text = str(key)
            if text not in items:
                texts += len(text) + 2
                self._check_at_least(texts)
            items[text] = item
        entries: dict[str, JsonValue] = {}
        for text, item in items.items():
            if entries:
                self._count(1)  # ,
            self._text(text)
            self._count(1)  # :
            entries[text] = self.convert(item, depth + 1)
        return entries

    def _text(self, text: str) -> str:
        """Count ``text`` as a JSON string: refused on its length alone when even that is too long
        (each character takes at least a byte), else encoded, once, to count its bytes."""
        self._check_at_least(len(text) + 2)
        escaped = _escape_json(text)
        if not text.isascii():
            try:
                self._count(len(escaped.encode("utf-8")))
            except UnicodeEncodeError as exc:
                raise InvalidAnswer(
                    f"the answer holds a lone surrogate ({surrogate_escape(exc.object[exc.start])}), "
                    "which is not a Unicode character"
                ) from None
        else:
            self._count(len(escaped))
        return text

    def _check_at_least(self, size: int) -> None:
        """Refuse the answer if the next piece takes at least ``size`` bytes more than there is room for."""
        if self.size + size > self.max_bytes:
            self._refuse(self.size + size)

    def _count(self, size: int) -> None:
        self.size += size
        if self.size > self.max_bytes:
            self._refuse(self.size)

    def _refuse(self, at_least: int) -> None:
        raise ResourceLimitExceeded(answer_too_large(at_least, self.max_bytes, exact=False))


_escape_json = json.encoder.encode_basestring  # a str as a JSON string, quotes included, non-ASCII as it is


def _text_at_least(value: Any, cap: int) -> int:
    """A lower bound of ``len(str(value))`` for a dict key that is not text (a number, None, a
    tuple...), counted without rendering it, in memory bounded by ``cap``: the count stops past it."""
    size, pending = 1, [value]  # each value is counted as the one character it takes at least
    while pending and size <= cap:
        item = pending.pop()
        if isinstance(item, str):
            size += len(item) + 1  # and its quotes
        elif isinstance(item, int) and not isinstance(item, bool):
            size += max(1, item.bit_length() // 4) - 1  # a bit takes log10(2) > 1/4 of a digit
        elif isinstance(item, tuple | frozenset):
            items = list(islice(item, cap - size + 1))
            size += 1 + len(items)  # its brackets, and a character for each item
            pending.extend(items)
    return size


def answer_too_large(size: int, limit: int, *, exact: bool) -> str:
    """Why an answer of ``size`` bytes (``exact``, or at least that many) is refused under ``limit``."""
    takes = f"{size:,}" if exact else f"at least {size:,}"
    return f"the answer is too large: its JSON encoding takes {takes} bytes (limit {limit:,} bytes)"


def answer_bytes(answer: JsonValue) -> int:
    """The size of ``answer``'s JSON encoding, compact and in UTF-8: what ``max_answer_bytes`` bounds."""
    return len(json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
