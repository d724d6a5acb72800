"""Frame reuse on the real-video track: how many frames a reuse gate answers without running the
program, and how often those answers equal running every frame.

    python -m benchmarks.reuse_study [--track benchmarks/tracks/video] [--out benchmarks/results]
        [--seeds 5] [--cache FILE]

Each query's stream is ``vtest.avi`` at 10 fps, every frame in order; "running every frame" gives
the track's per-frame reference answers (``benchmarks/make_video_track.py``), so a fresh run on a
frame answers its reference label, and a reused frame agrees when the reused answer equals the
frame's label. Replayed per query:

- the naive gate, at several fixed thresholds (a curve): reuse while the whole-frame mean absolute
  difference of 96x72 grey signatures to the frame that last ran is below the threshold and the
  answer is at most ``max_age`` frames old;
- the learned gate (``fmprog.streams.reuse.ReuseGate``), one per query, from its default state,
  learning online from its own fresh runs only (each compared with the previous fresh run's answer),
  at several tolerances, its default one the headline; its exploration draws differ by seed, so it
  is replayed with ``--seeds`` seeds and the mean reported;
- the oracle that reuses exactly when the answer did not change (same maximum age): an upper bound
  no gate reaches, since the reference itself flickers between consecutive frames.

Hyper-parameters were chosen on the first half of the video (frames 0-396, "val"); the second half
(frames 397-794, "test") is the held-out result, replayed from a cold start (the gates' default
state) and as the second half of the whole-video replay ("test_warm": the gates learned online,
from their own fresh runs, on the first half, as a deployed gate would have); the whole video is
reported as well. It writes ``<out>/reuse_study.json`` and
``<out>/reuse_study.md`` and prints the tables. About 15 s on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import provenance
from benchmarks.vqa.tracks import load_open, parse_video_ref
from benchmarks.vqa.video import VIDEO
from fmprog.streams.reuse import ReuseChoice, ReuseFeatures, ReuseGate, ReuseParams, reuse_features, signature
from fmprog.vision.video import SAMPLE_VIDEOS, video_frames

NAIVE_THRESHOLDS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
TOLERANCES = (0.04, 0.06, 0.08, 0.10, 0.12)
VAL_END = 397
"""Frames 0-396 are the validation half, 397 to the end the test half."""
TARGET_REUSE, TARGET_AGREEMENT = 0.50, 0.96


@dataclass(frozen=True)
class Replay:
    """One gate on one query's stream: per frame, whether it was answered by reuse, whether the
    answer agreed with the reference, whether it was an exploratory fresh run."""

    reused: np.ndarray
    agreed: np.ndarray
    explored: np.ndarray

    def part(self, lo: int, hi: int) -> Replay:
        """Frames ``lo`` to ``hi - 1`` of this replay (a replay's first frame is 0)."""
        return Replay(self.reused[lo:hi], self.agreed[lo:hi], self.explored[lo:hi])

    @property
    def reuse(self) -> float:
        return float(self.reused.mean())

    @property
    def agreement(self) -> float:
        return float(self.agreed.mean())

    @property
    def fresh(self) -> int:
        return int((~self.reused).sum())


class Stream:
    """A query's frames: signatures and reference labels, and the features between two frames
    (cached: every gate replays the same frames, and an answer is at most ``max_age`` frames old)."""

    def __init__(self, signatures: np.ndarray, labels: Sequence[str]):
        self.signatures = signatures
        self.labels = list(labels)
        self._features: dict[tuple[int, int], ReuseFeatures] = {}

    def features(self, t: int, last: int) -> ReuseFeatures:
        key = (t, last)
        if key not in self._features:
            self._features[key] = reuse_features(self.signatures[t], self.signatures[last], t - last)
        return self._features[key]


def replay(
    stream: Stream,
    lo: int,
    hi: int,
    decide: Callable[[ReuseFeatures], ReuseChoice | bool],
    learn: Callable[[ReuseFeatures, bool], None] | None = None,
) -> Replay:
    """Replay frames ``lo`` to ``hi - 1``: ``decide`` decides each frame after the first (True or a
    reusing choice: reuse), ``learn`` (if any) is told each fresh run's outcome, whether its answer
    equals the previous fresh run's."""
    labels = stream.labels
    reused, agreed, explored = (np.zeros(hi - lo, dtype=bool) for _ in range(3))
    last: int | None = None
    for t in range(lo, hi):
        if last is not None:
            features = stream.features(t, last)
            choice = decide(features)
            if isinstance(choice, ReuseChoice):
                explored[t - lo] = choice.reason == "explore"
                choice = choice.reuse
            if choice:
                reused[t - lo] = True
                agreed[t - lo] = labels[last] == labels[t]
                continue
            if learn is not None:
                learn(features, labels[t] == labels[last])
        last = t
        agreed[t - lo] = True
    return Replay(reused, agreed, explored)


def replay_learned(stream: Stream, lo: int, hi: int, params: ReuseParams, seed: int) -> Replay:
    """The learned gate from its default state, taught by its own fresh runs only."""
    gate = ReuseGate(params, seed=seed)
    return replay(stream, lo, hi, gate.decide, gate.learn)


def naive_gate(threshold: float, max_age: int) -> Callable[[ReuseFeatures], bool]:
    return lambda f: f.age <= max_age and f.mean_diff < threshold


def oracle(stream: Stream, lo: int, hi: int, max_age: int) -> Replay:
    """Reuse exactly when the answer is unchanged since the last run (and not too old)."""
    labels = stream.labels
    reused = np.zeros(hi - lo, dtype=bool)
    last: int | None = None
    for t in range(lo, hi):
        if last is not None and t - last <= max_age and labels[t] == labels[last]:
            reused[t - lo] = True
        else:
            last = t
    return Replay(reused, np.ones(hi - lo, dtype=bool), np.zeros(hi - lo, dtype=bool))


def load_streams(track: Path, video: Path, cache: Path | None) -> tuple[list[str], list[Stream]]:
    """Every query of the track with its labels in frame order, and the video's signatures."""
    if cache is not None and cache.is_file():
        signatures = np.load(cache)
    else:
        signatures = np.stack([signature(frame) for frame in video_frames(video)])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, signatures)
    queries, streams = [], []
    for q in load_open(track, "video", shuffle=False).queries:
        indices = [parse_video_ref(str(ref))[1] for ref in q.frames]
        if sorted(indices) != list(range(len(signatures))):
            raise SystemExit(f"{q.query}: the track's frames are not the video's {len(signatures)} frames")
        labels = [label for _, label in sorted(zip(indices, q.labels, strict=True))]
        queries.append(q.query)
        streams.append(Stream(signatures, labels))
    return queries, streams


