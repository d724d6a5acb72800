"""The router over real HTTP, per backend transport (before and after), and on real images.

For each transport named (``--transports http handle``, the default: the Serve HTTP proxy, then
Ray Serve DeploymentHandles; ``StackSettings.backend_transport``), one after the other in the same
run, it starts ``fmprog up`` with the synthetic zoo's four vision backends
(``fmprog/configs/synthetic.yaml``: detect-small, detect-large, vqa-small, vqa-large) on free
ports, checks which transport the router really runs with (its
``FMPROG_ROUTER_BACKEND_TRANSPORT``; a mismatch fails that transport's run), registers the sample
program ("Is there a triangle left of a circle?", ``examples/programs/triangle_left_of_circle.py``)
with the ``fast`` policy, and sends generated 128x128 frames to ``POST /answer`` as base64 PNG in
JSON:

- **overhead**: at concurrency 1, the client's end-to-end time minus the backend time the trace
  reports (each backend call as the router timed it, transport included), i.e. what the router
  adds: request parsing, image decoding, the policy's decision over HTTP, the sandboxed program,
  the SQLite record and the response; **where the overhead goes**: means per answer over the same
  requests from the router's own metrics (``fmprog_answer_stage_seconds``: the program read, the
  frame decoded, the wait for the policy's decision after decoding, the program run, the SQLite
  record; the policy's round trip as the router sees it, which overlaps decoding; the backend
  seconds of the run): what is left of the client's time is HTTP and waiting for a core;
- **policy round trip**: ``POST /policies/{id}/decisions`` timed by a client, with the frame's raw
  bytes (what the router sends) and as base64 JSON;
- **throughput**: answers per second and latency p50/p99 with 1, 8, 16 and 32 concurrent clients
  (after one warm-up burst at 32, so that the router's program workers are started);
- **two calls**: a program that makes exactly two backend calls per frame (two ``find`` on the
  whole frame, ``TWO_CALLS``) under the ``static`` policy (cheapest: detect-small twice), at
  concurrency 1: p50/p99;
- **CPU per answer at concurrency 16**: every process's user+system time (``/proc``) before and
  after a run of ``--cpu-frames`` answers at concurrency 16, grouped (``benchmarks.process_cpu``):
  router, its program workers, policy, Serve proxy, replicas, Serve controller, the ``fmprog up``
  supervisor (Ray's driver for Serve), Ray's other processes, and this process (the load
  generator); ms per answer per group, and the share of everything but the replicas in the total.
  CPU of processes outside the stack over the same seconds is reported too: it says whether the
  machine was quiet;
- **labels**: the answers of that run labelled (``POST /feedback``, one label a request, "yes" or
  "no") by 16 threads: p50/p99 and labels per second; then the seconds until the router's outbox
  (``GET /readyz`` ``policy_outbox``) is empty after the last label was answered, and the labels
  the policy observed (``GET /policies/{id}`` on the policy service).

With two transports, a comparison table gives each headline number for both and their ratio
(handle / http), with the data plane's targets for handles beside them (two-call p50 at most
15 ms; everything but the replicas at most 25% of the CPU; real images served at least 0.8 of in
process): printed, never checked. A transport whose stack fails is recorded with its error and
the run goes on; the exit status is then 1 (after ``--out`` is written).

**Real images** (once, after the transports, ``--real-transport``: "handle" when its synthetic
run worked, else "http"): ``fmprog up`` with the default backend configuration
(``fmprog/configs/real.yaml``: YOLOv3-tiny at 320 and 608 px, EfficientNet-Lite0 and Lite2 VQA; its
detect and vqa backends only, as ``make demo``: the program calls nothing else), the video track's
"What color is the leftmost person wearing?" (one detection, one VQA question when it finds
someone) under the ``static`` policy (``--real-mode``, cheapest by default), ``--real-frames``
768x576 frames of OpenCV's ``vtest.avi`` spread over the video, each sent as its JPEG bytes
(``POST /answer?program_id=...``, ``content-type: image/jpeg``) by 16 clients: answers per second.
Then, with the stack stopped, the same backends built in this process (``load_backends``) run the
same program with ``fmprog.program.Executor`` on the same decoded frames under the decision the
router made for each frame, from 16 threads: answers per second, the served/in-process ratio, and
how many answers agree.

Everything shares this machine's cores (the client included), so throughput is bounded by the
backends and the numbers move with other load: check ``outside the stack`` in the CPU table.
In-process decision latency per algorithm is ``benchmarks/policy_decide.py``.

    .venv/bin/python -m benchmarks.router_http [--transports http handle] [--frames 100]
        [--cpu-frames 300] [--real-frames 150] [--no-real] [--out benchmarks/results/router_http.json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import process_cpu
from benchmarks.provenance import provenance
from fmprog.images import encode_png
from fmprog.scene import scene_stream
from launcher.process import StackProcess
from launcher.settings import StackSettings

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "fmprog" / "configs" / "synthetic.yaml"
VISION = ["detect-small", "detect-large", "vqa-small", "vqa-large"]
PROGRAM = ROOT / "examples" / "programs" / "triangle_left_of_circle.py"
TRANSPORTS = ("http", "handle")
CONCURRENCY = (1, 8, 16, 32)
CPU_CONCURRENCY = 16
LABEL_THREADS = 16

# Exactly two backend calls per frame, whatever the frame holds: two detections on the whole frame.
TWO_CALLS = """\
def execute_command(image):
    image_patch = ImagePatch(image)
    circles = image_patch.find("circle")
    triangles = image_patch.find("triangle")
    return bool_to_yesno(len(circles) > 0 and len(triangles) > 0)
