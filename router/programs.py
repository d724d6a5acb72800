"""Registering programs: synthesise one when a task comes in words, validate with the runtime,
resolve each call site's candidate backends from the catalog, have the policy's spec checked,
store, and keep the compiled program for answering, with what of a frame its policy reads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import ValidationError

from fmprog.backends.config import BackendCatalog
from fmprog.contract import FrameInput, PolicySpec, frame_input
from fmprog.program import CallSite, Program, ProgramRejected, compile_program
from fmprog.program.scope import site_reach
from router.candidates import candidate_backends
from router.deciding import teacher_decision
from router.errors import PolicyInvalid, ProgramInvalid, SynthesisFailed, SynthesisUnavailable
from router.schemas import (
    CallSitePublic,
    CandidateBackend,
    ProgramCreate,
    ProgramPublic,
    SynthesisPublic,
    program_warnings,
)
from router.settings import DEFAULT_LAMBDA
from router.store import QueuedMessage, Store, utc_now
from router.tenants import DEFAULT_TENANT

if TYPE_CHECKING:
    from router.synthesis.synthesizer import ProgramSynthesizer

PolicyCheck = Callable[[PolicySpec], None]
"""Refuses (PolicyInvalid) a spec the policy cannot build a policy from."""


def policy_spec(program: ProgramPublic) -> PolicySpec:
    """The policy's specification of a program: its call sites with candidate backends and costs,
    lambda, the algorithm and its hyper-parameters. Its shape is checked here (PolicyInvalid); the
    algorithm and its hyper-parameters are the policy service's to check."""
    try:
        return PolicySpec.model_validate(
            {
                "sites": [
                    {
                        "id": site.id,
                        "function": site.function,
                        "backends": [{"name": c.name, "cost": c.cost} for c in site.candidates],
                    }
                    for site in program.call_sites
                ],
                "lambda": program.lambda_,
                "algorithm": program.algorithm,
                "hyperparameters": program.hyperparameters,
            }
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}" for e in exc.errors())
        raise PolicyInvalid(f"policy rejected: {problems}") from None


def policy_frame_input(program: ProgramPublic) -> FrameInput:
    """What of a frame the program's policy reads (``fmprog.contract.frame_input`` of its spec);
    the whole frame (the safe default) for a stored program whose spec no longer passes its check."""
    try:
        return frame_input(policy_spec(program))
    except PolicyInvalid:
        return FrameInput(pixels="full")


def public_call_site(site: CallSite, candidates: list[CandidateBackend], catalog: BackendCatalog) -> CallSitePublic:
    """The site with the candidates that can see what it asks (all of them, and why each cannot,
    when none can: ``fmprog.program.scope``)."""
    usable, reasons = site_reach(site, [catalog.get(c.name) for c in candidates])
    names = {spec.name for spec in usable}
    return CallSitePublic(
        **site.model_dump(), candidates=[c for c in candidates if c.name in names], out_of_vocabulary=reasons
    )