def _row(replays: Sequence[Replay]) -> dict[str, float]:
    """The mean over seeds of one query's replays."""
    return {
        "reuse": float(np.mean([r.reuse for r in replays])),
        "agreement": float(np.mean([r.agreement for r in replays])),
        "fresh": float(np.mean([r.fresh for r in replays])),
        "explored": float(np.mean([r.explored.sum() for r in replays])),
        "reuse_sd": float(np.std([r.reuse for r in replays])),
        "agreement_sd": float(np.std([r.agreement for r in replays])),
    }


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in ("reuse", "agreement", "fresh")}


def _naive_at(curve: Sequence[dict[str, float]], reuse: float) -> float:
    """The naive curve's agreement at a reuse rate (linear between its points)."""
    points = sorted((c["reuse"], c["agreement"]) for c in curve)
    return float(np.interp(reuse, [p[0] for p in points], [p[1] for p in points]))


SEGMENTS = {
    "val": "frames 0-396, cold start: where the hyper-parameters were chosen",
    "test": "frames 397-794, cold start: held out",
    "test_warm": "frames 397-794 of the whole-video replay: held out, the gates warm from the first half",
    "whole": "frames 0-794, cold start",
}


def study(queries: Sequence[str], streams: Sequence[Stream], params: ReuseParams, seeds: int) -> dict[str, Any]:
    """Every gate on every query, per segment (``SEGMENTS``)."""
    n = len(streams[0].labels)
    bounds = {"val": (0, VAL_END), "test": (VAL_END, n), "test_warm": (VAL_END, n), "whole": (0, n)}
    gates: dict[str, Callable[[Stream, int, int], list[Replay]]] = {
        "oracle": lambda s, lo, hi: [oracle(s, lo, hi, params.max_age)]
    }
    for th in NAIVE_THRESHOLDS:
        gates[f"naive {th}"] = lambda s, lo, hi, th=th: [replay(s, lo, hi, naive_gate(th, params.max_age))]
    for tol in TOLERANCES:
        p = replace(params, tolerance=tol)
        gates[f"learned {tol}"] = lambda s, lo, hi, p=p: [replay_learned(s, lo, hi, p, seed) for seed in range(seeds)]
    replays: dict[str, dict[str, list[list[Replay]]]] = {name: {} for name in bounds}
    for gate, run in gates.items():
        for name in ("val", "test", "whole"):
            replays[name][gate] = [run(stream, *bounds[name]) for stream in streams]
        replays["test_warm"][gate] = [[r.part(VAL_END, n) for r in runs] for runs in replays["whole"][gate]]
    out: dict[str, Any] = {}
    for name, (lo, hi) in bounds.items():
        per_query = []
        for i, (query, stream) in enumerate(zip(queries, streams, strict=True)):
            labels = stream.labels[lo:hi]
            per_query.append(
                {
                    "query": query,
                    "flicker": sum(a != b for a, b in itertools.pairwise(labels)) / (len(labels) - 1),
                    "oracle": _row(replays[name]["oracle"][i]),
                    "naive": {str(th): _row(replays[name][f"naive {th}"][i]) for th in NAIVE_THRESHOLDS},
                    "learned": {str(t): _row(replays[name][f"learned {t}"][i]) for t in TOLERANCES},
                }
            )
        naive_curve = [_mean([r["naive"][str(th)] for r in per_query]) | {"threshold": th} for th in NAIVE_THRESHOLDS]
        learned_curve = [_mean([r["learned"][str(t)] for r in per_query]) | {"tolerance": t} for t in TOLERANCES]
        for point in learned_curve:
            point["naive_agreement_at_same_reuse"] = _naive_at(naive_curve, point["reuse"])
            by_seed = np.array(
                [[(r.reuse, r.agreement) for r in runs] for runs in replays[name][f"learned {point['tolerance']}"]]
            ).mean(axis=0)
            point["reuse_sd_over_seeds"], point["agreement_sd_over_seeds"] = (float(x) for x in by_seed.std(axis=0))
        for point in [*naive_curve, *learned_curve]:
            point["error_per_reuse"] = (1 - point["agreement"]) / point["reuse"] if point["reuse"] else 0.0
        headline = next(p for p in learned_curve if p["tolerance"] == params.tolerance)
        out[name] = {
            "frames": [lo, hi - 1],
            "what": SEGMENTS[name],
            "naive_curve": naive_curve,
            "learned_curve": learned_curve,
            "oracle": _mean([r["oracle"] for r in per_query]),
            "mean_flicker": float(np.mean([r["flicker"] for r in per_query])),
            "learned": headline,
            "target_met": headline["reuse"] >= TARGET_REUSE and headline["agreement"] >= TARGET_AGREEMENT,
            "queries": per_query,
        }
    return out


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}"


