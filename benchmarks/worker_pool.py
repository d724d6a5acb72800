"""What running programs in worker processes costs, and what it protects.

1. Added cost per run: the 4-call-site program of ``benchmarks.executor_overhead`` against
   instant backends on a 640 x 480 frame, in process and through a warm pool, interleaved; prints
   p50 and p99 of each and the difference of the medians.
2. Other tenants under attack: one thread answers the small program through the pool, first
   alone, then while another thread keeps running a program that compares two 60-level nested
   lists (stopped by the pool at its deadline, again and again); prints p50 and p99 of the
   answers both ways.

Also timed: starting the pool's workers (``WorkerPool.warm``). Writes the numbers and their
provenance to ``--out`` (JSON).

    python -m benchmarks.worker_pool [--runs N] [--seconds S] [--out benchmarks/results/worker_pool.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.executor_overhead import PROGRAM, InstantDetector, InstantVQA
from benchmarks.provenance import provenance
from fmprog.backends import BackendRegistry, BackendSpec, Function
from fmprog.program import ExecutionLimits, Executor, compile_program
from fmprog.program.workers import WorkerPool

OUT = Path("benchmarks/results/worker_pool.json")
WORKERS = 2

NESTED_EQUAL = (
    "def execute_command(image):\n"
    "    x = [1]\n    y = [1]\n"
    "    for i in range(60):\n        x = [x, x]\n        y = [y, y]\n"
    "    return x == y\n"
)


def _quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _line(name: str, samples: list[float]) -> str:
    p50, p99 = _quantiles(samples)
    return f"{name:<28} p50 {p50 * 1e3:7.3f} ms   p99 {p99 * 1e3:7.3f} ms   ({len(samples)} runs)"


def _summary(samples: list[float]) -> dict[str, float | int]:
    p50, p99 = _quantiles(samples)
    return {"p50_ms": round(p50 * 1e3, 3), "p99_ms": round(p99 * 1e3, 3), "runs": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=OUT, help="write the results as JSON here (default: %(default)s)")
    args = parser.parse_args()

    registry = BackendRegistry.from_specs(
        [
            BackendSpec(name="detect", function=Function.detect, cost=1),
            BackendSpec(name="vqa", function=Function.vqa, cost=1),
        ],
        {"detect": InstantDetector(), "vqa": InstantVQA()},
    )
    program = compile_program(PROGRAM)
    decision = {site.id: site.function.value for site in program.call_sites}
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    limits = ExecutionLimits(timeout_s=2.0)
    executor = Executor(registry, limits)

    with WorkerPool(registry, limits, workers=WORKERS, kill_margin_s=0.5) as pool:
        started = time.perf_counter()
        pool.warm()
        warm_s = time.perf_counter() - started
        print(f"{WORKERS} workers started in {warm_s:.2f} s ({warm_s / WORKERS:.2f} s each)")
        for _ in range(50):
            pool.run(program, frame, decision)
            executor.run(program, frame, decision)
        in_process, pooled = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            executor.run(program, frame, decision)
            in_process.append(time.perf_counter() - started)
            started = time.perf_counter()
            pool.run(program, frame, decision)
            pooled.append(time.perf_counter() - started)
        print("Added cost per run (4 call sites, instant backends, 640x480 frame)")
        print(_line("in process", in_process))
        print(_line("worker pool", pooled))
        added = statistics.median(pooled) - statistics.median(in_process)
        print(f"{'added (p50 difference)':<28} {added * 1e3:7.3f} ms")

        def answer_for(seconds: float) -> list[float]:
            samples, end = [], time.perf_counter() + seconds
            while time.perf_counter() < end:
                started = time.perf_counter()
                pool.run(program, frame, decision)
                samples.append(time.perf_counter() - started)
            return samples

        idle = answer_for(args.seconds)
        hostile = compile_program(NESTED_EQUAL)
        stop = threading.Event()
        stopped: list[str] = []

        def attack() -> None:
            while not stop.is_set():
                trace = pool.run(hostile, frame, {})
                stopped.append(trace.error.kind if trace.error else "answered")

        attacker = threading.Thread(target=attack)
        attacker.start()
        time.sleep(0.2)
        attacked = answer_for(args.seconds)
        stop.set()
        attacker.join()
        print(f"\nAnother tenant's answers, alone and while one compares nested lists ({limits.timeout_s:g} s limit)")
        print(_line("alone", idle))
        print(_line("under attack", attacked))
        kinds = ", ".join(sorted(set(stopped)))
        print(f"{'attack runs stopped':<28} {len(stopped)} ({kinds}); workers killed: {pool.kills}")
        ratio = _quantiles(attacked)[1] / _quantiles(idle)[1]
        print(f"{'p99 under attack / alone':<28} {ratio:.2f}")
        kills = pool.kills
    report = {
        "provenance": provenance(),
        "frame": "640x480",
        "workers": WORKERS,
        "timeout_s": limits.timeout_s,
        "worker_start_s": round(warm_s / WORKERS, 3),
        "in_process": _summary(in_process),
        "worker_pool": _summary(pooled),
        "added_p50_ms": round(added * 1e3, 3),
        "seconds_per_phase": args.seconds,
        "alone": _summary(idle),
        "under_attack": _summary(attacked),
        "attack_runs_stopped": len(stopped),
        "attack_stopped_as": sorted(set(stopped)),
        "workers_killed": kills,
        "p99_under_attack_over_alone": round(ratio, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
