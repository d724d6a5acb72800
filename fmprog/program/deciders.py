"""Deciding each call when it runs: the decider protocol, the context it sees, three deciders.

A *decision* fixed up front (a backend per call site) is the simplest decider: it answers every
invocation of a site with the same backend, whatever happened before. A ``Decider`` is asked at
each invocation instead, with an ``InvocationContext``: which call site is calling, how many calls
this run and this site made before, the patch the call acts on (its box, its share of the frame,
the detector score that found it), what this run's earlier invocations answered, and how many call
sites have not run yet. After a VQA, LLM or OCR backend answers, the decider may ``escalate``: name
a dearer backend to ask the same question again; the program then gets the second answer.

The context holds numbers, backend names, site ids and model answers, never the program's source
or the text a program passed to a model: a decider may be a learned policy that must not read
untrusted code.

``GateDecider`` evaluates a policy's *gates* (``fmprog.contract.SiteGate``): linear scores over a
fixed vector of the context's numbers (``context_vector``; ``CONTEXT_FEATURES`` names them) and,
for escalation, the first answer's (``escalation_vector``, ``ESCALATION_FEATURES``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import Function
from fmprog.contract import SiteGate
from fmprog.rewards import is_yes

MAX_ANSWER_CHARS = 200
"""Model answers longer than this are cut in contexts and traces."""


@dataclass(frozen=True, slots=True)
class EarlierOutput:
    """What one earlier invocation of this run produced (failed attempts are left out)."""

    site_id: str
    function: Function
    backend: str
    boxes: int | None = None
    """Detections: how many boxes the detector returned."""
    top_score: float | None = None
    """Detections: the best box's score (``None`` when there was none)."""
    answer: str | None = None
    """VQA, LLM, OCR: the answer text, cut to ``MAX_ANSWER_CHARS``."""


@dataclass(frozen=True, slots=True)
class InvocationContext:
    """What a decider knows when a call site is about to invoke a backend."""

    site_id: str
    function: Function
    method: str
    index: int
    """This call's position in the run: how many calls were decided before it."""
    site_calls: int
    """How many calls this site made before this one in the run (loops repeat a site)."""
    box: tuple[int, int, int, int] | None
    """The patch the call acts on, ``(left, lower, right, upper)`` in frame coordinates
    (``lower``/``upper`` from the bottom); ``None`` for a text-only call."""
    area: float | None
    """The patch's area as a fraction of the frame's."""
    score: float | None
    """The detector score of the box ``find`` returned the patch for; ``None`` for the whole
    frame, a crop, or a patch the program built."""
    earlier: tuple[EarlierOutput, ...]
    """This run's earlier invocations that answered, in order."""
    sites_left: int
    """Call sites of the program that have not run yet in this run: a bound on the *new* sites
    that may still be reached (sites already run may run again, in a loop)."""


class Decider(ABC):
    """Chooses a backend for each invocation of a program's call sites while the program runs."""

    @abstractmethod
    def decide(self, context: InvocationContext) -> str:
        """The backend (by name) to invoke for this call."""

    def escalate(self, context: InvocationContext, answer: str) -> str | None:
        """After a VQA, LLM or OCR backend answered ``answer``, a dearer backend to ask the same
        call again, or ``None`` to keep the answer. By default: never."""
        return None


class StaticDecider(Decider):
    """A decision fixed up front: every invocation of a site gets the site's backend; never
    escalates. The executor runs it exactly as the mapping itself: checked once, up front, with no
    context built and no features in the trace."""

    def __init__(self, decision: Mapping[str, str]):
        self.decision = decision

    def decide(self, context: InvocationContext) -> str:
        return self.decision[context.site_id]


_NO = re.compile(r"\s*no\b", re.IGNORECASE)


class CascadeDecider(Decider):
    """The hand-fixed cascade from the benchmark analysis, a baseline for learned gates: detect
    with the dearest detector; answer VQA with the cheapest backend and re-ask the dearest one only
    when the cheap one said "no" about a patch a detector found; LLM and OCR with the cheapest.

    Build it with :meth:`for_backends` (optionally limited to a program's candidates)."""

    def __init__(self, choice: Mapping[Function, str], escalation: Mapping[Function, str] | None = None):
        self.choice = dict(choice)
        self.escalation = dict(escalation or {})

    @classmethod
    def for_backends(
        cls, backends: BackendRegistry, allowed: Collection[str] | None = None, *, detect_largest: bool = True
    ) -> CascadeDecider:
        """The cascade over ``backends`` (only those in ``allowed``, when given), by cost."""
        choice: dict[Function, str] = {}
        escalation: dict[Function, str] = {}
        for function in Function:
            served = [b for b in backends.for_function(function) if allowed is None or b.name in allowed]
            if not served:
                continue
            cheapest = min(served, key=lambda b: (b.cost, b.name)).name
            dearest = max(served, key=lambda b: (b.cost, b.name)).name
            choice[function] = dearest if function == Function.detect and detect_largest else cheapest
            if function == Function.vqa and dearest != cheapest:
                escalation[function] = dearest
        return cls(choice, escalation)

    def decide(self, context: InvocationContext) -> str:
        return self.choice[context.function]

    def escalate(self, context: InvocationContext, answer: str) -> str | None:
        if context.score is None or _NO.match(answer) is None:
            return None
        return self.escalation.get(context.function)