def markdown(results: dict[str, Any], params: ReuseParams) -> str:
    lines = [
        "# Frame reuse on the real-video track",
        "",
        f"`python -m benchmarks.reuse_study`: {len(results['whole']['queries'])} queries on `vtest.avi`, every frame.",
        "Agreement: the share of frames whose answer equals the reference (running every frame).",
        f"Learned gate: default parameters (tolerance {params.tolerance}, max age {params.max_age}, exploration "
        f"{params.exploration}), online from its own fresh runs only, from its default state, mean of "
        f"{results['seeds']} seeds. Naive gate: whole-frame mean difference below a threshold, max age "
        f"{params.max_age}. Target: reuse >= {TARGET_REUSE:.0%} at agreement >= {TARGET_AGREEMENT:.0%}. "
        "± is the standard deviation over seeds of the mean over queries.",
        "Hyper-parameters chosen on val (frames 0-396); test (397-794) held out, replayed from a cold start and "
        "as the second half of the whole-video replay (test_warm: the gates learned online on the first half).",
        "",
    ]
    for name in SEGMENTS:
        seg = results[name]
        lines += [
            f"## {name}: {seg['what']}; mean over queries",
            "",
            f"Reference flicker (answer differs from the previous frame's): {_pct(seg['mean_flicker'])}%. "
            f"Oracle reuse: {_pct(seg['oracle']['reuse'])}%. "
            f"Learned gate at tolerance {params.tolerance}: reuse {_pct(seg['learned']['reuse'])}%, agreement "
            f"{_pct(seg['learned']['agreement'])}%: target {'met' if seg['target_met'] else 'not met'}.",
            "",
            "| gate | setting | reuse % | agreement % | error per reused frame % | fresh runs "
            "| naive agreement % at same reuse |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for p in seg["naive_curve"]:
            lines.append(
                f"| naive | {p['threshold']} | {_pct(p['reuse'])} | {_pct(p['agreement'])} "
                f"| {_pct(p['error_per_reuse'])} | {p['fresh']:.0f} | |"
            )
        for p in seg["learned_curve"]:
            lines.append(
                f"| learned | {p['tolerance']} | {_pct(p['reuse'])} ± {_pct(p['reuse_sd_over_seeds']).strip()} "
                f"| {_pct(p['agreement'])} ± {_pct(p['agreement_sd_over_seeds']).strip()} "
                f"| {_pct(p['error_per_reuse'])} | {p['fresh']:.0f} | {_pct(p['naive_agreement_at_same_reuse'])} |"
            )
        lines.append("")
    for name in ("test", "test_warm", "whole"):
        lines += [f"## Per query, {name}", "", _query_table(results[name], params, markdown=True), ""]
    return "\n".join(lines)


_SHOWN_NAIVE = ("1.0", "1.5", "1.75")


def _query_table(seg: dict[str, Any], params: ReuseParams, markdown: bool) -> str:
    head = ["query", "flicker %", "oracle reuse %"]
    head += [f"naive {th} reuse/agr %" for th in _SHOWN_NAIVE]
    head += [f"learned {params.tolerance} reuse/agr %", "learned fresh"]
    rows = []
    for r in [*seg["queries"], None]:
        if r is None:
            learned = seg["learned"]
            naive = {th: next(p for p in seg["naive_curve"] if str(p["threshold"]) == th) for th in _SHOWN_NAIVE}
            cells = ["mean", _pct(seg["mean_flicker"]), _pct(seg["oracle"]["reuse"])]
        else:
            learned = r["learned"][str(params.tolerance)]
            naive = {th: r["naive"][th] for th in _SHOWN_NAIVE}
            cells = [r["query"], _pct(r["flicker"]), _pct(r["oracle"]["reuse"])]
        cells += [f"{_pct(naive[th]['reuse'])} / {_pct(naive[th]['agreement'])}" for th in _SHOWN_NAIVE]
        cells += [f"{_pct(learned['reuse'])} / {_pct(learned['agreement'])}", f"{learned['fresh']:.0f}"]
        rows.append(cells)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(c) + " |" for c in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    widths[0] = min(widths[0], 48)
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*(c[:48] if i == 0 else c for i, c in enumerate(row))) for row in [head, *rows])


