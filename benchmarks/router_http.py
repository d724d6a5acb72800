"""The router over real HTTP: its overhead per /answer and its throughput at concurrency 1, 8, 32.

Starts ``fmprog up`` (Ray Serve with the zoo's vision backends, the policy service, the router)
on free ports, registers the sample program ("Is there a triangle left of a circle?") with the
``fast`` policy, and streams generated frames to ``POST /answer`` as base64 PNG:

- **overhead**: at concurrency 1, the client's end-to-end time minus the backend time the trace
  reports (each backend call as the router timed it, Serve proxy and network included), i.e. what
  the router adds: request parsing, image decoding, the policy's decision over HTTP, the sandboxed
  program, the SQLite record and the response;
- **policy round trip**: ``POST /policies/{id}/decisions`` timed by a client, for comparison;
- **throughput**: answers per second with 1, 8 and 32 concurrent clients.

Everything shares this machine's cores, so throughput is bounded by the backends; the overhead
is the router's own number. In-process decision latency per algorithm is
``benchmarks/policy_decide.py``.

    .venv/bin/python -m benchmarks.router_http [--frames 100] [--out benchmarks/results/router_http.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from fmprog.images import encode_png
from fmprog.scene import scene_stream
from launcher.process import StackProcess
from launcher.settings import StackSettings

ROOT = Path(__file__).resolve().parents[1]
VISION = ["detect-small", "detect-large", "vqa-small", "vqa-large"]
PROGRAM = ROOT / "examples" / "programs" / "triangle_left_of_circle.py"


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(np.asarray(values) * 1000, [50, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(1000 * float(np.mean(values)), 3),
    }


def measure_overhead(client: httpx.Client, router: str, program_id: str, images: list[str]) -> dict[str, dict]:
    totals, backend, overhead = [], [], []
    for image in images:
        started = time.perf_counter()
        response = client.post(f"{router}/answer", json={"program_id": program_id, "image": image})
        total = time.perf_counter() - started
        response.raise_for_status()
        spent = sum(call["latency_s"] for call in response.json()["trace"])
        totals.append(total)
        backend.append(spent)
        overhead.append(total - spent)
    return {"total": percentiles(totals), "backend": percentiles(backend), "overhead": percentiles(overhead)}


def measure_policy(client: httpx.Client, policy: str, program_id: str, images: list[str]) -> dict[str, float]:
    times = []
    for image in images:
        started = time.perf_counter()
        response = client.post(
            f"{policy}/policies/{program_id}/decisions", json={"decision_id": uuid.uuid4().hex, "image": image}
        )
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    return percentiles(times)


def measure_throughput(router: str, program_id: str, images: list[str], concurrency: int) -> dict[str, float]:
    """Answers per second with ``concurrency`` clients sharing ``images`` between them."""
    lock, frames = threading.Lock(), iter(images)
    latencies: list[float] = []
    failures: list[int] = []

    def client_loop() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    image = next(frames, None)
                if image is None:
                    return
                started = time.perf_counter()
                response = client.post(f"{router}/answer", json={"program_id": program_id, "image": image})
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if response.status_code != 200:
                        failures.append(response.status_code)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "answers": len(latencies),
        "failures": len(failures),
        "answers_per_s": round(len(latencies) / elapsed, 2),
        **percentiles(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100, help="frames per measurement")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    scenes = scene_stream(seed=11, count=args.frames, mix={"easy": 0.3, "medium": 0.4, "hard": 0.3})
    images = [base64.b64encode(encode_png(scene.image)).decode("ascii") for scene in scenes]
    with tempfile.TemporaryDirectory(prefix="fmprog-bench-") as state:
        settings = StackSettings.on_free_ports(backends=VISION, state_dir=Path(state))
        router, policy = settings.router_url, settings.policy_url
        started = time.perf_counter()
        with StackProcess(settings) as stack:
            startup_s = time.perf_counter() - started
            with httpx.Client(timeout=120) as client:
                body = {"source": PROGRAM.read_text(), "kind": "binary", "lambda": 1.0, "algorithm": "fast"}
                program = client.post(f"{router}/programs", json=body)
                program.raise_for_status()
                program_id = program.json()["id"]
                measure_overhead(client, router, program_id, images[:20])  # warm up every backend and the pools
                overhead = measure_overhead(client, router, program_id, images)
                policy_round_trip = measure_policy(client, policy, program_id, images)
            throughput = [measure_throughput(router, program_id, images, n) for n in (1, 8, 32)]
            if stack.stop() != 0:
                raise RuntimeError(f"fmprog up did not stop cleanly:\n{stack.output(20)}")

    results = {
        "machine": f"{os.cpu_count()} CPUs",
        "frames": args.frames,
        "startup_s": round(startup_s, 1),
        "answer": overhead,
        "policy_round_trip": policy_round_trip,
        "throughput": throughput,
    }
    print(f"cluster ready in {startup_s:.0f} s ({os.cpu_count()} CPUs); {args.frames} frames per measurement\n")
    print(f"{'per /answer, concurrency 1':<34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    rows = [
        ("end to end (client)", overhead["total"]),
        ("backend calls (trace)", overhead["backend"]),
        ("router overhead (difference)", overhead["overhead"]),
        ("policy decision over HTTP", policy_round_trip),
    ]
    for label, row in rows:
        print(f"{label:<34}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['mean_ms']:>9.2f}")
    print(f"\n{'concurrency':<14}{'answers/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'failures':>10}")
    for row in throughput:
        print(
            f"{row['concurrency']:<14}{row['answers_per_s']:>10.1f}{row['p50_ms']:>9.1f}"
            f"{row['p99_ms']:>9.1f}{row['failures']:>10}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
