"""The spread over seeds of the learned policies' benchmark results.

    python -m benchmarks.seed_spread RESULTS.json [RESULTS.json ...] --out benchmarks/results/vqa-seeds/spread.json

Each ``RESULTS.json`` is one ``fmprog bench`` run (``--seed`` differing between them, everything
else the same). For every row of the main tables (every label, no teacher) of a policy that
learns, and every track and lambda, the spread over the runs of the track's metric, cost per frame
and regret per frame: each seed's value, the mean, the sample standard deviation, the least and
the most. Writes the JSON (with the runs' seeds and the provenance of this summary) and a Markdown
table beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.provenance import provenance

MEASURES = ("metric", "cost_per_frame", "regret_per_frame")


def main_rows(results: Mapping[str, Any]) -> Iterable[tuple[str, str, float | None, dict[str, Any]]]:
    """``(track, policy, lambda, entry)`` for the rows of the main tables that a policy learned
    (those with a regret), every label, no teacher."""
    for track, data in results["tracks"].items():
        for entry in data["entries"]:
            learned = entry.get("regret_per_frame") is not None
            if learned and entry["label_fraction"] in (None, 1.0) and not entry["teacher"]:
                yield track, entry["policy"], entry["lambda"], entry


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Each value, their mean, sample standard deviation (0 for one), least and most."""
    return {
        "values": list(values),
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The spread of every learned row found in every run (a row some run lacks is left out and
    named under ``missing``)."""
    seeds = [run["settings"]["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs must differ in their seed, got seeds {seeds}")
    tables = [{(t, p, lam): e for t, p, lam, e in main_rows(run)} for run in runs]
    common = set(tables[0]).intersection(*tables[1:])
    rows = []
    for track, policy, lam in sorted(common, key=lambda k: (k[0], k[1], k[2] or 0.0)):
        entries = [table[track, policy, lam] for table in tables]
        row = {"track": track, "policy": policy, "lambda": lam}
        row.update({measure: spread([float(e[measure]) for e in entries]) for measure in MEASURES})
        rows.append(row)
    missing = sorted({key for table in tables for key in table} - common, key=str)
    return {"seeds": seeds, "rows": rows, "missing": [list(key) for key in missing]}


def markdown(summary: Mapping[str, Any]) -> str:
    seeds = ", ".join(str(seed) for seed in summary["seeds"])
    lines = [
        f"# Learned policies over seeds {seeds}",
        "",
        "Mean ± sample standard deviation [least, most] over the seeds; metric: binary F1, open accuracy, "
        "video agreement with the reference.",
        "",
        "| Track | Policy | λ | Metric | Cost/frame | Regret/frame |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        metric, cost, regret = (row[m] for m in MEASURES)
        lines.append(
            f"| {row['track']} | {row['policy']} | {row['lambda']:g} "
            f"| {metric['mean']:.3f} ± {metric['sd']:.3f} [{metric['min']:.3f}, {metric['max']:.3f}] "
            f"| {cost['mean']:.0f} ± {cost['sd']:.0f} [{cost['min']:.0f}, {cost['max']:.0f}] "
            f"| {regret['mean']:.1f} ± {regret['sd']:.1f} [{regret['min']:.1f}, {regret['max']:.1f}] |"
        )
    lines += [
        "",
        "Each seed:",
        "",
        "| Track | Policy | λ | Seed | Metric | Cost/frame | Regret/frame |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        metric, cost, regret = (row[m]["values"] for m in MEASURES)
        for i, seed in enumerate(summary["seeds"]):
            lines.append(
                f"| {row['track']} | {row['policy']} | {row['lambda']:g} | {seed} "
                f"| {metric[i]:.3f} | {cost[i]:.0f} | {regret[i]:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="results.json of runs that differ in --seed")
    parser.add_argument("--out", type=Path, required=True, help="the summary's JSON (the Markdown goes beside it)")
    args = parser.parse_args()
    runs = [json.loads(path.read_text()) for path in args.results]
    summary = {"provenance": provenance(), "inputs": [str(path) for path in args.results], **summarise(runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