# -- gates ------------------------------------------------------------------------------------------

Vector = tuple[float, ...]


def _says_no(answer: str) -> bool:
    return _NO.match(answer) is not None


def context_vector(context: InvocationContext) -> Vector:
    """The context's numbers a gate's first choice scores, in the order of
    ``fmprog.contract.CONTEXT_FEATURES`` (each in 0..1)."""
    detected = said_yes = said_no = 0.0
    top = 0.0
    for output in context.earlier:
        if output.answer is not None:
            if said_yes == 0.0 and is_yes(output.answer):
                said_yes = 1.0
            elif said_no == 0.0 and _says_no(output.answer):
                said_no = 1.0
        elif output.boxes:
            detected = 1.0
            if output.top_score is not None and output.top_score > top:
                top = output.top_score
    score = context.score
    return (
        1.0,
        0.0 if context.box is None else 1.0,
        context.area or 0.0,
        0.0 if score is None else 1.0,
        score or 0.0,
        min(context.index, 32) / 32,
        min(context.site_calls, 8) / 8,
        min(context.sites_left, 8) / 8,
        detected,
        top,
        said_yes,
        said_no,
    )


def escalation_vector(context: Vector, answer: str | None) -> Vector:
    """The context's vector (from :func:`context_vector`) followed by the first answer's numbers,
    in the order of ``fmprog.contract.ESCALATION_FEATURES``."""
    text = answer or ""
    yes = 1.0 if is_yes(text) else 0.0
    no = 0.0 if yes else (1.0 if _says_no(text) else 0.0)
    empty = 0.0 if text.strip() else 1.0
    found = context[3]
    return (*context, yes, no, empty, no * found, yes * found)


def _dot(weights: Vector, features: Vector) -> float:
    total = 0.0
    for w, x in zip(weights, features, strict=True):
        total += w * x
    return total


class GateDecider(Decider):
    """Decides each invocation of a gated call site with the site's gate (see
    ``fmprog.contract.SiteGate``): the first choice is the backend whose weights score the
    context's vector highest; a VQA, LLM or OCR answer is re-asked of ``escalate_to`` when the
    escalation weights score the context's and the answer's vector above 0 and another backend
    answered first. Sites without a gate get their backend in ``fixed``.

    One decider serves one run (it keeps the last call's vector between ``decide`` and
    ``escalate``); build a new one per frame. Reading numbers only, it costs microseconds."""

    def __init__(self, gates: Mapping[str, SiteGate], fixed: Mapping[str, str]):
        self.fixed = fixed
        self._choice: dict[str, tuple[tuple[str, Vector], ...]] = {
            site: tuple((name, tuple(weights)) for name, weights in gate.choice.items()) for site, gate in gates.items()
        }
        self._escalation: dict[str, tuple[str, Vector]] = {
            site: (gate.escalate_to, tuple(gate.escalation))
            for site, gate in gates.items()
            if gate.escalate_to is not None and gate.escalation is not None
        }
        self._last: tuple[InvocationContext, str, Vector] | None = None

    def decide(self, context: InvocationContext) -> str:
        choices = self._choice.get(context.site_id)
        if choices is None:
            return self.fixed[context.site_id]
        x = context_vector(context)
        best, best_score = choices[0][0], _dot(choices[0][1], x)
        for name, weights in choices[1:]:
            score = _dot(weights, x)
            if score > best_score:
                best, best_score = name, score
        self._last = (context, best, x)
        return best

    def escalate(self, context: InvocationContext, answer: str) -> str | None:
        gate = self._escalation.get(context.site_id)
        if gate is None:
            return None
        target, weights = gate
        last = self._last
        if last is not None and last[0] is context:
            chosen, x = last[1], last[2]
        else:  # the site's first choice was fixed, not gated
            chosen, x = self.fixed.get(context.site_id), context_vector(context)
        if chosen == target:
            return None
        return target if _dot(weights, escalation_vector(x, answer)) > 0.0 else None
