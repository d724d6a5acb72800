"""The benchmark's report: ``results.json`` (every number), ``results.md`` (tables) and PNG plots
(the Pareto view of metric against cost per track; cumulative cost, running accuracy and the
learned policies' regret along the stream; the same for the runs on fewer labels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BASELINE_ORDER = ("monolithic-small", "monolithic-large", "static-small", "static-large", "random", "oracle")


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    """Write every file of the report under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md"]
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    for name, track in results["tracks"].items():
        written.append(plot_pareto(name, track, out / f"{name}_pareto.png"))
        written.append(plot_stream(name, track, out / f"{name}_stream.png"))
        if track.get("label_curves"):
            written.append(plot_stream(name, track, out / f"{name}_labels.png", labels=True))
    return written


def _name(entry: dict[str, Any]) -> str:
    return entry["policy"] if entry["lambda"] is None else f"{entry['policy']} λ={entry['lambda']:g}"


def _ordered(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def rank(e: dict[str, Any]) -> tuple:
        base = BASELINE_ORDER.index(e["policy"]) if e["policy"] in BASELINE_ORDER else len(BASELINE_ORDER)
        return (base, e["policy"], e["lambda"] or 0.0)

    return sorted(entries, key=rank)


def markdown(results: dict[str, Any]) -> str:
    """Tables: per track, every run with metric, accuracy, cost, saving and regret; then the
    standalone accuracy of each backend."""
    made = results["provenance"]
    lines = [
        f"# Streaming VQA benchmark, {results['split']} split ({results['seconds']:.0f} s, "
        f"{made['machine']['cpus']} CPUs, {made['date']}, commit {made['commit']})",
        "",
        f"Command: `{made['command']}`.",
        "",
    ]
    lines.append("Cost per frame: each track's backend costs, summed over the calls that ran.")
    lines.append("")
    for name, track in results["tracks"].items():
        metric = "F1" if track["metric"] == "f1" else "Accuracy"
        frames = sum(q["frames"] for q in track["queries"])
        reference = track.get("reference", "monolithic-large")
        short = {"monolithic-large": "mono-large", "static-large": "reference"}.get(reference, reference)
        lines += [f"## {name} track: {len(track['queries'])} queries, {frames} frames", ""]
        if "config" in track:
            lines += [f"Answered by `{track['config']}`, priced by `{track['costs']}`.", ""]
        if reference == "static-large":
            lines += [
                "Ground truth is the reference configuration's answer (the dearest backend at every call, "
                "`static-large`), as NoScope measures: accuracy here is agreement with it.",
                "",
            ]
        both = metric != "Accuracy"  # F1, and accuracy beside it
        accuracy = " Accuracy |" if both else ""
        large = next((e for e in track["entries"] if e["policy"] == "static-large"), None)
        versus_large = large is not None and reference != "static-large"
        delta_large = " Δ vs static-large |" if versus_large else ""
        share = " Share of static-large's cost |" if large is not None else ""
        lines.append(
            f"| Policy | {metric} | Δ vs {short} |{delta_large}{accuracy} Cost/frame | Saving vs {short} |{share}"
            " Regret/frame |"
        )
        lines.append("|---|---|---|" + "---|" * (both + versus_large + (large is not None)) + "---|---|---|")
        for e in _ordered(track["entries"]):
            regret = f"{e['regret_per_frame']:.1f}" if "regret_per_frame" in e else ""
            accuracy = f" {e['accuracy']:.3f} |" if both else ""
            delta = e.get("metric_delta_vs_reference", e["metric_delta_vs_monolithic_large"])
            saving = e.get("saving_vs_reference", e["saving_vs_monolithic_large"])
            to_large = f" {100 * (e['metric'] - large['metric']):+.1f} pts |" if versus_large else ""
            of_large = f" {100 * e['cost_per_frame'] / large['cost_per_frame']:.0f}% |" if large is not None else ""
            lines.append(
                f"| {_name(e)} | {e['metric']:.3f} | {100 * delta:+.1f} pts |{to_large}"
                f"{accuracy} {e['cost_per_frame']:.0f} "
                f"| {100 * saving:.1f}% |{of_large} {regret} |"
            )
        lines += _verified_table(track)
        if "drift" in track:
            drift = track["drift"]
            lines += [
                "",
                f"Drift: from the middle of each stream, `{drift['backend']}` degrades: {100 * drift['rate']:.0f}% of "
                "its answers corrupted (a detector's detections each lost). F1 pooled over all queries per window:",
                "",
                "| Run | F1 before | F1 right after | Frames to recover (within 2 pts) |",
                "|---|---|---|---|",
            ]
            for run in drift["runs"]:
                recovered = "not within the stream" if run["frames_to_recover"] is None else run["frames_to_recover"]
                lines.append(
                    f"| {_name(run)} | {run['f1_before']:.3f} | {run['f1_first_window_after']:.3f} | {recovered} |"
                )
        lines += _labels_table(track, metric)
        lines += _off_policy_table(track, metric)
        types = list(track["entries"][0]["by_type"])
        lines += ["", f"{metric} (cost/frame) by query type:", ""]
        lines.append("| Policy | " + " | ".join(types) + " |")
        lines.append("|---|" + "---|" * len(types))
        for e in _ordered(track["entries"]):
            cells = [f"{v['metric']:.2f} ({v['cost_per_frame']:.0f})" for v in e["by_type"].values()]
            lines.append(f"| {_name(e)} | " + " | ".join(cells) + " |")
        lines.append("")
    if not results["standalone"]:
        return "\n".join(lines) + "\n"
    lines += ["## Each backend alone", ""]
    lines.append("| Backend | Function | Cost | Accuracy (easy / medium / hard, or knowledge) |")
    lines.append("|---|---|---|---|")
    for name, b in results["standalone"].items():
        if "accuracy" in b:
            acc = " / ".join(f"{b['accuracy'][d]:.3f}" for d in ("easy", "medium", "hard"))
        else:
            acc = f"{b['knowledge_accuracy']:.3f} (knowledge)"
        lines.append(f"| {name} | {b['function']} | {b['cost']:g} | {acc} |")
    return "\n".join(lines) + "\n"


def _verified_table(track: dict[str, Any]) -> list[str]:
    """How far the track's reference is from the hand-verified sample, per query."""
    verified = track.get("verified")
    if not verified:
        return []
    lines = [
        "",
        f"The reference against the hand-verified sample ({len(verified['frames'])} frames whose people were "
        "marked by eye; each program run with the marked people as its detections and their marked colours): "
        f"mean agreement {verified['agreement']:.3f}. The marked colour is that of the upper clothes; the VQA "
        "backends name the colour of the person's whole box.",
        "",
        "| Query | Type | Reference agrees with hand | Hand 'yes' share |",
        "|---|---|---|---|",
    ]
    for row in verified["queries"]:
        agreed = "-" if row["agreement"] is None else f"{row['agreement']:.3f}"
        yes = "-" if row["hand_yes"] is None else f"{row['hand_yes']:.2f}"  # not a yes/no query
        lines.append(f"| {row['query']} | {row['type']} | {agreed} | {yes} |")
    return lines


def _off_policy_table(track: dict[str, Any], metric: str) -> list[str]:
    """Each policy estimated from a learned run's logged decisions, beside its live run."""
    rows = track.get("off_policy") or []
    if not rows:
        return []
    lines = [
        "",
        "Off-policy estimates from each learned run's logged decisions at the middle lambda (`fmprog.off_policy`), "
        "beside each policy's live run on the same frames. A `lambda=` target is the logged run's own posteriors "
        "or networks at that lambda, frame by frame; its live run learned from its own choices. Mean weight: 1 "
        "where the logged run "
        "covers the target's runs; below, it made them too rarely to be seen. A target marked * makes runs the "
        "logged decisions never make (below): its estimates leave those runs out. "
        f"{metric} and cost/frame, live / IPS / SNIPS / DR:",
        "",
        f"| Logged run | Target | Live run | {metric}: live | IPS | SNIPS | DR | Cost/frame: live | IPS | SNIPS | DR "
        "| Mean weight | Effective runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        metrics = " | ".join(_cell(row[name], "metric", ".3f") for name in ("ips", "snips", "dr"))
        costs = " | ".join(_cell(row[name], "cost_per_frame", ".0f") for name in ("ips", "snips", "dr"))
        live, mark = row["live"], " *" if row["uncovered"] else ""
        lines.append(
            f"| {row['logged']} | {row['target']}{mark} | {row['live_run']} | {live['metric']:.3f} | {metrics} "
            f"| {live['cost_per_frame']:.0f} | {costs} | {row['mean_weight']:.3f} | {row['effective_runs']:.0f} |"
        )
    gaps = sorted({gap for row in rows for gap in row["uncovered"]})
    if gaps:
        lines += ["", "Not covered by the logged decisions (those targets' estimates miss these runs):"]
        lines += [f"- {gap}" for gap in gaps[:12]]
    return lines


def _cell(estimate: dict[str, Any] | None, key: str, fmt: str) -> str:
    return "n/a" if estimate is None else format(estimate[key], fmt)


def _labels_table(track: dict[str, Any], metric: str) -> list[str]:
    """The runs on fewer labels beside their algorithm's on every label, per lambda."""
    fewer = [e for e in track["entries"] if e["policy"] != e["algorithm"]]
    if not fewer:
        return []
    lines = [
        "",
        "Fewer labels: the frames whose label the policy doubts most (as the router asks for them), "
        "labelled by the ground truth or by a teacher (the all-largest configuration on a random share of the "
        "frames, or on those the policy doubts most; its cost in cost/frame):",
        "",
        f"| Policy | λ | Labels | {metric} | Δ vs every label | Cost/frame | of it, teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    full = {(e["algorithm"], e["lambda"]): e for e in track["entries"] if e["policy"] == e["algorithm"]}
    for key, every in sorted(full.items(), key=lambda item: (item[0][0], item[0][1] or 0.0)):
        runs = [e for e in fewer if (e["algorithm"], e["lambda"]) == key]
        if not runs:
            continue
        for e in [every, *sorted(runs, key=lambda e: (e["teacher"], -e["label_fraction"], e["teacher_pick"] or ""))]:
            pick = "random pick" if e.get("label_pick") == "random" else None  # labels: by doubt unless said
            share = f"{100 * e['label_fraction']:g}%" + (f" teacher ({e['teacher_pick']})" if e["teacher"] else "")
            share += f" ({pick})" if pick else ""
            teacher = f"{e['teacher_cost_per_frame']:.0f}" if "teacher_cost_per_frame" in e else ""
            lines.append(
                f"| {e['algorithm']} | {e['lambda']:g} | {share} | {e['metric']:.3f} "
                f"| {100 * (e['metric'] - every['metric']):+.1f} pts | {e['cost_per_frame']:.0f} | {teacher} |"
            )
    return lines


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(name: str, track: dict[str, Any], path: Path) -> Path:
    """Metric against cost per frame (log scale): baselines as points, learned policies as lines over lambda."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for e in track["entries"]:
        by_policy.setdefault(e["policy"], []).append(e)
    for policy, entries in by_policy.items():
        entries.sort(key=lambda e: e["cost_per_frame"])
        xs = [e["cost_per_frame"] for e in entries]
        ys = [e["metric"] for e in entries]
        style = "o-" if len(entries) > 1 else ("*" if policy == "oracle" else "s")
        ax.plot(xs, ys, style, label=policy, markersize=8 if len(entries) == 1 else 5)
    ax.set_xscale("log")
    ax.set_xlabel("cost per frame (log)")
    ax.set_ylabel("F1 on positives" if track["metric"] == "f1" else "accuracy")
    ax.set_title(f"{name} track: quality against cost")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stream(name: str, track: dict[str, Any], path: Path, labels: bool = False) -> Path:
    """Cumulative cost per query, running accuracy and, for learned policies, regret per frame
    so far, along the stream (learned policies at the middle lambda). Every run but those on fewer
    labels; with ``labels``, the runs on fewer labels beside their algorithm's on every label
    (their learning curves side by side; a teacher's cost is in the cumulative cost)."""
    plt = _pyplot()
    fig, (left, right, regret) = plt.subplots(1, 3, figsize=(16, 4))
    fewer = set(track.get("label_runs", []))
    wanted = set(track.get("label_curves", []))
    for label, curve in track["curves"].items():
        if (label not in wanted) if labels else (label in fewer):
            continue
        left.plot(curve["frame"], curve["cumulative_cost"], label=label)
        right.plot(curve["frame"], curve["running_accuracy"], label=label)
        if "regret_per_frame" in curve:
            regret.plot(curve["frame"], curve["regret_per_frame"], label=label)
    regret.set_xlabel("frame")
    regret.set_ylabel("regret per frame so far (reward units)")
    regret.set_title(f"{name}: regret (λ={track['curve_lambda']:g})")
    regret.grid(True, alpha=0.3)
    regret.legend(fontsize=7, loc="upper right")
    left.set_yscale("log")
    left.set_xlabel("frame")
    left.set_ylabel("cumulative cost (mean over queries, log)")
    right.set_xlabel("frame")
    right.set_ylabel("running accuracy")
    left.set_title(f"{name}: cumulative cost")
    right.set_title(f"{name}: running accuracy (λ={track['curve_lambda']:g})")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
