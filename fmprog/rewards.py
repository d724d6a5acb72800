"""How answers are scored: the task reward of an answer against its label, and the paper's rewards.

Names follow the paper: ``lambda`` weighs cost against the task term: ``R = -L - lambda * C``,
sub-reward ``r_i = -lambda * C_i - L / N``.

Two reward schemes, selectable:

- ``"authors"`` (the paper's research code): binary task TP +1000, FN -100, TN +1, FP -100;
  open-form task +100 if the lower-cased label is a substring of the lower-cased answer (label
  "n/a" also matches an answer containing "0"), else -100. Values are configurable.
- ``"loss"`` (the paper's formulation): the 0/1 loss ``L`` (0 when correct, same matching rules),
  returned as the task reward ``-L``; the cost term ``-lambda * C`` is added by the policy
  (:func:`program_reward` gives the full ``R = -L - lambda * C``).

The router scores labels with it and the policy learns from the rewards; neither imports the other.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

TaskKind = Literal["binary", "open"]
Scheme = Literal["authors", "loss"]


class BinaryRewards(BaseModel):
    """The authors' binary rewards: rare positives are worth much more than negatives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    true_positive: float = Field(default=1000.0, description="A yes answer to a frame labelled yes.")
    false_negative: float = Field(default=-100.0, description="A no answer to a frame labelled yes.")
    true_negative: float = Field(default=1.0, description="A no answer to a frame labelled no.")
    false_positive: float = Field(default=-100.0, description="A yes answer to a frame labelled no.")


class OpenRewards(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    correct: float = Field(default=100.0, description="An open-form answer that contains its label.")
    wrong: float = Field(default=-100.0, description="An open-form answer that does not.")


class RewardConfig(BaseModel):
    """Which scheme, and the values of the authors' scheme."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Scheme = Field(
        default="authors",
        description="authors: the research code's rewards below; loss: the paper's 0/1 loss, -1 wrong and 0 right.",
    )
    binary: BinaryRewards = Field(default_factory=BinaryRewards, description="The rewards of yes/no answers.")
    open: OpenRewards = Field(default_factory=OpenRewards, description="The rewards of open-form answers.")


class AnswerScore(NamedTuple):
    """One answer scored against its label: whether it is right (loss 0) and its task reward."""

    correct: bool
    reward: float


def _text(value: object) -> str:
    return ("" if value is None else str(value)).strip().lower()


def is_yes(answer: object) -> bool:
    """A binary answer is positive when it says yes (``True``, or text containing "yes")."""
    if isinstance(answer, bool):
        return answer
    return "yes" in _text(answer)


def open_match(answer: object, label: object) -> bool:
    """The authors' open-form rule: the lower-cased label is a substring of the lower-cased answer;
    the label "n/a" also matches an answer containing "0"."""
    text, gold = _text(answer), _text(label)
    if gold in text:
        return True
    return gold == "n/a" and "0" in text


def score_answer(
    kind: TaskKind, answer: object, label: object, scheme: Scheme | RewardConfig = "authors"
) -> AnswerScore:
    """Whether the answer is right and its task reward (without the cost term), matching once.

    ``scheme`` is ``"authors"``, ``"loss"`` (the reward is ``-L``) or a :class:`RewardConfig`."""
    config = scheme if isinstance(scheme, RewardConfig) else RewardConfig(scheme=scheme)
    if kind == "binary":
        predicted, actual = is_yes(answer), is_yes(label)
        correct = predicted == actual
        values = config.binary
        if actual:
            reward = values.true_positive if predicted else values.false_negative
        else:
            reward = values.false_positive if predicted else values.true_negative
    elif kind == "open":
        correct = open_match(answer, label)
        reward = config.open.correct if correct else config.open.wrong
    else:
        raise ValueError(f"unknown task kind {kind!r} (expected 'binary' or 'open')")
    if config.scheme == "loss":
        reward = -0.0 if correct else -1.0
    return AnswerScore(correct, float(reward))


def task_loss(kind: TaskKind, answer: object, label: object) -> float:
    """The paper's 0/1 loss ``L``: 0 when the answer is right, else 1."""
    return 0.0 if score_answer(kind, answer, label).correct else 1.0


def task_reward(kind: TaskKind, answer: object, label: object, scheme: Scheme | RewardConfig = "authors") -> float:
    """The task reward of one answer (without the cost term).

    ``scheme`` is ``"authors"``, ``"loss"`` (returns ``-L``) or a :class:`RewardConfig`."""
    return score_answer(kind, answer, label, scheme).reward


def program_reward(task: float, cost: float, lam: float) -> float:
    """The paper's program reward ``R = task - lambda * C`` (``task = -L`` under the loss scheme)."""
    return float(task) - float(lam) * float(cost)


def sub_rewards(
    task: float, costs: dict[str, float], executed_sites: list[str], n_sites: int, lam: float
) -> dict[str, float]:
    """The paper's structured sub-rewards ``r_i = -lambda * C_i + task / N`` for the executed sites,
    with ``N`` the program's number of routed call sites (``task = -L`` gives ``-L/N``)."""
    if n_sites < 1:
        raise ValueError("a program has at least one call site")
    share = float(task) / n_sites
    return {site: share - float(lam) * float(costs.get(site, 0.0)) for site in executed_sites}
