"""The router over real HTTP: its overhead per /answer and its throughput at concurrency 1, 8, 32.

Starts ``fmprog up`` (Ray Serve with the zoo's vision backends, the policy service, the router)
on free ports, registers the sample program ("Is there a triangle left of a circle?") with the
``fast`` policy, and streams generated frames to ``POST /answer`` as base64 PNG:

- **overhead**: at concurrency 1, the client's end-to-end time minus the backend time the trace
  reports (each backend call as the router timed it, Serve proxy and network included), i.e. what
  the router adds: request parsing, image decoding, the policy's decision over HTTP, the sandboxed
  program, the SQLite record and the response;
- **where the overhead goes**: means per answer over the same requests, from the router's own
  metrics (``fmprog_answer_stage_seconds``: the program read, the frame decoded, the wait for the
  policy's decision after decoding, the program run, the SQLite record; the policy's round trip
  as the router sees it, which overlaps decoding; the backend seconds of the run): what is left of
  the client's time is HTTP (client, parsing, the response) and waiting for a core;
- **policy round trip**: ``POST /policies/{id}/decisions`` timed by a client, for comparison, with
  the frame's raw bytes (what the router sends) and as base64 JSON;
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
from prometheus_client.parser import text_string_to_metric_families

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


def router_sums(client: httpx.Client, router: str) -> dict[str, float]:
    """Sums and counts of the router's timing metrics (over every program), by name."""
    wanted = {
        "fmprog_answer_stage_seconds_sum": "stage",
        "fmprog_answer_stage_seconds_count": "stage",
        "fmprog_answer_latency_seconds_sum": None,
        "fmprog_answer_latency_seconds_count": None,
        "fmprog_policy_decision_latency_seconds_sum": None,
        "fmprog_policy_decision_latency_seconds_count": None,
        "fmprog_backend_seconds_total": None,
    }
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get(f"{router}/metrics").text):
        for sample in family.samples:
            if sample.name in wanted:
                label = wanted[sample.name]
                key = f"{sample.name}:{sample.labels[label]}" if label else sample.name
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def breakdown(before: dict[str, float], after: dict[str, float], total_mean_ms: float) -> dict[str, float]:
    """Mean milliseconds per answer of each part of the router's time, between two metric scrapes."""

    def mean(name: str, count: str) -> float | None:
        n = after.get(count, 0.0) - before.get(count, 0.0)
        return None if n <= 0 else 1000 * (after.get(name, 0.0) - before.get(name, 0.0)) / n

    answers = after.get("fmprog_answer_latency_seconds_count", 0.0) - before.get(
        "fmprog_answer_latency_seconds_count", 0
    )
    parts: dict[str, float | None] = {
        "in_service": mean("fmprog_answer_latency_seconds_sum", "fmprog_answer_latency_seconds_count"),
        "policy_round_trip": mean(
            "fmprog_policy_decision_latency_seconds_sum", "fmprog_policy_decision_latency_seconds_count"
        ),
        "backends": (
            1000 * (after["fmprog_backend_seconds_total"] - before.get("fmprog_backend_seconds_total", 0.0)) / answers
            if answers
            else None
        ),
    }
    for stage in ("program", "decode", "policy_wait", "run", "record"):
        parts[stage] = mean(f"fmprog_answer_stage_seconds_sum:{stage}", f"fmprog_answer_stage_seconds_count:{stage}")
    if parts["run"] is not None and parts["backends"] is not None:
        parts["sandbox"] = parts["run"] - parts["backends"]
    if parts["in_service"] is not None:
        parts["http_and_rest"] = total_mean_ms - parts["in_service"]
    return {name: round(value, 3) for name, value in parts.items() if value is not None}


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


def measure_policy(
    client: httpx.Client, policy: str, key: str, program_id: str, images: list[str], *, raw: bool
) -> dict[str, float] | None:
    """The policy's decide round trip (with its bearer ``key``, as the router sends it), with the
    frame's raw bytes (``raw``) or as base64 JSON; None when the policy does not take raw bytes."""
    url, times = f"{policy}/policies/{program_id}/decisions", []
    auth = {"Authorization": f"Bearer {key}"}
    for image in images:
        started = time.perf_counter()
        if raw:
            response = client.post(
                url,
                params={"decision_id": uuid.uuid4().hex},
                content=base64.b64decode(image),
                headers={"content-type": "application/octet-stream", **auth},
            )
        else:
            response = client.post(url, json={"decision_id": uuid.uuid4().hex, "image": image}, headers=auth)
        times.append(time.perf_counter() - started)
        if raw and response.status_code == 422:
            return None
        response.raise_for_status()
    return percentiles(times)


def stream_answers(
    routers: list[str], program_id: str, images: list[str], clients: int
) -> tuple[list[float], list[int], list[bool], float]:
    """``images`` sent to ``POST /answer`` by ``clients`` threads sharing them, client ``c`` to
    router ``c % len(routers)``: each answer's latency, the status of each failure, each answer's
    ``fallback`` and the seconds it all took."""
    lock, frames = threading.Lock(), iter(images)
    latencies: list[float] = []
    failures: list[int] = []
    fallbacks: list[bool] = []

    def client_loop(router: str) -> None:
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
                    else:
                        fallbacks.append(response.json()["fallback"])

    threads = [threading.Thread(target=client_loop, args=(routers[c % len(routers)],)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures, fallbacks, time.perf_counter() - started


def measure_throughput(router: str, program_id: str, images: list[str], concurrency: int) -> dict[str, float]:
    """Answers per second with ``concurrency`` clients sharing ``images`` between them."""
    latencies, failures, _, elapsed = stream_answers([router], program_id, images, concurrency)
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
                before = router_sums(client, router)
                overhead = measure_overhead(client, router, program_id, images)
                parts = breakdown(before, router_sums(client, router), overhead["total"]["mean_ms"])
                key = settings.policy_api_key.get_secret_value()
                policy_round_trip = measure_policy(client, policy, key, program_id, images, raw=True)
                policy_json = measure_policy(client, policy, key, program_id, images, raw=False)
            # The router starts its program workers on demand (about 0.3 s each): one burst at the
            # highest concurrency first, so that the measurements see the pool warm.
            measure_throughput(router, program_id, images[:64], 32)
            throughput = [measure_throughput(router, program_id, images, n) for n in (1, 8, 32)]
            if stack.stop() != 0:
                raise RuntimeError(f"fmprog up did not stop cleanly:\n{stack.output(20)}")

    results = {
        "machine": f"{os.cpu_count()} CPUs",
        "frames": args.frames,
        "startup_s": round(startup_s, 1),
        "answer": overhead,
        "answer_breakdown_mean_ms": parts,
        "policy_round_trip": policy_round_trip,
        "policy_round_trip_json": policy_json,
        "throughput": throughput,
    }
    print(f"cluster ready in {startup_s:.0f} s ({os.cpu_count()} CPUs); {args.frames} frames per measurement\n")
    print(f"{'per /answer, concurrency 1':<34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    rows = [
        ("end to end (client)", overhead["total"]),
        ("backend calls (trace)", overhead["backend"]),
        ("router overhead (difference)", overhead["overhead"]),
        ("policy decision over HTTP, raw", policy_round_trip),
        ("policy decision over HTTP, JSON", policy_json),
    ]
    for label, row in rows:
        if row is not None:
            print(f"{label:<34}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['mean_ms']:>9.2f}")
    print("\nwhere the time goes, mean ms per answer (router metrics over the same requests):")
    for name, value in parts.items():
        print(f"  {name:<32}{value:>9.2f}")
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
