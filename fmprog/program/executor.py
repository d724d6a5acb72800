"""Run a validated program on one frame under a decision, and trace what it cost.

A *decision* maps every call site of the program to a backend of the site's function. Each
backend invocation is charged exactly once, to the call site the program wrote (nested
invocations, such as the detection inside ``exists``, belong to that site). Short-circuited sites
make no invocation and cost nothing.

A backend that fails (raises, or answers with something malformed) can be retried and then
replaced: with ``retries`` the decided backend is tried that many more times, then each of the
site's ``alternates`` (other backends of the same function) once, in order. Every attempt is an
invocation in the trace and is charged; ``attempt`` numbers the tries of one call and
``fallback_from`` names the decided backend when another one ran instead. The run stops with a
``backend_error`` only when every attempt failed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from time import perf_counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import Function
from fmprog.backends.functions import FUNCTIONS, MalformedResult
from fmprog.program import api
from fmprog.program.callsites import CallSite
from fmprog.program.compiler import Program
from fmprog.program.errors import BackendFailure, InvalidDecision, ProgramHalt, SandboxViolation
from fmprog.program.sandbox import ENTRY_POINT, PROGRAM_FILENAME, ExecutionLimits, RunGuards

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
]


class Invocation(BaseModel):
    """One backend invocation: where it came from, what ran, what it cost."""

    model_config = ConfigDict(frozen=True)

    site_id: str
    function: Function
    backend: str
    cost: float
    latency_s: float
    ok: bool = True
    attempt: int = Field(default=1, ge=1, description="1 for the first try of a call, 2 for its retry, ...")
    fallback_from: str | None = Field(default=None, description="The decided backend, when another one ran.")
    error: str | None = None


class ProgramError(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ErrorKind
    message: str
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
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def fallback_sites(self) -> list[str]:
        """Sites where a backend other than the decided one answered."""
        return list(dict.fromkeys(i.site_id for i in self.invocations if i.ok and i.fallback_from is not None))


class Executor:
    """Runs programs against a registry of backends, within per-run limits; a failed backend
    call is retried ``retries`` times before the site's alternates are tried."""

    def __init__(self, backends: BackendRegistry, limits: ExecutionLimits | None = None, *, retries: int = 0):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.backends = backends
        self.limits = limits or ExecutionLimits()
        self.retries = retries

    def check_decision(
        self, program: Program, decision: Decision, candidates: Mapping[str, Collection[str]] | None = None
    ) -> None:
        """InvalidDecision unless ``decision`` names, for every call site and no other, a backend of
        these backends serving the site's function; with ``candidates`` (the backends each site may
        use, e.g. a registered program's), also one of the site's candidates."""
        problems = []
        for site in program.call_sites:
            name = decision.get(site.id)
            if name is None:
                problems.append(f"no backend for call site {site.id}")
            elif candidates is not None and name not in candidates.get(site.id, ()):
                problems.append(f"backend {name!r} is not a candidate for call site {site.id}")
            elif name not in self.backends:
                problems.append(f"unknown backend {name!r} for call site {site.id}")
            elif self.backends[name].function != site.function:
                problems.append(
                    f"backend {name!r} serves {self.backends[name].function.value}, "
                    f"but call site {site.id} needs {site.function.value}"
                )
        unknown = sorted(set(decision) - {s.id for s in program.call_sites})
        if unknown:
            problems.append(f"decision names sites the program does not have: {', '.join(unknown)}")
        if problems:
            raise InvalidDecision("; ".join(problems))

    def run(
        self,
        program: Program,
        image: Any,
        decision: Decision,
        alternates: Mapping[str, Sequence[str]] | None = None,
        *,
        candidates: Mapping[str, Collection[str]] | None = None,
    ) -> Trace:
        """Run ``program`` on ``image``; ``alternates`` lists, per call site, the backends to try
        in order when the decided one keeps failing. The decision is checked once, here (see
        :meth:`check_decision`, with ``candidates``). Raises InvalidDecision (a ValueError) for a
        bad decision or alternate and ImageError (a ValueError) for a bad image; every failure of
        the program itself is reported in the trace."""
        self.check_decision(program, decision, candidates)
        alternates = alternates or {}
        self._check_alternates(program, alternates)
        pixels = api.as_pixels(image)
        started = perf_counter()
        guards = RunGuards(self.limits, started)
        plans = {site.id: self._attempts(decision[site.id], alternates.get(site.id, ())) for site in program.call_sites}
        run = _Run(self.backends, program, plans, guards)
        answer: JsonValue = None
        error = None
        try:
            namespace = guards.globals(run.routed)
            exec(program.code, namespace)
            answer = _to_json(namespace[ENTRY_POINT](api.Frame(pixels, run)), self.limits.max_length)
        except ProgramHalt as exc:
            error = ProgramError(kind=exc.kind, message=str(exc), line=_program_line(exc))
        except RecursionError as exc:
            error = ProgramError(kind="recursion", message="maximum recursion depth exceeded", line=_program_line(exc))
        except MemoryError as exc:
            error = ProgramError(kind="resource_limit", message="out of memory", line=_program_line(exc))
        except Exception as exc:
            error = ProgramError(kind="runtime_error", message=f"{type(exc).__name__}: {exc}", line=_program_line(exc))
        invocations = run.invocations
        return Trace(
            answer=answer,
            error=error,
            invocations=invocations,
            executed_sites=list(dict.fromkeys(i.site_id for i in invocations)),
            cost=math.fsum(i.cost for i in invocations),
            latency_s=perf_counter() - started,
            steps=guards.steps,
            output=guards.output,
        )

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
    """One run's state; the ``Invoker`` the program API charges model calls to."""

    def __init__(
        self, backends: BackendRegistry, program: Program, plans: Mapping[str, list[tuple[str, int]]], guards: RunGuards
    ):
        self._backends = backends
        self._sites = {site.id: site for site in program.call_sites}
        self._plans = plans
        self._guards = guards
        self._site: CallSite | None = None
        self.invocations: list[Invocation] = []

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

    def invoke(self, function: Function, *arguments: Any) -> Any:
        """Call the site's backend with one call of ``function`` (the table's ``check`` validates
        and converts its answer), retrying and falling back as planned; raise BackendFailure when
        every attempt failed."""
        record = FUNCTIONS[function]
        site = self._current()
        if site.function != function:
            raise SandboxViolation(f"call site {site.id} is routed to {site.function.value}, not {function.value}")
        plan = self._plans[site.id]
        decided = plan[0][0]
        for name, attempt in plan:
            backend = self._backends[name]
            self._guards.check_deadline()
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
            self.invocations.append(
                Invocation(
                    site_id=site.id,
                    function=function,
                    backend=name,
                    cost=backend.cost,
                    latency_s=perf_counter() - started,
                    ok=error is None,
                    attempt=attempt,
                    fallback_from=decided if name != decided else None,
                    error=error,
                )
            )
            if error is None:
                return result
        tries = f" (after {len(plan)} attempts)" if len(plan) > 1 else ""
        raise BackendFailure(f"backend {plan[-1][0]!r} failed at {site.id}{tries}: {error}")


def _program_line(exc: BaseException) -> int | None:
    """The innermost line of the program's own source in the exception's traceback."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == PROGRAM_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _to_json(value: Any, max_items: int, depth: int = 0) -> JsonValue:
    """A program's return value as JSON: patches become boxes, anything else opaque its repr."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, api.ImagePatch):
        return {"left": value.left, "lower": value.lower, "right": value.right, "upper": value.upper}
    if depth >= 16:
        return "..."
    if isinstance(value, list | tuple | set | frozenset):
        return [_to_json(v, max_items, depth + 1) for v in list(value)[:max_items]]
    if isinstance(value, dict):
        return {str(k): _to_json(v, max_items, depth + 1) for k, v in list(value.items())[:max_items]}
    return repr(value)[:200]
