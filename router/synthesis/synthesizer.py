"""Program synthesis: a task in words becomes a validated program.

The paper compiles each task into a program with an LLM once, offline. The router does it when a
task is registered (``POST /programs {query, kind}``), and must do it reliably with whatever model
it is given, down to a 0.5B one on a CPU:

1. ask the model for a program (``router.synthesis.prompt``: the program API, rules, few-shot examples);
2. extract the code from the reply (``router.synthesis.reply``: a fenced block, or bare code; a
   body without ``def execute_command`` is wrapped in one, usage lines after it are dropped);
3. validate it with the runtime (``compile_program``: the sandbox's rules, and that every name and
   patch method it calls exists);
4. check that this router has a backend for every function it calls;
5. dry-run it on generated scene frames with the router's backends under the cheapest decision:
   first on scenes that hold every object the program looks for (``router.synthesis.scenes``:
   ``find("purple hexagon")`` and ``find("orange circle")``: a scene with both), so that the code
   that handles found objects runs; then on at least ``dry_run_frames`` ordinary scenes, where
   objects are often missing, and more (up to ``DRY_RUN_POOL``) until every call site has run
   once; check each answer's type
   (``synthesis_reply.answer_problem``; binary: "yes" or "no"; open: text or a number); a program
   that passes but makes no routed call is refused too, as registration would refuse it;
6. on any error, show the model its program and the error and ask again, up to ``attempts`` times.

An accepted program comes with warnings of what the checks could not settle: a call site no dry-run
frame reached (code that has never run), an answer that was the same on every dry-run frame (its
logic may ignore the image), and a noun or question outside every candidate backend's vocabulary.

The model's program is untrusted source: nothing but the sandbox ever runs it. A program that
passes every frame of the dry run is remembered in the store (with its dry run's warnings) under
the normalised query, the task kind, the prompt's version (``prompt.API_VERSION``) and the model's
name, so registering the same task again costs no model call.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from time import perf_counter
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import BackendCatalog, BackendSpec, Function
from fmprog.backends.engine_config import (
    LlamaCppEngineOptions,
    OpenAIEngineOptions,
    PackageFileSource,
    PackagePartsSource,
)
from fmprog.engines.base import Engine, EngineError
from fmprog.engines.chat import Message
from fmprog.program import ExecutionLimits, Executor, Program, ProgramRejected, compile_program
from fmprog.program.callsites import ROUTED_METHODS
from fmprog.program.scope import scope_warnings
from fmprog.rewards import TaskKind
from fmprog.scene.generator import DIFFICULTIES, generate_scene
from router.candidates import candidate_backends
from router.errors import BackendsRejected, Unavailable
from router.schemas import CandidateBackend, SynthesisPublic
from router.store import Store
from router.synthesis import prompt
from router.synthesis.reply import answer_problem, extract_program
from router.synthesis.scenes import TARGETED_FRAMES, targeted_frames

DRY_RUN_POOL = 16  # frames a dry run may use while some call site has not run yet
_REPLY_SHOWN = 2000  # characters of a reply without code that are shown back to the model
_ANSWER_SHOWN = 80  # characters of an answer a warning shows


class ChatModel(Protocol):
    """What the synthesizer needs of a model: a reply to a conversation, and a name for the cache."""

    @property
    def name(self) -> str: ...

    def chat(self, messages: Sequence[Message], *, max_tokens: int) -> str: ...


class EngineChatModel:
    """An engine (llama.cpp in process, or an OpenAI-compatible server) as the synthesizer's model.

    The model is loaded on first use (or by ``load()`` at start-up); any failure to load or to answer
    is ``Unavailable``, which the router reports as 503."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._loaded = False
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return model_name(self.engine.spec)

    def load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            try:
                self.engine.load()
            except EngineError as exc:
                raise Unavailable(f"the program synthesizer cannot be loaded: {exc}") from None
            self._loaded = True

    def chat(self, messages: Sequence[Message], *, max_tokens: int) -> str:
        self.load()
        try:
            return self.engine.chat(messages, max_tokens=max_tokens)
        except EngineError as exc:
            raise Unavailable(f"the program synthesizer failed: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._loaded:
                self.engine.close()
                self._loaded = False


def model_name(spec: BackendSpec) -> str:
    """A model's identity for the cache: the GGUF file, or the served model name and its server."""
    engine = spec.engine
    if isinstance(engine, OpenAIEngineOptions):
        return f"{engine.model}@{engine.base_url}"
    if isinstance(engine, LlamaCppEngineOptions):
        source = engine.model
        if isinstance(source, PackagePartsSource):
            return source.filename
        if isinstance(source, PackageFileSource):
            return source.file
        return source.path.name
    return spec.name


def synthesis_model(spec: BackendSpec) -> EngineChatModel:
    """The synthesizer's model from its specification (``RouterSettings.synthesis_spec``); not loaded."""
    from fmprog.engines import build_engine

    return EngineChatModel(build_engine(spec))


# -- results --------------------------------------------------------------------------------------


class SynthesisAttempt(BaseModel):
    """One program asked of the model: what it wrote, why it was refused (None: accepted), and how
    long the model and the checks took."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempt: int = Field(ge=1)
    source: str
    error: str | None = None
    llm_s: float
    check_s: float


class SynthesisResult(BaseModel):
    """The outcome of synthesising one task: the program (None when every attempt was refused),
    the attempts it took, the time, and the errors of the refused attempts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str
    kind: TaskKind
    source: str | None
    attempts: int = Field(ge=0, description="Programs asked of the model; for a cached program, the original count.")
    latency_s: float
    cached: bool = False
    errors: list[str] = Field(default_factory=list)
    log: list[SynthesisAttempt] = Field(default_factory=list, description="Every attempt of this synthesis.")
    dry_run_frames: int = Field(default=0, description="Frames the accepted program ran on.")
    unreached_sites: list[str] = Field(
        default_factory=list, description="Call sites of the accepted program that no dry-run frame reached."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the checks could not settle: call sites no dry-run frame reached, an answer the same on "
        "every dry-run frame, nouns or questions outside every candidate's vocabulary.",
    )
    synthesizer: str
    api_version: str

    @property
    def ok(self) -> bool:
        return self.source is not None

    @property
    def last_error(self) -> str | None:
        return self.errors[-1] if self.errors else None

    def public(self) -> SynthesisPublic:
        return SynthesisPublic(
            attempts=self.attempts,
            latency_s=self.latency_s,
            cached=self.cached,
            errors=self.errors,
            dry_run_frames=self.dry_run_frames,
            unreached_sites=self.unreached_sites,
            warnings=self.warnings,
            synthesizer=self.synthesizer,
            api_version=self.api_version,
        )


# -- the cache key ----------------------------------------------------------------------------------


def normalize_query(query: str) -> str:
    """The cache's form of a task: lower case, single spaces, no trailing punctuation."""
    return " ".join(query.lower().split()).rstrip(" ?.!,;:")


_METHODS_OF: dict[Function, list[str]] = {
    function: [method for method, f in ROUTED_METHODS.items() if f == function] for function in Function
}


# -- the synthesizer --------------------------------------------------------------------------------


class ProgramSynthesizer:
    """Writes programs for tasks with a model, validates them with the runtime, dry-runs them on
    generated frames with ``backends``, and repairs them with the model's help."""

    def __init__(
        self,
        model: ChatModel,
        catalog: BackendCatalog,
        backends: BackendRegistry,
        *,
        store: Store | None = None,
        attempts: int = 3,
        max_tokens: int = 512,
        dry_run_frames: int = 3,
        limits: ExecutionLimits | None = None,
        retries: int = 0,
    ):
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        if dry_run_frames < 0:
            raise ValueError("dry_run_frames must be >= 0")
        self.model = model
        self.catalog = catalog
        self.store = store
        self.attempts = attempts
        self.max_tokens = max_tokens
        self.dry_run_frames = dry_run_frames
        self.executor = Executor(backends, limits, retries=retries)

    @cached_property
    def frames(self) -> list[np.ndarray]:
        """The dry run's ordinary frames: the images of ``scenes``."""
        return [generate_scene(seed, difficulty).image for seed, difficulty in self.scenes]

    @property
    def scenes(self) -> list[tuple[int, str]]:
        """The seeds and difficulties of the dry run's ordinary scenes: every difficulty in turn
        (seeded, so always the same), ``DRY_RUN_POOL`` of them (more if ``dry_run_frames`` asks for
        more; none for 0)."""
        count = max(self.dry_run_frames, DRY_RUN_POOL) if self.dry_run_frames else 0
        return [(seed, DIFFICULTIES[seed % len(DIFFICULTIES)]) for seed in range(count)]

    def synthesize(
        self, query: str, kind: TaskKind, *, allowed: Mapping[Function, list[str]] | None = None
    ) -> SynthesisResult:
        """A program for ``query`` (from the cache, or written and checked now), or the errors of
        every refused attempt (``result.ok`` is False). ``allowed`` restricts the backends a function
        may use, as in registration. Raises Unavailable when the model or the backends are down,
        BackendsRejected when ``allowed`` names unknown backends."""
        started = perf_counter()
        allowed = {Function(function): list(names) for function, names in (allowed or {}).items()}
        candidate_backends(self.catalog, allowed, set())  # unknown names are refused before any work
        available = self._available(allowed)
        key = (normalize_query(query), kind, prompt.API_VERSION, self.model.name)
        cached = self.store.get_synthesized(*key) if self.store is not None else None
        if cached is not None and (program := self._fitting(cached.source, available)) is not None:
            check = _Check(program=program, warnings=cached.warnings)
            return self._result(
                query, kind, cached.source, cached.attempts, started, cached=True, check=check, available=available
            )
        conversation = prompt.messages(query, kind)
        log: list[SynthesisAttempt] = []
        for attempt in range(1, self.attempts + 1):
            asked = perf_counter()
            reply = self.model.chat(conversation, max_tokens=self.max_tokens)
            answered = perf_counter()
            source = extract_program(reply)
            check = self._check(source, kind, available)
            log.append(
                SynthesisAttempt(
                    attempt=attempt,
                    source=source,
                    error=check.error,
                    llm_s=answered - asked,
                    check_s=perf_counter() - answered,
                )
            )
            if check.error is None:
                result = self._result(query, kind, source, attempt, started, log=log, check=check, available=available)
                if self.store is not None:
                    self.store.put_synthesized(
                        *key, source=source, attempts=attempt, latency_s=result.latency_s, warnings=check.warnings
                    )
                return result
            shown = prompt.fenced(source) if source.strip() else reply[:_REPLY_SHOWN]
            conversation = [*conversation, *prompt.repair_turns(shown, check.error, query, kind, source)]
        return self._result(query, kind, None, self.attempts, started, log=log)

    def _result(
        self,
        query: str,
        kind: TaskKind,
        source: str | None,
        attempts: int,
        started: float,
        *,
        cached: bool = False,
        log: list[SynthesisAttempt] | None = None,
        check: _Check | None = None,
        available: Mapping[Function, list[CandidateBackend]] | None = None,
    ) -> SynthesisResult:
        log = log or []
        check = check or _Check()
        warnings = list(check.warnings)
        if check.program is not None and available is not None:
            warnings += self._vocabulary_warnings(check.program, available)
        return SynthesisResult(
            query=query,
            kind=kind,
            source=source,
            attempts=attempts,
            latency_s=perf_counter() - started,
            cached=cached,
            errors=[a.error for a in log if a.error is not None],
            log=log,
            dry_run_frames=check.frames,
            unreached_sites=check.unreached,
            warnings=warnings,
            synthesizer=self.model.name,
            api_version=prompt.API_VERSION,
        )

    # -- checks -------------------------------------------------------------------------------------

    def _available(self, allowed: dict[Function, list[str]]) -> dict[Function, list[CandidateBackend]]:
        """The candidate backends of every function this router can serve under ``allowed``."""
        available = {}
        for function in Function:
            try:
                available.update(candidate_backends(self.catalog, allowed, {function}))
            except BackendsRejected:
                continue
        return available

    def _fitting(self, source: str, available: Mapping[Function, list[CandidateBackend]]) -> Program | None:
        """A cached program, compiled, if it still passes validation and its functions have backends
        here; else None (it is synthesised again)."""
        try:
            program = compile_program(source)
        except ProgramRejected:
            return None
        if program.servable_problem() is not None or not program.functions <= available.keys():
            return None
        return program

    def _vocabulary_warnings(self, program: Program, available: Mapping[Function, list[CandidateBackend]]) -> list[str]:
        """A line for each call site that none of the backends it may use here can see."""
        sites = [(site, [self.catalog.get(c.name) for c in available[site.function]]) for site in program.call_sites]
        return scope_warnings(sites)

    def _check(self, source: str, kind: TaskKind, available: Mapping[Function, list[CandidateBackend]]) -> _Check:
        """Why the program is refused (validation, missing backends, the dry run, no routed call:
        nothing for registration to route), if it is."""
        try:
            program = compile_program(source)
        except ProgramRejected as exc:
            return _Check("; ".join(str(problem) for problem in exc.problems))
        missing = sorted(program.functions - available.keys())
        if missing:
            methods = ", ".join(m for f in missing for m in _METHODS_OF[f])
            return _Check(f"this router has no {' or '.join(missing)} backend, so the program cannot call {methods}")
        check = self._dry_run(program, kind, available)
        if check.error is None and (problem := program.servable_problem()) is not None:
            return _Check(str(problem), check.frames)  # it runs, but registration would refuse it
        return check

    def _dry_run(
        self, program: Program, kind: TaskKind, available: Mapping[Function, list[CandidateBackend]]
    ) -> _Check:
        """Run the program on frames until ``dry_run_frames`` have run and every call site has run
        (or the pool is spent); the first runtime error or wrongly typed answer refuses it."""
        decision, alternates = {}, {}
        for site in program.call_sites:
            by_cost = sorted(available[site.function], key=lambda c: c.cost)
            decision[site.id] = by_cost[0].name
            alternates[site.id] = [c.name for c in by_cost[1:]]
        unreached = [site.id for site in program.call_sites]
        answers = []
        number = 0
        targeted = targeted_frames(program.source, TARGETED_FRAMES) if self.dry_run_frames else []
        enough = len(targeted) + self.dry_run_frames  # the targeted scenes do not replace the others
        for frame in [*targeted, *self.frames]:
            if number >= enough and not unreached:
                break
            number += 1
            trace = self.executor.run(program, frame, decision, alternates)
            unreached = [site for site in unreached if site not in trace.executed_sites]
            if trace.error is not None:
                where = f"line {trace.error.line}: " if trace.error.line else ""
                if trace.error.kind == "backend_error":
                    message = trace.error.message
                    raise Unavailable(f"a synthesised program's dry run could not reach the backends: {message}")
                return _Check(f"on test image {number}, {where}{trace.error.message} ({trace.error.kind})", number)
            problem = answer_problem(kind, trace.answer)
            if problem is not None:
                return _Check(f"on test image {number}, {problem}", number)
            answers.append(trace.answer)
        warnings = [
            f"line {site.line}: {site.id} ran on none of the {number} dry-run frames: that code has never run"
            for site in program.call_sites
            if site.id in unreached
        ]
        if len(answers) > 1 and all(answer == answers[0] for answer in answers):
            warnings.append(f"its answer was {_shown(answers[0])} on all {number} dry-run frames: check its logic")
        return _Check(None, number, unreached, program, warnings)


def _shown(answer: object) -> str:
    """An answer as a warning shows it: ``'no'``, ``3``, cut short when long."""
    shown = repr(answer)
    return shown if len(shown) <= _ANSWER_SHOWN else shown[: _ANSWER_SHOWN - 3] + "..."


@dataclass(frozen=True)
class _Check:
    """What checking one program found: the error that refuses it (None: accepted), the dry-run
    frames it ran on, the call sites none of them reached, and for an accepted program, the program
    and what its dry run was unsure of."""

    error: str | None = None
    frames: int = 0
    unreached: list[str] = field(default_factory=list)
    program: Program | None = None
    warnings: list[str] = field(default_factory=list)
