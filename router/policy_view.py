"""What a program's policy has learned, as the router sees it in its recent decisions.

For each call site: the share of each candidate backend among the calls the policy decided over
the program's last ``last`` decisions, by a small context bucket. A call decided up front (a
backend per call site, the same for every invocation) falls in the bucket ``all``; a call decided
when it ran (the policy's gates) falls in a bucket of the patch it acted on: ``detected`` (a patch
a detector found), ``other`` (the whole frame, a crop, a patch the program built) or ``none`` (a
text call), with the patch's share of the frame (``small`` under 5%, ``medium`` under 25%,
``large``) for the first two.

Read from the stored answers' traces. A call counts once, for the backend decided for it: its
retries and the backends that stood in for a failing one are not decisions. A re-ask of a dearer
backend (``escalated_from``) is counted as the call's escalation, not as a call. Fallback
decisions (the router's, not the policy's) and frames of cameras answered by reusing the last answer
are counted apart and left out of the shares; the reuse gates' decisions are summed in ``reuse``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Literal, NamedTuple

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fmprog.backends.config import Function
from fmprog.program import Invocation, InvocationFeatures
from router.schemas import ProgramPublic, ReuseRecord
from router.store import Store
from router.tables import decisions

DEFAULT_WINDOW = 500
MAX_WINDOW = 10_000
SMALL_AREA = 0.05
MEDIUM_AREA = 0.25

Patch = Literal["detected", "other", "none"]
Area = Literal["small", "medium", "large"]

_TRACE = TypeAdapter(list[Invocation])
_VIEW = ConfigDict(extra="forbid", frozen=True)


class BackendShare(BaseModel):
    """One candidate backend's calls in a bucket and their share of the bucket's calls."""

    model_config = _VIEW

    backend: str
    calls: int = Field(ge=0)
    share: float = Field(ge=0, le=1)


class BucketView(BaseModel):
    """A call site's calls in one context bucket."""

    model_config = _VIEW

    bucket: str = Field(description='"all" (decided up front), or the patch and area: "detected/small", "none", ...')
    patch: Patch | None = Field(description="The patch the call acted on; None for calls decided up front.")
    area: Area | None = Field(description="Share of the frame: under 5%, under 25%, more; None: no patch.")
    calls: int = Field(ge=1)
    backends: list[BackendShare] = Field(description="Every candidate, cheapest first; the shares sum to 1.")
    escalated: float = Field(ge=0, description="Re-asks of a dearer backend per call of this bucket.")


class SiteView(BaseModel):
    """What the policy chose at one call site."""

    model_config = _VIEW

    site: str
    function: Function
    calls: int = Field(ge=0, description="Calls of this site the policy decided in the window.")
    buckets: list[BucketView]


class ReuseView(BaseModel):
    """The reuse gates' decisions on cameras' frames in the window (frames after each camera's first)."""

    model_config = _VIEW

    decisions: int = Field(ge=0, description="Frames of cameras the gate decided.")
    reused: int = Field(ge=0, description="Of them, answered with the camera's last answer (cost 0).")
    share: float = Field(ge=0, le=1, description="reused / decisions (0 without decisions).")
    reasons: dict[str, int] = Field(description="Decisions by reason: unchanged, changed, explore, max_age.")
    cameras: int = Field(ge=0, description="Cameras among them.")


class PolicyView(BaseModel):
    """A program's recent decisions, per call site and context bucket."""

    model_config = _VIEW

    program_id: str
    last: int = Field(description="The window asked for: the program's last this many decisions.")
    decisions: int = Field(ge=0, description="Decisions read (fewer than last when the program has fewer).")
    policy_decisions: int = Field(ge=0, description="Of them, the policy's: the ones the shares are counted on.")
    fallback_decisions: int = Field(ge=0, description="Of them, the router's fallback decisions (left out).")
    reused_decisions: int = Field(
        default=0, ge=0, description="Of them, frames answered by reusing a camera's last answer (left out)."
    )
    sites: list[SiteView]
    reuse: ReuseView = Field(description="The reuse gates' decisions in the window.")


