"""The policy's gates on the router's side, after the run: the per-invocation records the feedback
for a gated answer carries (whether a decision's gates fit the program is ``router.deciding``'s
check; the ``fmprog.program.GateDecider`` evaluates them while the program runs).

A gated decision still comes from one policy round trip per frame; the gates (weights of linear
scores over the numbers of each invocation's context, ``fmprog.contract.SiteGate``) are evaluated
by ``fmprog.program.GateDecider`` at each invocation, in microseconds. The feedback for a gated
answer lists every invocation a gate decided (``fmprog.contract.InvocationRecord``): the vector the
gate saw, rebuilt from the stored trace, the cost and, for VQA/LLM/OCR answers, the task reward the
answer would have earned as the program's answer, so a policy can compare an escalated answer with
the one it re-asked.
"""

from __future__ import annotations

from collections.abc import Sequence

from fmprog.backends.config import Function
from fmprog.contract import MAX_RECORDS, InvocationRecord
from fmprog.program import Invocation, gate_vectors
from fmprog.rewards import RewardConfig, TaskKind, score_answer
from router.schemas import FrameRecord


def invocation_records(answer: FrameRecord, label: str, rewards: RewardConfig) -> list[InvocationRecord] | None:
    """One record per invocation a gate decided in this answer's run (None when no gate decided
    it): see :func:`gate_records`."""
    return gate_records(answer.trace, answer.kind, label, rewards)


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
                site=invocation.site,
                backend=invocation.backend,
                call=invocation.features.call,
                escalated_from=invocation.escalated_from,
                features=list(vector),
                cost=invocation.cost,
                reward=reward,
            )
        )
    return records[:MAX_RECORDS]
