"""Decision latency of each policy algorithm on generated 128 x 128 frames (p50, p99, in ms).

Run: ``.venv/bin/python -m benchmarks.policy_decide [--decisions 300] [--algorithms fast structured]
[--out benchmarks/results/policy_decide.json]``.
A two-site program (detect: small/large, vqa: small/large); each policy first learns from 64
feedback events and trains once, all with default hyper-parameters. ``structured_code`` (a
ResNet-18 per site on 256 x 256 inputs, a forward and one backward pass per backend per site) is
measured over ``--slow-decisions`` decisions (default 30), so its p99 is close to its maximum.
Also timed: each ``observe`` of those 64 events (p50) and the one training round. Writes the numbers
and their provenance to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import provenance
from fmprog.contract import Feedback, PolicySpec
from fmprog.scene import generate_scene
from policy.algorithms import ALGORITHMS, build_policy

SITES = [
    {"id": "find@1:1", "function": "detect", "backends": [{"name": "det-s", "cost": 1}, {"name": "det-l", "cost": 4}]},
    {"id": "query@2:1", "function": "vqa", "backends": [{"name": "vqa-s", "cost": 1}, {"name": "vqa-l", "cost": 4}]},
]
SLOW = {"structured_code"}
FEEDBACK = 64
OUT = Path("benchmarks/results/policy_decide.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--slow-decisions", type=int, default=30, help="for " + ", ".join(sorted(SLOW)))
    parser.add_argument("--algorithms", nargs="*", default=sorted(ALGORITHMS), choices=sorted(ALGORITHMS))
    parser.add_argument("--out", type=Path, default=OUT, help="write the results as JSON here (default: %(default)s)")
    args = parser.parse_args()
    frames = [generate_scene(seed, "medium").image for seed in range(FEEDBACK)]
    results: dict[str, dict[str, float | int]] = {}
    print(f"{'algorithm':<16}{'p50 ms':>10}{'p99 ms':>10}{'n':>6}{'observe ms':>12}{'train s':>10}")
    for name in args.algorithms:
        spec = PolicySpec.model_validate({"sites": SITES, "lambda": 0.01, "algorithm": name, "seed": 0})
        policy = build_policy(spec)
        observed = []
        for i, frame in enumerate(frames):
            decision = policy.decide(frame)
            costs = {s["id"]: 1.0 for s in SITES}
            start = time.perf_counter()
            policy.observe(decision, Feedback(loss=float(i % 2), executed_sites=list(costs), costs=costs))
            observed.append(time.perf_counter() - start)
        start = time.perf_counter()
        policy.train()
        train_s = time.perf_counter() - start
        times = []
        for i in range(args.slow_decisions if name in SLOW else args.decisions):
            frame = frames[i % len(frames)]
            start = time.perf_counter()
            policy.decide(frame)
            times.append(time.perf_counter() - start)
        p50, p99 = np.percentile(np.asarray(times) * 1000, [50, 99])
        observe_ms = float(np.median(observed)) * 1000
        results[name] = {
            "decide_p50_ms": round(float(p50), 3),
            "decide_p99_ms": round(float(p99), 3),
            "decisions": len(times),
            "observe_p50_ms": round(observe_ms, 3),
            "train_s": round(train_s, 3),
        }
        print(f"{name:<16}{p50:>10.3f}{p99:>10.3f}{len(times):>6}{observe_ms:>12.3f}{train_s:>10.3f}", flush=True)
    report = {
        "provenance": provenance(),
        "sites": len(SITES),
        "frame": "128x128, generate_scene(seed, 'medium')",
        "feedback_events": FEEDBACK,
        "lambda": 0.01,
        "algorithms": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
