"""Feedback: the label for an answered frame becomes the task reward, once per decision.

The reward is ``fmprog.contract.score_answer`` (the paper's binary and open-form schemes, or the
0/1-loss formulation, chosen by a ``RewardConfig``), so the router and the policy score answers the
same way; the answer is matched against the label once, giving both the reward and whether the
answer was right. The task reward excludes the cost term of ``R = -L - lambda * C``; the policy
adds it, and the result carries what it needs: the executed sites and the cost of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fmprog.contract import RewardConfig, TaskKind, is_yes, score_answer
from router.errors import LabelRejected
from router.schemas import AnswerRecord, FeedbackIn, FeedbackResult
from router.store import LabelOutcome, QueuedMessage, Store

BINARY_LABELS = frozenset({"yes", "no"})


def check_label(kind: TaskKind, label: str) -> None:
    """A binary task's label must be yes or no, in any case (what the contract's rewards read)."""
    if kind == "binary" and label.strip().lower() not in BINARY_LABELS:
        raise LabelRejected(f"a binary task's label must be yes or no, got {label!r}")


def label_outcome(answer: AnswerRecord, label: str, correct: bool) -> LabelOutcome:
    """Right or wrong, and for a binary task which of TP, FP, FN, TN (positive: yes)."""
    if answer.kind != "binary":
        return LabelOutcome(right=correct)
    said, truth = is_yes(answer.answer), is_yes(label)
    return LabelOutcome(right=correct, binary=("tp" if truth else "fp") if said else ("fn" if truth else "tn"))


@dataclass(frozen=True)
class Labelled:
    """One label taken: the result for the client, the answer it labelled (read once), and whether
    that answer was right."""

    result: FeedbackResult
    answer: AnswerRecord
    correct: bool
    queued: bool = False  # a message for the policy was queued with the label


class FeedbackHandler:
    """Turns labels into task rewards and resolves each decision exactly once."""

    def __init__(self, store: Store, rewards: RewardConfig | None = None):
        self.store = store
        self.rewards = rewards or RewardConfig()

    def feedback(
        self,
        request: FeedbackIn,
        message: Callable[[AnswerRecord, str, float], QueuedMessage | None] | None = None,
    ) -> Labelled:
        """Reward the decision's answer against the label and resolve the decision.

        The same label again returns the stored result with ``repeat`` set (the first reward
        stands); a different label raises Conflict, as does a label for an expired decision; an
        unknown decision raises NotFound, a label the task cannot read LabelRejected. A new label's
        ``message(answer, label, reward)``, when there is one, is queued in the outbox in the
        transaction that stores the label.
        """
        answer = self.store.get_answer(request.decision_id)
        check_label(answer.kind, request.label)
        score = score_answer(answer.kind, answer.answer, request.label, self.rewards)
        outcome = label_outcome(answer, request.label, score.correct)
        queued = message(answer, request.label, score.reward) if message is not None else None
        stored, repeat = self.store.record_feedback(answer.id, request.label, score.reward, outcome, queued)
        result = FeedbackResult(
            decision_id=answer.id,
            program_id=answer.program_id,
            label=stored.label,
            reward=stored.reward,
            executed_sites=answer.executed_sites,
            site_costs=answer.site_costs,
            cost=answer.cost,
            repeat=repeat,
        )
        return Labelled(result, answer, score.correct, queued=queued is not None and not repeat)
