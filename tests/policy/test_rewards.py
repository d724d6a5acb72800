from __future__ import annotations

import pytest

from fmprog.rewards import RewardConfig, program_reward, sub_rewards, task_loss, task_reward


@pytest.mark.parametrize(
    ("answer", "label", "expected"),
    [("yes", "yes", 1000), ("no", "yes", -100), ("no", "no", 1), ("yes", "no", -100), (True, "yes", 1000)],
)
def test_binary_authors(answer, label, expected):
    assert task_reward("binary", answer, label) == expected


@pytest.mark.parametrize(
    ("answer", "label", "expected"),
    [
        ("The Red one", "red", 100),
        ("blue", "red", -100),
        ("0", "N/A", 100),
        ("there are 10", "n/a", 100),
        ("none", "n/a", -100),
        ("n/a", "N/A", 100),
    ],
)
def test_open_authors(answer, label, expected):
    assert task_reward("open", answer, label) == expected


def test_loss_scheme_and_program_reward():
    assert task_loss("binary", "yes", "no") == 1.0
    assert task_reward("binary", "yes", "yes", "loss") == 0.0
    assert task_reward("open", "blue", "red", "loss") == -1.0
    assert program_reward(-1.0, 30.0, 0.1) == pytest.approx(-4.0)
    rewards = sub_rewards(-1.0, {"a": 10.0, "b": 2.0}, ["a", "b"], n_sites=4, lam=0.1)
    assert rewards == pytest.approx({"a": -0.25 - 1.0, "b": -0.25 - 0.2})


def test_configurable_values_and_errors():
    config = RewardConfig.model_validate({"binary": {"true_positive": 5}})
    assert task_reward("binary", "yes", "yes", config) == 5
    with pytest.raises(ValueError, match="unknown task kind"):
        task_reward("count", "1", "1")  # type: ignore[arg-type]
