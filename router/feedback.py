"""Feedback: the label for an answered frame becomes the task reward, once per decision.

The reward itself is ``policy.rewards.task_reward`` (the paper's binary and open-form schemes, or
the 0/1-loss formulation, chosen by a ``RewardConfig``), so the router and the policy score
answers the same way. The task reward excludes the cost term of ``R = -L - lambda * C``; the
policy adds it, and the result carries what it needs: the executed sites and the cost of each.
"""

from __future__ import annotations

from policy.rewards import RewardConfig, task_reward
from router.errors import LabelRejected
from router.schemas import FeedbackIn, FeedbackResult, TaskKind
from router.store import Store

BINARY_LABELS = frozenset({"yes", "no"})


def check_label(kind: TaskKind, label: str) -> None:
    """A binary task's label must be yes or no, in any case (what policy.rewards reads)."""
    if kind == "binary" and label.strip().lower() not in BINARY_LABELS:
        raise LabelRejected(f"a binary task's label must be yes or no, got {label!r}")


class FeedbackHandler:
    """Turns labels into task rewards and resolves each decision exactly once."""

    def __init__(self, store: Store, rewards: RewardConfig | None = None):
        self.store = store
        self.rewards = rewards or RewardConfig()

    def feedback(self, request: FeedbackIn) -> FeedbackResult:
        """Reward the decision's answer against the label and resolve the decision.

        The same label again returns the stored result with ``repeat`` set (the first reward
        stands); a different label raises Conflict, as does a label for an expired decision; an
        unknown decision raises NotFound, a label the task cannot read LabelRejected.
        """
        decision = self.store.get_decision(request.decision_id)
        check_label(decision.kind, request.label)
        reward = task_reward(decision.kind, decision.answer, request.label, self.rewards)
        stored, repeat = self.store.record_feedback(decision.id, request.label, reward)
        return FeedbackResult(
            decision_id=decision.id,
            program_id=decision.program_id,
            label=stored.label,
            reward=stored.reward,
            executed_sites=decision.executed_sites,
            site_costs=decision.site_costs,
            cost=decision.cost,
            repeat=repeat,
        )
