"""Task rewards, HTTP-free, for the router to compute feedback with.

Two schemes, selectable:

- ``"authors"`` (the paper's research code): binary task TP +1000, FN -100, TN +1, FP -100;
  open-form task +100 if the lower-cased label is a substring of the lower-cased answer (label
  "n/a" also matches an answer containing "0"), else -100. Values are configurable.
- ``"loss"`` (the paper's formulation): the 0/1 loss ``L`` (0 when correct, same matching rules),
  returned as the task reward ``-L``; the cost term ``-lambda * C`` is added by the policy
  (:func:`program_reward` gives the full ``R = -L - lambda * C``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TaskKind = Literal["binary", "open"]
Scheme = Literal["authors", "loss"]


class BinaryRewards(BaseModel):
    """The authors' binary rewards: rare positives are worth much more than negatives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    true_positive: float = 1000.0
    false_negative: float = -100.0
    true_negative: float = 1.0
    false_positive: float = -100.0


class OpenRewards(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    correct: float = 100.0
    wrong: float = -100.0


class RewardConfig(BaseModel):
    """Which scheme, and the values of the authors' scheme."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Scheme = "authors"
    binary: BinaryRewards = Field(default_factory=BinaryRewards)
    open: OpenRewards = Field(default_factory=OpenRewards)


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


def task_loss(kind: TaskKind, answer: object, label: object) -> float:
    """The paper's 0/1 loss ``L``: 0 when the answer is right, else 1."""
    if kind == "binary":
        return 0.0 if is_yes(answer) == is_yes(label) else 1.0
    if kind == "open":
        return 0.0 if open_match(answer, label) else 1.0
    raise ValueError(f"unknown task kind {kind!r} (expected 'binary' or 'open')")


def task_reward(kind: TaskKind, answer: object, label: object, scheme: Scheme | RewardConfig = "authors") -> float:
    """The task reward of one answer (without the cost term).

    ``scheme`` is ``"authors"``, ``"loss"`` (returns ``-L``) or a :class:`RewardConfig`."""
    config = scheme if isinstance(scheme, RewardConfig) else RewardConfig(scheme=scheme)
    if config.scheme == "loss":
        return -task_loss(kind, answer, label)
    if kind == "binary":
        predicted, actual = is_yes(answer), is_yes(label)
        values = config.binary
        if actual:
            return values.true_positive if predicted else values.false_negative
        return values.false_positive if predicted else values.true_negative
    if kind == "open":
        return config.open.correct if open_match(answer, label) else config.open.wrong
    raise ValueError(f"unknown task kind {kind!r} (expected 'binary' or 'open')")


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