def patch_bucket(features: InvocationFeatures | None) -> tuple[str, Patch | None, Area | None]:
    """The context bucket of a call: its name, patch kind and area class."""
    if features is None:
        return "all", None, None
    if features.box is None:
        return "none", "none", None
    patch: Patch = "detected" if features.score is not None else "other"
    if features.area is None:
        return patch, patch, None
    area: Area = "small" if features.area < SMALL_AREA else "medium" if features.area < MEDIUM_AREA else "large"
    return f"{patch}/{area}", patch, area


class RecentDecision(NamedTuple):
    fallback: bool
    trace: list[Invocation]
    reuse: ReuseRecord | None


def recent_traces(store: Store, program_id: str, last: int) -> list[RecentDecision]:
    """The program's last ``last`` decisions, newest first: whether each was the fallback, its
    trace and what the reuse gate decided for it."""
    query = (
        sa.select(decisions.c.fallback, decisions.c.trace, decisions.c.reuse)
        .where(decisions.c.program_id == program_id)
        .order_by(decisions.c.created_at.desc(), decisions.c.id.desc())
        .limit(last)
    )
    with store.reading() as db:
        rows = db.execute(query).all()
    return [
        RecentDecision(
            bool(fallback),
            _TRACE.validate_python(json.loads(trace)),
            ReuseRecord.model_validate_json(reuse) if reuse else None,
        )
        for fallback, trace, reuse in rows
    ]


def reuse_view(traces: list[RecentDecision]) -> ReuseView:
    decided = [t.reuse for t in traces if t.reuse is not None]
    reused = sum(record.reused for record in decided)
    return ReuseView(
        decisions=len(decided),
        reused=reused,
        share=reused / len(decided) if decided else 0.0,
        reasons=dict(Counter(record.reason for record in decided)),
        cameras=len({record.camera for record in decided}),
    )


def policy_view(program: ProgramPublic, traces: list[RecentDecision], last: int) -> PolicyView:
    """Count the policy's calls per site and bucket in ``traces`` (see the module's docstring)."""
    calls: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    escalations: dict[str, Counter[str]] = defaultdict(Counter)
    kinds: dict[str, tuple[Patch | None, Area | None]] = {}
    fallbacks = reused = 0
    for fallback, trace, reuse in traces:
        if reuse is not None and reuse.reused:
            reused += 1
            continue
        if fallback:
            fallbacks += 1
            continue
        for invocation in trace:
            if invocation.attempt != 1 or invocation.fallback_from is not None:
                continue  # a retry, or a backend standing in for the decided one
            name, patch, area = patch_bucket(invocation.features)
            kinds[name] = (patch, area)
            if invocation.escalated_from is not None:
                escalations[invocation.site][name] += 1
            else:
                calls[invocation.site][name][invocation.backend] += 1
    sites = []
    for site in program.call_sites:
        candidates = [c.name for c in sorted(site.candidates, key=lambda c: c.cost)]
        buckets = []
        for name in sorted(calls[site.id], key=_bucket_order):
            counts = calls[site.id][name]
            total = sum(counts.values())
            names = candidates + sorted(set(counts) - set(candidates))
            shares = [BackendShare(backend=b, calls=counts[b], share=counts[b] / total) for b in names]
            patch, area = kinds[name]
            escalated = escalations[site.id][name] / total
            buckets.append(
                BucketView(bucket=name, patch=patch, area=area, calls=total, backends=shares, escalated=escalated)
            )
        total = sum(bucket.calls for bucket in buckets)
        sites.append(SiteView(site=site.id, function=site.function, calls=total, buckets=buckets))
    return PolicyView(
        program_id=program.id,
        last=last,
        decisions=len(traces),
        policy_decisions=len(traces) - fallbacks - reused,
        fallback_decisions=fallbacks,
        reused_decisions=reused,
        sites=sites,
        reuse=reuse_view(traces),
    )


_PATCHES = ("all", "detected", "other", "none")
_AREAS = ("small", "medium", "large")


def _bucket_order(name: str) -> tuple[int, int]:
    patch, _, area = name.partition("/")
    return _PATCHES.index(patch), _AREAS.index(area) if area else -1


def program_policy_view(store: Store, program_id: str, last: int = DEFAULT_WINDOW) -> PolicyView:
    """The view of a stored program (NotFound for an unknown one) over its last ``last`` decisions."""
    program = store.get_program(program_id)
    return policy_view(program, recent_traces(store, program_id, last), last)
