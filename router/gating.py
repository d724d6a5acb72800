"""The policy's gates on the router's side: whether a decision's gates fit the program (the
``fmprog.program.GateDecider`` evaluates them while the program runs) and the per-invocation
records the feedback for a gated answer carries.

A gated decision still comes from one policy round trip per frame; the gates (weights of linear
scores over the numbers of each invocation's context, ``fmprog.contract.SiteGate``) are evaluated
by ``fmprog.program.GateDecider`` at each invocation, in microseconds. The feedback for a gated
answer lists every invocation a gate decided (``fmprog.contract.InvocationRecord``): the vector the
gate saw, rebuilt from the stored trace, the cost and, for VQA/LLM/OCR answers, the task reward the
answer would have earned as the program's answer, so a policy can compare an escalated answer with
the one it re-asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fmprog.backends.config import Function
from fmprog.contract import MAX_RECORDS, InvocationRecord, RewardConfig, SiteGate, TaskKind, score_answer
from fmprog.program import Invocation, gate_vectors
from router.schemas import AnswerRecord, InvocationPublic, ProgramPublic


def gate_problem(gates: Mapping[str, SiteGate], program: ProgramPublic) -> str | None:
    """Why these gates do not fit the program (None when they do): every gated site must be one of
    its call sites, every backend a gate can pick one of the site's candidates, and only VQA, LLM
    and OCR sites may escalate."""
    sites = {site.id: site for site in program.call_sites}
    for site_id, gate in gates.items():
        site = sites.get(site_id)
        if site is None:
            return f"gates name call site {site_id!r}, which the program does not have"
        names = {c.name for c in site.candidates}
        strays = sorted(gate.backends - names)
        if strays:
            return f"gate of call site {site_id} can pick {strays[0]!r}, which is not one of its candidates"
        if gate.escalate_to is not None and site.function == Function.detect:
            return f"gate of call site {site_id} escalates, but detections cannot be re-asked"
    return None


def invocation_records(answer: AnswerRecord, label: str, rewards: RewardConfig) -> list[InvocationRecord] | None:
    """One record per invocation a gate decided in this answer's run (None when no gate decided
    it): see :func:`gate_records`."""
    if not any(i.features is not None for i in answer.trace):
        return None
    return gate_records(runtime_trace(answer.trace), answer.kind, label, rewards)


def runtime_trace(trace: Sequence[InvocationPublic]) -> list[Invocation]:
    """A stored trace as the runtime's invocations."""
    return [Invocation(site_id=i.site, **i.model_dump(exclude={"site"})) for i in trace]


def gate_records(
    invocations: Sequence[Invocation], kind: TaskKind, label: str, rewards: RewardConfig
) -> list[InvocationRecord] | None:
    """One record per invocation of a gated run (None when no decider ran it): site, backend,
    call, ``escalated_from``, the gate's vector (rebuilt from the trace), cost and, for VQA/LLM/OCR
    answers, the task reward of that answer against ``label``."""
    if not any(i.features is not None for i in invocations):
        return None
    records = []
    for invocation, vector in zip(invocations, gate_vectors(invocations), strict=True):
        if vector is None or invocation.features is None:
            continue
        reward = None
        if invocation.function != Function.detect and invocation.features.answer is not None:
            reward = score_answer(kind, invocation.features.answer, label, rewards).reward
        records.append(
            InvocationRecord(
                site=invocation.site_id,
                backend=invocation.backend,
                call=invocation.features.call,
                escalated_from=invocation.escalated_from,
                features=list(vector),
                cost=invocation.cost,
                reward=reward,
            )
        )
    return records[:MAX_RECORDS]