def _rounded(value: Any) -> Any:
    """``value`` with its floats to 5 digits: the JSON stays readable and diffs stay small."""
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", type=Path, default=Path("benchmarks/tracks/video"))
    parser.add_argument("--video", type=Path, default=SAMPLE_VIDEOS / VIDEO)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--seeds", type=int, default=5, help="exploration seeds per learned replay")
    parser.add_argument("--cache", type=Path, help="keep the video's signatures in this .npy file (not in git)")
    args = parser.parse_args()
    start = time.perf_counter()
    params = ReuseParams()
    queries, streams = load_streams(args.track, args.video, args.cache)
    results: dict[str, Any] = {
        "video": args.video.name,
        "params": asdict(params),
        "seeds": args.seeds,
        "naive_thresholds": list(NAIVE_THRESHOLDS),
        "tolerances": list(TOLERANCES),
        "target": {"reuse": TARGET_REUSE, "agreement": TARGET_AGREEMENT},
    }
    results |= study(queries, streams, params, args.seeds)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["provenance"] = provenance()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reuse_study.json").write_text(json.dumps(_rounded(results), indent=1) + "\n")
    (args.out / "reuse_study.md").write_text(markdown(results, params) + "\n")
    for name in SEGMENTS:
        seg = results[name]
        print(f"\n{name}, {seg['what']}: mean over {len(queries)} queries")
        print(f"  {'gate':8} {'setting':>7} {'reuse %':>8} {'agree %':>8} {'fresh':>6} {'naive agree % there':>20}")
        for p in seg["naive_curve"]:
            print(
                f"  {'naive':8} {p['threshold']:>7} {_pct(p['reuse']):>8} {_pct(p['agreement']):>8} {p['fresh']:6.0f}"
            )
        for p in seg["learned_curve"]:
            reuse, agree, at_naive = _pct(p["reuse"]), _pct(p["agreement"]), _pct(p["naive_agreement_at_same_reuse"])
            print(f"  {'learned':8} {p['tolerance']:>7} {reuse:>8} {agree:>8} {p['fresh']:6.0f} {at_naive:>20}")
        print(f"  oracle reuse {_pct(seg['oracle']['reuse'])}%; target {'met' if seg['target_met'] else 'NOT met'}")
    for name in ("test", "test_warm", "whole"):
        print(f"\nper query, {name}:")
        print(_query_table(results[name], params, markdown=False))
    print(f"\n{results['seconds']} s; wrote {args.out / 'reuse_study.json'} and .md")


if __name__ == "__main__":
    main()
