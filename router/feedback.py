"""Feedback: the label for an answered frame becomes the task reward, once per decision.

The reward is ``fmprog.rewards.score_answer`` (the paper's binary and open-form schemes, or the
0/1-loss formulation, chosen by a ``RewardConfig``), so the router and the policy score answers the
same way; the answer is matched against the label once, giving both the reward and whether the
answer was right. The task reward excludes the cost term of ``R = -L - lambda * C``; the policy
adds it, and the result carries what it needs: the executed sites and the cost of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from fmprog.rewards import RewardConfig, TaskKind, is_yes, score_answer
from router.errors import LabelRejected
from router.schemas import FeedbackIn, FeedbackResult, FrameRecord, TeacherRun
from router.store import LabelOutcome, QueuedMessage, Store, utc_now

BINARY_LABELS = frozenset({"yes", "no"})


def check_label(kind: TaskKind, label: str) -> None:
    """A binary task's label must be yes or no, in any case (what the contract's rewards read)."""
    if kind == "binary" and label.strip().lower() not in BINARY_LABELS:
        raise LabelRejected(f"a binary task's label must be yes or no, got {label!r}")


def label_outcome(answer: FrameRecord, label: str, correct: bool) -> LabelOutcome:
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
    answer: FrameRecord
    correct: bool
    queued: bool = False  # a message for the policy was queued with the label


class FeedbackHandler:
    """Turns labels into task rewards and resolves each decision exactly once, within its label
    window (``window_s`` after its answer; no window when None)."""

    def __init__(self, store: Store, rewards: RewardConfig | None = None, window_s: float | None = None):
        self.store = store
        self.rewards = rewards or RewardConfig()
        self.window_s = window_s

    def feedback(
        self,
        request: FeedbackIn,
        message: Callable[[FrameRecord, str, float], QueuedMessage | None] | None = None,
        *,
        teacher: TeacherRun | None = None,
    ) -> Labelled:
        """Reward the decision's answer against the label and resolve the decision.

        The same label again returns the stored result with ``repeat`` set (the first reward
        stands); a different label raises Conflict; a label for a decision whose label window has
        closed raises Expired; an unknown decision raises NotFound, a label the task cannot read
        LabelRejected. A new label's ``message(answer, label, reward)``, when there is one, is
        queued in the outbox in the transaction that stores the label. A label from the program's
        ``teacher`` (its run given) is learned like any other but not counted as ground truth in
        the program's right and wrong answers.
        """
        answer = self.store.get_frame(request.decision_id)
        check_label(answer.kind, request.label)
        score = score_answer(answer.kind, answer.answer, request.label, self.rewards)
        outcome = None if teacher is not None else label_outcome(answer, request.label, score.correct)
        queued = message(answer, request.label, score.reward) if message is not None else None
        opened = None if self.window_s is None else utc_now() - timedelta(seconds=self.window_s)
        stored, repeat = self.store.record_feedback(
            answer.id,
            request.label,
            score.reward,
            outcome,
            queued,
            source="teacher" if teacher is not None else "client",
            teacher=teacher,
            window_opened=opened,
        )
        result = FeedbackResult(
            decision_id=answer.id,
            program_id=answer.program_id,
            label=stored.label,
            reward=stored.reward,
            executed_sites=answer.executed_sites,
            site_costs=answer.site_costs,
            cost=answer.cost,
            repeat=repeat,
            source=stored.source,
        )
        return Labelled(result, answer, score.correct, queued=queued is not None and not repeat)