class ProgramRegistry:
    """Registered programs: stored in a ``Store``, compiled once per process for answering. With a
    ``synthesizer``, a program can be registered by its task in words (``query``).

    ``synthesis_off`` says why there is no synthesizer, for the error a query then gets; a program
    registered without ``lambda`` gets ``default_lambda`` (its ``lambda_source`` says which)."""

    def __init__(
        self,
        store: Store,
        catalog: BackendCatalog,
        synthesizer: ProgramSynthesizer | None = None,
        *,
        synthesis_off: str = "no synthesizer is configured",
        default_lambda: float = DEFAULT_LAMBDA,
    ):
        self.store = store
        self.default_lambda = default_lambda
        self.catalog = catalog
        self.synthesizer = synthesizer
        self.synthesis_off = synthesis_off
        # per program: the stored version, compiled, and what of a frame its policy reads
        self._compiled: dict[str, tuple[ProgramPublic, Program, FrameInput]] = {}
        self._lock = threading.Lock()

    def register(
        self,
        request: ProgramCreate,
        check_policy: PolicyCheck | None = None,
        *,
        tell_policy: bool = False,
        tenant: str = DEFAULT_TENANT,
    ) -> ProgramPublic:
        """Synthesise (for a query), validate, resolve candidates, check the policy's spec (its
        shape here, the rest with ``check_policy``), store (with ``tell_policy``, its registration
        for the policy queued in the outbox in the same transaction); raise SynthesisUnavailable,
        SynthesisFailed, Unavailable, ProgramInvalid, BackendsRejected or PolicyInvalid without
        storing a program. The program belongs to ``tenant``."""
        source, synthesis = request.source, None
        if source is None:
            source, synthesis = self._synthesize(request)
        try:
            program = compile_program(source)
        except ProgramRejected as exc:
            raise ProgramInvalid(exc.problems) from None
        if (problem := program.servable_problem()) is not None:
            raise ProgramInvalid([problem])
        candidates = candidate_backends(self.catalog, request.backends, set(program.functions))
        sites = [public_call_site(site, candidates[site.function], self.catalog) for site in program.call_sites]
        public = ProgramPublic(
            id=uuid.uuid4().hex,
            name=request.name,
            source=program.source,
            kind=request.kind,
            lambda_=self.default_lambda if request.lambda_ is None else request.lambda_,
            lambda_source="default" if request.lambda_ is None else "request",
            algorithm=request.algorithm,
            hyperparameters=request.hyperparameters,
            call_sites=sites,
            warnings=program_warnings(sites, synthesis),
            created_at=utc_now(),
            digest=program.digest,
            query=request.query,
            synthesis=synthesis,
            labels=request.labels,
            teacher=request.teacher,
            budget=request.budget,
            tenant=tenant,
        )
        teacher_decision(public)  # BackendsRejected for a teacher's backend no call site can use
        spec = policy_spec(public)
        if check_policy is not None:
            check_policy(spec)
        message = QueuedMessage("register", public.id, spec.model_dump_json(by_alias=True)) if tell_policy else None
        self.store.add_program(public, message)
        with self._lock:
            self._compiled[public.id] = (public, program, frame_input(spec))
        return public

    def _synthesize(self, request: ProgramCreate) -> tuple[str, SynthesisPublic]:
        assert request.query is not None  # ProgramCreate holds a source or a query
        if self.synthesizer is None:
            raise SynthesisUnavailable(
                f"this router cannot synthesise programs ({self.synthesis_off}); send the program's source instead"
            )
        result = self.synthesizer.synthesize(request.query, request.kind, allowed=request.backends)
        if result.source is None:
            raise SynthesisFailed(request.query, result.attempts, result.last_error or "no program")
        return result.source, result.public()

    def get(self, program_id: str) -> ProgramPublic:
        return self.store.get_program(program_id)

    def list_programs(self, *, tenant: str | None = None, limit: int = 100, offset: int = 0) -> list[ProgramPublic]:
        """Programs, oldest first: every tenant's, or ``tenant``'s."""
        return self.store.list_programs(tenant=tenant, limit=limit, offset=offset)

    def delete(self, program_id: str, *, tell_policy: bool = False) -> None:
        """Remove the program (with ``tell_policy``, queueing its delete for the policy in the same
        transaction); its decisions stay in the store and still accept feedback."""
        self.store.delete_program(program_id, QueuedMessage("delete", program_id, "{}") if tell_policy else None)
        with self._lock:
            self._compiled.pop(program_id, None)

    def compiled(self, program_id: str) -> tuple[ProgramPublic, Program]:
        """The stored program with its compiled form, kept in this process after first use; each
        call reads only the stored digest (NotFound once the program is deleted, a fresh read when
        it changed)."""
        digest = self.store.program_digest(program_id)
        with self._lock:
            cached = self._compiled.get(program_id)
        if cached is not None and cached[0].digest == digest:
            return cached[0], cached[1]
        public = self.store.get_program(program_id)
        # A stored program passed registration's checks when it was registered: it runs as it did then.
        compiled, reads = compile_program(public.source, check_names=False), policy_frame_input(public)
        with self._lock:
            self._compiled[program_id] = (public, compiled, reads)
        return public, compiled

    def frame_input(self, program: ProgramPublic) -> FrameInput:
        """What of a frame ``program``'s policy reads (``policy_frame_input``): kept with the version
        :meth:`compiled` returned (the same object), worked out again for any other."""
        with self._lock:
            cached = self._compiled.get(program.id)
        if cached is not None and cached[0] is program:
            return cached[2]
        return policy_frame_input(program)
