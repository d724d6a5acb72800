"""What a policy can win back after a detector drifts: the hand rule's binary F1 with each detector.

    python -m benchmarks.drift_ceiling [--split validation] [--rate 0.5] --out FILE.json

The benchmark's detector drift (``fmprog bench --drift-backend detect-large --drift-rate 0.5``)
makes ``detect-large`` lose each detection at the rate from the middle of every binary stream. A
policy can answer it only by choosing among the configurations that are left; this measures them.
The hand rule (``CascadeDecider``: VQA escalated on a "no" about a found candidate) runs every
binary stream of the split three ways: with ``detect-large`` as it is, with ``detect-large``
degrading from the middle, and with ``detect-small`` (which does not drift). For each, the F1
pooled over every query's frames (as the benchmark's drift table pools them) in the
``DRIFT_WINDOW`` frames before the middle, the same number after it, and the whole second half.
Backend outputs go through the benchmark's output cache (``--cache``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import provenance
from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.harness import Drift, degrading, load_backends, run_decider
from benchmarks.vqa.runner import DRIFT_WINDOW, pooled_f1
from benchmarks.vqa.splits import SPLITS, binary_track
from benchmarks.vqa.tracks import ImageResolver, load_binary
from fmprog.program import CascadeDecider, Executor, compile_program

DRIFTING = "detect-large"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=SPLITS, default="validation")
    parser.add_argument("--rate", type=float, default=0.5, help="share of detect-large's detections lost")
    parser.add_argument("--config", type=Path, default=Path("fmprog/configs/synthetic.yaml"))
    parser.add_argument("--costs", type=Path, default=Path("fmprog/configs/gpu.yaml"))
    parser.add_argument("--cache", type=Path, help="the benchmark's output cache (default: none)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    track = load_binary(binary_track(args.split))
    backends = cached_registry(load_backends(args.config, args.costs), OutputCache(args.cache))
    images = ImageResolver()
    runs: dict[str, list[np.ndarray]] = {"detect-large": [], "detect-large drifting": [], "detect-small": []}
    labels = []
    for query in track.queries:
        program = compile_program(query.program)
        frames = [images(ref) for ref in query.frames]
        labels.append(np.array([label == "yes" for label in query.labels]))
        drifting, switch = degrading(backends, Drift(DRIFTING, args.rate), len(frames), seed=0)
        for name, registry, drift, largest in (
            ("detect-large", backends, None, True),
            ("detect-large drifting", drifting, switch, True),
            ("detect-small", backends, None, False),
        ):
            decider = CascadeDecider.for_backends(registry, detect_largest=largest)
            outcomes = run_decider(Executor(registry), program, frames, query.labels, "binary", decider, drift)
            runs[name].append(np.array([o.positive for o in outcomes]))
    middle = min(len(y) for y in labels) // 2
    windows = {
        "before": (middle - DRIFT_WINDOW, middle),
        "after": (middle, middle + DRIFT_WINDOW),
        "second_half": (middle, 2 * middle),
    }
    f1 = {name: {window: pooled_f1(runs[name], labels, *span) for window, span in windows.items()} for name in runs}
    result = {
        "provenance": provenance(),
        "split": args.split,
        "queries": len(track.queries),
        "drift": {"backend": DRIFTING, "rate": args.rate, "frame": middle},
        "window": DRIFT_WINDOW,
        "f1": f1,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, values in f1.items():
        print(f"{name:24}" + "".join(f"{window} {value:.3f}  " for window, value in values.items()))


if __name__ == "__main__":
    main()