"""

# What the data plane aims at with handles (printed beside the numbers; nothing here checks them).
TARGETS = {"two calls c1 p50 ms": "<= 15 ms", "not-replicas share": "<= 0.25"}
REAL_TARGET = ">= 0.8"

REAL_QUERY = "What color is the leftmost person wearing?"
REAL_VIDEO = "vtest.avi"
REAL_CLIENTS = 16


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    p50, p99 = np.percentile(np.asarray(values) * 1000, [50, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(1000 * float(np.mean(values)), 3),
    }


# -- the router's own metrics ----------------------------------------------------------------------


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
    backend_s = after.get("fmprog_backend_seconds_total", 0.0) - before.get("fmprog_backend_seconds_total", 0.0)
    parts: dict[str, float | None] = {
        "in_service": mean("fmprog_answer_latency_seconds_sum", "fmprog_answer_latency_seconds_count"),
        "policy_round_trip": mean(
            "fmprog_policy_decision_latency_seconds_sum", "fmprog_policy_decision_latency_seconds_count"
        ),
        "backends": 1000 * backend_s / answers if answers else None,
    }
    for stage in ("program", "decode", "policy_wait", "run", "record"):
        parts[stage] = mean(f"fmprog_answer_stage_seconds_sum:{stage}", f"fmprog_answer_stage_seconds_count:{stage}")
    if parts["run"] is not None and parts["backends"] is not None:
        parts["sandbox"] = parts["run"] - parts["backends"]
    if parts["in_service"] is not None:
        parts["http_and_rest"] = total_mean_ms - parts["in_service"]
    return {name: round(value, 3) for name, value in parts.items() if value is not None}


# -- load ------------------------------------------------------------------------------------------


def run_concurrently(
    items: Sequence[Any], threads: int, work: Callable[[Any], Any]
) -> tuple[list[tuple[int, float, Any]], float]:
    """Every item given to ``work`` once by ``threads`` threads sharing them: ``(index, seconds,
    result)`` per item, in the order they finished, and the seconds it all took."""
    lock, queue = threading.Lock(), iter(enumerate(items))
    done: list[tuple[int, float, Any]] = []

    def loop() -> None:
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            started = time.perf_counter()
            result = work(item[1])
            seconds = time.perf_counter() - started
            with lock:
                done.append((item[0], seconds, result))

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return done, time.perf_counter() - started


def post_concurrently(
    items: Sequence[Any], clients: int, send: Callable[[httpx.Client, Any], httpx.Response]
) -> tuple[list[tuple[int, float, httpx.Response]], float]:
    """Every item sent once by ``clients`` threads sharing them (each thread its own connection):
    ``(index, seconds, response)`` per item, in the order they finished, and the seconds it all took."""
    local, opened = threading.local(), []

    def post(item: Any) -> httpx.Response:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=120)
            opened.append(local.client)
        return send(local.client, item)

    try:
        return run_concurrently(items, clients, post)
    finally:
        for client in opened:
            client.close()


def stream_answers(
    routers: list[str], program_id: str, images: list[str], clients: int
) -> tuple[list[float], list[int], list[bool], float]:
    """``images`` sent to ``POST /answer`` by ``clients`` threads sharing them, image ``i`` to
    router ``i % len(routers)``: each answer's latency, the status of each failure, each answer's
    ``fallback`` and the seconds it all took."""
    items = [(routers[i % len(routers)], image) for i, image in enumerate(images)]

    def send(client: httpx.Client, item: tuple[str, str]) -> httpx.Response:
        return client.post(f"{item[0]}/answer", json={"program_id": program_id, "image": item[1]})

    done, elapsed = post_concurrently(items, clients, send)
    responses = [response for _, _, response in done]
    failures = [r.status_code for r in responses if r.status_code != 200]
    fallbacks = [r.json()["fallback"] for r in responses if r.status_code == 200]
    return [seconds for _, seconds, _ in done], failures, fallbacks, elapsed


def answer_json(router: str, program_id: str) -> Callable[[httpx.Client, str], httpx.Response]:
    return lambda client, image: client.post(f"{router}/answer", json={"program_id": program_id, "image": image})


def answer_bytes(router: str, program_id: str, content_type: str) -> Callable[[httpx.Client, bytes], httpx.Response]:
    def send(client: httpx.Client, body: bytes) -> httpx.Response:
        headers = {"content-type": content_type}
        return client.post(f"{router}/answer", params={"program_id": program_id}, content=body, headers=headers)

    return send


def summarise(done: list[tuple[int, float, httpx.Response]], elapsed: float, concurrency: int) -> dict[str, Any]:
    ok = [r for _, _, r in done if r.status_code == 200]
    return {
        "concurrency": concurrency,
        "answers": len(ok),
        "failures": len(done) - len(ok),
        "fallbacks": sum(bool(r.json().get("fallback")) for r in ok),
        "answers_per_s": round(len(ok) / elapsed, 2),
        "calls_per_answer": round(sum(len(r.json()["trace"]) for r in ok) / len(ok), 3) if ok else None,
        **percentiles([s for _, s, _ in done]),
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


def measure_throughput(router: str, program_id: str, images: list[str], concurrency: int) -> dict[str, float]:
    """Answers per second with ``concurrency`` clients sharing ``images`` between them."""
    done, elapsed = post_concurrently(images, concurrency, answer_json(router, program_id))
    return summarise(done, elapsed, concurrency)


# -- the stack -------------------------------------------------------------------------------------


def register(client: httpx.Client, router: str, source: str, **fields: Any) -> dict[str, Any]:
    response = client.post(f"{router}/programs", json={"source": source, "kind": "binary", **fields})
    if response.status_code >= 400:
        raise RuntimeError(f"POST /programs: HTTP {response.status_code}: {response.text}")
    return response.json()


def stack_processes(stack: StackProcess) -> dict[str, int]:
    """The router's and the policy's pids (descendants of ``fmprog up`` running those apps)."""
    processes = process_cpu.sample().processes
    found: dict[str, int] = {}
    for pid in processes:
        group = process_cpu.classify(pid, processes, stack.process.pid)
        if group in ("router", "policy"):
            found[group] = pid
    return found


def transport_in_use(router_pid: int | None) -> str:
    """The transport the router process was started with: its FMPROG_ROUTER_BACKEND_TRANSPORT
    ("http", the router's default, when not set); "unknown" when its environment cannot be read."""
    if router_pid is None:
        return "unknown"
    try:
        environ = Path(f"/proc/{router_pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "unknown"
    for entry in environ:
        if entry.startswith(b"FMPROG_ROUTER_BACKEND_TRANSPORT="):
            return entry.split(b"=", 1)[1].decode().strip('"')
    return "http"


@contextlib.contextmanager
def running_stack(settings: StackSettings) -> Iterator[tuple[StackProcess, float]]:
    started = time.perf_counter()
    with StackProcess(settings) as stack:
        yield stack, time.perf_counter() - started
        if stack.stop() != 0:
            raise RuntimeError(f"fmprog up did not stop cleanly:\n{stack.output(20)}")


def outbox_pending(client: httpx.Client, router: str) -> int:
    response = client.get(f"{router}/readyz")
    response.raise_for_status()
    return int(response.json()["policy_outbox"])


def measure_feedback(
    client: httpx.Client, router: str, policy: str, policy_key: str, program_id: str, decision_ids: list[str]
) -> dict[str, Any]:
    """One label per decision (one per request) from LABEL_THREADS threads; then the wait for the
    router's outbox to empty and what the policy says it observed."""
    observed_before = policy_observed(client, policy, policy_key, program_id)
    labels = [{"decision_id": d, "label": "yes" if i % 3 == 0 else "no"} for i, d in enumerate(decision_ids)]
    done, elapsed = post_concurrently(labels, LABEL_THREADS, lambda c, body: c.post(f"{router}/feedback", json=body))
    answered = time.perf_counter()
    statuses: dict[str, int] = {}
    for _, _, response in done:
        key = str(response.status_code) if response.status_code != 200 else "accepted"
        if response.status_code == 200 and response.json().get("repeat"):
            key = "repeat"
        statuses[key] = statuses.get(key, 0) + 1
    pending, most, drained_s = outbox_pending(client, router), 0, None
    deadline = answered + 120
    while True:
        most = max(most, pending)
        if pending == 0:
            drained_s = time.perf_counter() - answered
            break
        if time.perf_counter() > deadline:
            break
        time.sleep(0.02)
        pending = outbox_pending(client, router)
    observed = policy_observed(client, policy, policy_key, program_id)
    return {
        "labels": len(labels),
        "threads": LABEL_THREADS,
        "outcomes": statuses,
        "labels_per_s": round(len(done) / elapsed, 2),
        **percentiles([s for _, s, _ in done]),
        "outbox_pending_after_last_label": most,
        "outbox_drained_s": None if drained_s is None else round(drained_s, 3),
        "policy_observed": None if observed is None else observed - (observed_before or 0),
    }


def policy_observed(client: httpx.Client, policy: str, key: str, program_id: str) -> int | None:
    response = client.get(f"{policy}/policies/{program_id}", headers={"Authorization": f"Bearer {key}"})
    return response.json().get("observed") if response.status_code == 200 else None


def cpu_table(cpu: dict[str, Any], answers: int) -> dict[str, Any]:
    """CPU ms per answer per group, the stack's total and the share of all but the replicas."""
    per_answer = {g: round(1000 * s / answers, 3) for g, s in cpu["seconds"].items()}
    total = 1000 * cpu["stack_s"] / answers
    replicas = per_answer[process_cpu.REPLICAS]
    return {
        "answers": answers,
        "ms_per_answer": per_answer,
        "total_ms_per_answer": round(total, 3),
        "replicas_ms_per_answer": replicas,
        "not_replicas_ms_per_answer": round(total - replicas, 3),
        "not_replicas_share": round((total - replicas) / total, 4) if total else None,
        "machine_busy_ms_per_answer": round(1000 * cpu["machine_busy_s"] / answers, 3),
        "outside_share_of_machine": (
            round(cpu["seconds"][process_cpu.OUTSIDE] / cpu["machine_busy_s"], 4) if cpu["machine_busy_s"] else None
        ),
        "processes": cpu["processes"],
    }


def run_transport(transport: str, images: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One full stack with ``transport``: every synthetic measurement."""
    with tempfile.TemporaryDirectory(prefix="fmprog-bench-") as state:
        settings = StackSettings.on_free_ports(
            config=SYNTHETIC, backends=VISION, state_dir=Path(state), backend_transport=transport
        )
        router, policy = settings.router_url, settings.policy_url
        key = settings.policy_api_key.get_secret_value()
        with running_stack(settings) as (stack, startup_s):
            pids = stack_processes(stack)
            in_use = transport_in_use(pids.get("router"))
            print(f"[{transport}] cluster ready in {startup_s:.0f} s; the router runs with {in_use!r}", flush=True)
            if in_use not in (transport, "unknown"):
                raise RuntimeError(f"asked for backend_transport {transport!r}, the router runs with {in_use!r}")
            if args.show_processes:
                for pid, group, command in process_cpu.describe(stack.process.pid):
                    print(f"  {pid:>7} {group:<18} {command}")
            with httpx.Client(timeout=120) as client:
                program_id = register(client, router, PROGRAM.read_text(), **{"lambda": 1.0, "algorithm": "fast"})["id"]
                static = {"lambda": 1.0, "algorithm": "static", "hyperparameters": {"mode": "cheapest"}}
                two_calls_id = register(client, router, TWO_CALLS, **static)["id"]
                measure_overhead(client, router, program_id, images[:20])  # warm up every backend and the pools
                before = router_sums(client, router)
                overhead = measure_overhead(client, router, program_id, images)
                parts = breakdown(before, router_sums(client, router), overhead["total"]["mean_ms"])
                policy_round_trip = measure_policy(client, policy, key, program_id, images, raw=True)
                policy_json = measure_policy(client, policy, key, program_id, images, raw=False)
                # The router starts its program workers on demand (about 0.3 s each): one burst at
                # the highest concurrency first, so that the measurements see the pool warm.
                measure_throughput(router, program_id, images[:64], max(CONCURRENCY))
                throughput = [measure_throughput(router, program_id, images, n) for n in CONCURRENCY]
                print(f"[{transport}] throughput done", flush=True)

                measure_throughput(router, two_calls_id, images[:10], 1)
                two_calls = measure_throughput(router, two_calls_id, images, 1)

                cpu_images = [images[i % len(images)] for i in range(args.cpu_frames)]
                first = process_cpu.sample()
                done, elapsed = post_concurrently(cpu_images, CPU_CONCURRENCY, answer_json(router, program_id))
                second = process_cpu.sample()
                cpu_run = summarise(done, elapsed, CPU_CONCURRENCY)
                cpu = cpu_table(process_cpu.cpu_by_group(first, second, stack.process.pid), cpu_run["answers"])
                cpu["run"] = cpu_run
                print(f"[{transport}] CPU run done", flush=True)

                decisions = [r.json()["decision_id"] for _, _, r in done if r.status_code == 200]
                feedback = measure_feedback(client, router, policy, key, program_id, decisions)
                print(f"[{transport}] labels done", flush=True)
    return {
        "transport": transport,
        "transport_in_use": in_use,
        "startup_s": round(startup_s, 1),
        "answer": overhead,
        "answer_breakdown_mean_ms": parts,
        "policy_round_trip": policy_round_trip,
        "policy_round_trip_json": policy_json,
        "throughput": throughput,
        "two_calls": two_calls,
        "cpu_c16": cpu,
        "feedback_c16": feedback,
    }


# -- real images -----------------------------------------------------------------------------------


def real_program() -> str:
    from benchmarks.vqa.tracks import load_open

    for query in load_open(ROOT / "benchmarks" / "tracks" / "video", "video", shuffle=False).queries:
        if query.query == REAL_QUERY:
            return query.program
    raise RuntimeError(f"the video track has no query {REAL_QUERY!r}")


def real_frames(count: int) -> list[tuple[int, bytes, np.ndarray]]:
    """``count`` frames spread over vtest.avi: (index, JPEG bytes, the pixels decoded from them)."""
    from fmprog.images import decode_image, encode_jpeg
    from fmprog.vision.video import SAMPLE_VIDEOS, video_frames

    frames: list[tuple[int, bytes, np.ndarray]] = []
    stride = max(1, 795 // count)
    for index, pixels in enumerate(video_frames(SAMPLE_VIDEOS / REAL_VIDEO)):
        if len(frames) == count:
            break
        if index % stride == 0:
            jpeg = encode_jpeg(pixels)
            frames.append((index, jpeg, decode_image(jpeg)))
    return frames


def real_backends() -> list[Any]:
    """The default configuration's detect and vqa backends (what the video's programs call)."""
    from fmprog.backends import Function, load_catalog
    from fmprog.backends.config import DEFAULT_CONFIG

    catalog = load_catalog(DEFAULT_CONFIG)
    return [s for s in catalog.backends if s.function in (Function.detect, Function.vqa)]


def run_real(transport: str, args: argparse.Namespace) -> dict[str, Any]:
    """The real-image track: served through the stack, then the same work in this process."""
    from fmprog.backends.config import DEFAULT_CONFIG
    from fmprog.program import Executor, compile_program
    from launcher.program_run import load_backends

    source, frames, specs = real_program(), real_frames(args.real_frames), real_backends()
    backends = [spec.name for spec in specs]
    print(f"[real] {len(frames)} frames of {REAL_VIDEO} ({frames[0][2].shape[1]}x{frames[0][2].shape[0]})", flush=True)
    with tempfile.TemporaryDirectory(prefix="fmprog-bench-real-") as state:
        settings = StackSettings.on_free_ports(
            config=DEFAULT_CONFIG, backends=backends, state_dir=Path(state), backend_transport=transport
        )
        router = settings.router_url
        with running_stack(settings) as (stack, startup_s):
            in_use = transport_in_use(stack_processes(stack).get("router"))
            print(f"[real] cluster ready in {startup_s:.0f} s; the router runs with {in_use!r}", flush=True)
            with httpx.Client(timeout=120) as client:
                hyper = {"mode": args.real_mode}
                program = register(
                    client, router, source, **{"lambda": 0.001, "algorithm": "static"}, hyperparameters=hyper
                )
            send = answer_bytes(router, program["id"], "image/jpeg")
            post_concurrently([jpeg for _, jpeg, _ in frames[:REAL_CLIENTS]], REAL_CLIENTS, send)  # warm up
            done, elapsed = post_concurrently([jpeg for _, jpeg, _ in frames], REAL_CLIENTS, send)
    served = summarise(done, elapsed, REAL_CLIENTS)
    answers = {i: r.json() for i, _, r in done if r.status_code == 200}
    print(f"[real] served: {served['answers_per_s']:.2f} answers/s; building the backends in process", flush=True)

    registry = load_backends(specs)
    executor, compiled = Executor(registry), compile_program(source)
    work = [(i, frames[i][2], answers[i]["decision"]) for i in sorted(answers)]
    executor.run(compiled, work[0][1], work[0][2])  # first call of each engine outside the timing
    done_here, in_process_s = run_concurrently(work, REAL_CLIENTS, lambda item: executor.run(compiled, *item[1:]))
    results = {work[index][0]: (seconds, trace) for index, seconds, trace in done_here}
    in_process = {
        "threads": REAL_CLIENTS,
        "answers": len(results),
        "answers_per_s": round(len(results) / in_process_s, 2),
        "calls_per_answer": round(sum(len(t.invocations) for _, t in results.values()) / len(results), 3),
        **percentiles([s for s, _ in results.values()]),
    }
    agree = sum(json.dumps(answers[i]["answer"]) == json.dumps(t.answer) for i, (_, t) in results.items())
    return {
        "transport": transport,
        "transport_in_use": in_use,
        "startup_s": round(startup_s, 1),
        "config": DEFAULT_CONFIG,
        "backends": backends,
        "query": REAL_QUERY,
        "policy": f"static {args.real_mode}",
        "decisions": sorted({json.dumps(a["decision"], sort_keys=True) for a in answers.values()}),
        "video": REAL_VIDEO,
        "frames": len(frames),
        "frame_size": f"{frames[0][2].shape[1]}x{frames[0][2].shape[0]}",
        "jpeg_kb_mean": round(sum(len(j) for _, j, _ in frames) / len(frames) / 1024, 1),
        "served": served,
        "in_process": in_process,
        "served_over_in_process": round(served["answers_per_s"] / in_process["answers_per_s"], 3),
        "answers_agree": f"{agree}/{len(results)}",
    }


# -- the report ------------------------------------------------------------------------------------


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    """The numbers compared across transports."""
    by_c = {row["concurrency"]: row for row in result["throughput"]}
    cpu, labels = result["cpu_c16"], result["feedback_c16"]
    numbers: dict[str, float | None] = {}
    for c in CONCURRENCY:
        numbers[f"c{c} answers/s"] = by_c[c]["answers_per_s"]
        numbers[f"c{c} p50 ms"] = by_c[c]["p50_ms"]
        numbers[f"c{c} p99 ms"] = by_c[c]["p99_ms"]
    numbers["c1 router overhead p50 ms"] = result["answer"]["overhead"]["p50_ms"]
    numbers["two calls c1 p50 ms"] = result["two_calls"]["p50_ms"]
    numbers["two calls c1 p99 ms"] = result["two_calls"]["p99_ms"]
    numbers["CPU ms/answer (stack)"] = cpu["total_ms_per_answer"]
    numbers["CPU ms/answer replicas"] = cpu["replicas_ms_per_answer"]
    numbers["CPU ms/answer not replicas"] = cpu["not_replicas_ms_per_answer"]
    numbers["not-replicas share"] = cpu["not_replicas_share"]
    numbers["labels/s c16"] = labels["labels_per_s"]
    numbers["label p50 ms"] = labels["p50_ms"]
    numbers["label p99 ms"] = labels["p99_ms"]
    numbers["outbox drained s"] = labels["outbox_drained_s"]
    return numbers


def compare(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]] | None:
    if not all(t in results and "error" not in results[t] for t in TRANSPORTS):
        return None
    before, after = headline(results["http"]), headline(results["handle"])
    table = {}
    for name, old in before.items():
        new = after[name]
        ratio = round(new / old, 3) if old and new is not None else None
        table[name] = {"http": old, "handle": new, "handle_over_http": ratio}
    return table


def print_transport(result: dict[str, Any]) -> None:
    transport = result["transport"]
    if "error" in result:
        print(f"\n== transport {transport}: FAILED: {result['error']}")
        return
    print(f"\n== transport {transport} (router runs with {result['transport_in_use']!r}), "
          f"cluster ready in {result['startup_s']:.0f} s")  # fmt: skip
    overhead = result["answer"]
    print(f"{'per /answer, concurrency 1':<34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    rows = [
        ("end to end (client)", overhead["total"]),
        ("backend calls (trace)", overhead["backend"]),
        ("router overhead (difference)", overhead["overhead"]),
        ("policy decision over HTTP, raw", result["policy_round_trip"]),
        ("policy decision over HTTP, JSON", result["policy_round_trip_json"]),
        ("two-call program (static)", result["two_calls"]),
    ]
    for label, row in rows:
        if row is not None:
            print(f"{label:<34}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['mean_ms']:>9.2f}")
    print("where the time goes, mean ms per answer (router metrics over the same requests):")
    for name, value in result["answer_breakdown_mean_ms"].items():
        print(f"  {name:<32}{value:>9.2f}")
    print(f"{'concurrency':<14}{'answers/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'calls/ans':>10}{'failures':>10}")
    for row in [*result["throughput"], {**result["cpu_c16"]["run"], "concurrency": "16 (CPU run)"}]:
        print(
            f"{row['concurrency']!s:<14}{row['answers_per_s']:>10.1f}{row['p50_ms']:>9.1f}"
            f"{row['p99_ms']:>9.1f}{row['calls_per_answer'] or 0:>10.2f}{row['failures']:>10}"
        )
    cpu = result["cpu_c16"]
    print(f"CPU ms per answer at concurrency 16 ({cpu['answers']} answers):")
    for group, ms in cpu["ms_per_answer"].items():
        print(f"  {group:<20}{ms:>8.2f}   ({cpu['processes'][group]} processes)")
    busy = cpu["machine_busy_ms_per_answer"]
    outside = 100 * (cpu["outside_share_of_machine"] or 0)
    print(
        f"  {'stack total':<20}{cpu['total_ms_per_answer']:>8.2f}   (the machine was busy {busy:.2f}; "
        f"{outside:.1f}% of that outside the stack)"
    )
    print(f"  everything but the replicas: {cpu['not_replicas_ms_per_answer']:.2f} ms, "
          f"{100 * (cpu['not_replicas_share'] or 0):.1f}% of the stack's CPU")  # fmt: skip
    labels = result["feedback_c16"]
    drained = "never (120 s)" if labels["outbox_drained_s"] is None else f"{labels['outbox_drained_s']:.2f} s"
    print(
        f"/feedback x{labels['labels']} from {labels['threads']} threads: {labels['labels_per_s']:.1f} labels/s, "
        f"p50 {labels['p50_ms']:.1f} ms, p99 {labels['p99_ms']:.1f} ms; {labels['outcomes']}; outbox empty "
        f"{drained} after the last label (at most {labels['outbox_pending_after_last_label']} pending); "
        f"the policy observed {labels['policy_observed']}"
    )


def number(value: float | None) -> str:
    """A number with as many decimals as its size needs."""
    if value is None:
        return "n/a"
    size = abs(value)
    return (
        f"{value:.0f}"
        if size >= 100
        else f"{value:.1f}"
        if size >= 10
        else f"{value:.2f}"
        if size >= 1
        else f"{value:.3f}"
    )


def print_comparison(table: dict[str, dict[str, float | None]]) -> None:
    print(f"\n== before (http) and after (handle)\n{'':<30}{'http':>10}{'handle':>10}{'ratio':>8}  target (handle)")
    for name, row in table.items():
        ratio = "" if row["handle_over_http"] is None else f"{row['handle_over_http']:.2f}"
        target = TARGETS.get(name, "")
        print(f"{name:<30}{number(row['http']):>10}{number(row['handle']):>10}{ratio:>8}  {target}".rstrip())


def print_real(real: dict[str, Any]) -> None:
    if "error" in real:
        print(f"\n== real images: FAILED: {real['error']}")
        return
    served, local = real["served"], real["in_process"]
    print(f"\n== real images ({real['transport_in_use']} transport; {real['config']}, {', '.join(real['backends'])})")
    print(f"{real['frames']} frames of {real['video']} ({real['frame_size']}, JPEG {real['jpeg_kb_mean']:.0f} KB), "
          f"{real['query']!r} under {real['policy']}")  # fmt: skip
    print(f"{'':<28}{'answers/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'calls/ans':>10}")
    for label, row in (("served, 16 clients", served), ("in process, 16 threads", local)):
        print(f"{label:<28}{row['answers_per_s']:>10.2f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
              f"{row['calls_per_answer'] or 0:>10.2f}")  # fmt: skip
    print(
        f"served / in process: {real['served_over_in_process']:.2f} (target {REAL_TARGET}); "
        f"answers agree on {real['answers_agree']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    parser.add_argument("--frames", type=int, default=100, help="frames per measurement")
    parser.add_argument("--cpu-frames", type=int, default=300, help="answers of the concurrency-16 CPU run")
    parser.add_argument("--real-frames", type=int, default=150, help="frames of the real-image track")
    parser.add_argument("--real-mode", choices=["cheapest", "largest"], default="cheapest")
    parser.add_argument(
        "--real-transport", choices=[*TRANSPORTS, "auto"], default="auto", help="auto: handle if it worked, else http"
    )
    parser.add_argument("--no-real", action="store_true", help="skip the real-image track")
    parser.add_argument("--show-processes", action="store_true", help="list the stack's processes and their groups")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    started = time.perf_counter()
    scenes = scene_stream(seed=11, count=args.frames, mix={"easy": 0.3, "medium": 0.4, "hard": 0.3})
    images = [base64.b64encode(encode_png(scene.image)).decode("ascii") for scene in scenes]
    results: dict[str, dict[str, Any]] = {}
    for transport in args.transports:
        try:
            results[transport] = run_transport(transport, images, args)
        except Exception as exc:  # one transport failing still leaves the other's numbers
            results[transport] = {"transport": transport, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        print_transport(results[transport])
    comparison = compare(results)
    if comparison:
        print_comparison(comparison)

    real = None
    if not args.no_real:
        transport = args.real_transport
        if transport == "auto":
            transport = "handle" if "error" not in results.get("handle", {"error": ""}) else "http"
        try:
            real = run_real(transport, args)
        except Exception as exc:
            real = {"transport": transport, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        print_real(real)
    total_s = time.perf_counter() - started
    print(f"\nall done in {total_s:.0f} s")

    out = {
        "provenance": provenance(),
        "frames": args.frames,
        "cpu_frames": args.cpu_frames,
        "seconds": round(total_s, 1),
        "transports": results,
        "comparison": comparison,
        "real_images": real,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    failed = [name for name, result in {**results, "real images": real or {}}.items() if "error" in result]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (see above)")


if __name__ == "__main__":
    main()
