"""The seeds' spread: the learned rows of the main tables, summarised over runs."""

from __future__ import annotations

import pytest

from benchmarks.seed_spread import markdown, summarise


def entry(policy: str, lam: float | None, metric: float, cost: float, regret: float | None, **extra) -> dict:
    return {
        "policy": policy, "lambda": lam, "label_fraction": 1.0, "teacher": False, "metric": metric,
        "cost_per_frame": cost, "regret_per_frame": regret, **extra,
    }  # fmt: skip


def run(seed: int, metric: float, extra_row: bool = False) -> dict:
    entries = [
        entry("static-large", None, 0.6, 2400.0, None),  # a baseline: no regret, not summarised
        entry("cascade", 0.001, metric, 600.0 + seed, 1.5),
        entry("cascade", 0.001, 0.1, 1.0, 9.0, label_fraction=0.1),  # fewer labels: not a main row
    ]
    if extra_row:
        entries.append(entry("fast", 0.001, 0.5, 300.0, 2.0))
    return {"settings": {"seed": seed}, "tracks": {"binary": {"entries": entries}}}


def test_each_learned_row_gets_its_spread_over_the_seeds():
    summary = summarise([run(1, 0.58), run(2, 0.60), run(42, 0.62, extra_row=True)])
    assert summary["seeds"] == [1, 2, 42]
    [row] = summary["rows"]
    assert (row["track"], row["policy"], row["lambda"]) == ("binary", "cascade", 0.001)
    assert row["metric"]["values"] == [0.58, 0.60, 0.62]
    assert row["metric"]["mean"] == pytest.approx(0.60) and row["metric"]["sd"] == pytest.approx(0.02)
    assert (row["cost_per_frame"]["min"], row["cost_per_frame"]["max"]) == (601.0, 642.0)
    assert summary["missing"] == [["binary", "fast", 0.001]]
    assert "| binary | cascade | 0.001 | 0.600 ± 0.020 [0.580, 0.620] |" in markdown(summary)
    assert "| binary | cascade | 0.001 | 2 | 0.600 | 602 | 1.5 |" in markdown(summary)  # each seed's row


def test_runs_of_one_seed_are_refused():
    with pytest.raises(ValueError, match="differ in their seed"):
        summarise([run(1, 0.5), run(1, 0.6)])
