"""A bounded load run over loopback: ``/answer`` with feedback at a fixed concurrency, against
``fmprog up``.

Starts ``fmprog up`` (Ray Serve with the zoo's vision backends, the policy service, the router)
on free loopback ports, registers the sample program ("Is there a triangle left of a circle?")
with the ``fast`` policy, and has ``--concurrency`` clients (httpx, asynchronous, one event loop)
send ``--requests`` frames between them: each client posts a frame to ``/answer`` (base64 PNG,
cycling through ``--frames`` generated scenes) and then its label to ``/feedback``, and takes the
next frame. It reports

- **errors**: requests that got no reply or a status other than 200 (by route and status), and
  answers whose program stopped with an error (a 200 whose ``error`` is set);
- **latency** of ``/answer`` and of ``/feedback`` as the client saw it (p50, p99, mean, max);
- **answers/s** over the whole run (feedback included);
- **peak RSS** of the router's process and of the policy's (the kernel's high-water mark,
  ``VmHWM``), and the largest resident total of the router with its program workers, sampled
  every 0.2 s;
- whether the policy learned every label the router acknowledged for its decisions, once.

Everything shares this machine's cores, the load generator included, so answers/s is bounded by
the backends' CPU time. Nothing leaves the machine: every address is 127.0.0.1.

    .venv/bin/python -m benchmarks.load [--requests 10000] [--concurrency 32] [--out benchmarks/results/load.json]

Before the run, ``--warmup`` answers (64) at the same concurrency start the router's program
workers; they are neither counted nor labelled.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.provenance import provenance
from fmprog.images import encode_png
from fmprog.scene import scene_stream
from launcher.process import StackProcess
from launcher.settings import StackSettings

ROOT = Path(__file__).resolve().parents[1]
VISION = ["detect-small", "detect-large", "vqa-small", "vqa-large"]
SYNTHETIC = ROOT / "fmprog" / "configs" / "synthetic.yaml"  # the zoo the sample program is written for
PROGRAM = ROOT / "examples" / "programs" / "triangle_left_of_circle.py"
SAMPLE_EVERY_S = 0.2
KEEPALIVE_S = 1.0
_PROBLEM = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Error\b|Exception\b|HTTP/1\.1\" [13-5]\d\d")


def truth(scene: Any) -> str:
    """The program's right answer for a generated scene: some triangle left of some circle."""
    triangles = [o for o in scene.objects if o.shape == "triangle"]
    circles = [o for o in scene.objects if o.shape == "circle"]
    return "yes" if any(t.center[0] < c.center[0] for t in triangles for c in circles) else "no"


def latency(values: list[float]) -> dict[str, float]:
    """p50, p99, mean and max of ``values`` (seconds) in milliseconds."""
    if not values:
        return {}
    ms = np.asarray(values) * 1000
    p50, p99 = np.percentile(ms, [50, 99])
    return {
        "p50_ms": round(float(p50), 1),
        "p99_ms": round(float(p99), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "max_ms": round(float(ms.max()), 1),
    }


# -- memory -----------------------------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> int | None:
    """A ``/proc/<pid>/status`` field in kB (VmRSS, VmHWM), or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for listing in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                children = [int(child) for child in listing.read_text().split()]
                found += children
                todo += children
    return found


def service_pid(stack: StackProcess, app: str) -> int:
    """The pid of the uvicorn process serving ``app`` (``router.app``, ``policy.app``) under ``stack``."""
    assert stack.process is not None
    for pid in descendants(stack.process.pid):
        with contextlib.suppress(OSError):
            if f"{app}:create_app" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return pid
    raise RuntimeError(f"no process serves {app}")


def rss_kb(pid: int) -> int:
    """A process's resident memory in kB (0 once it is gone)."""
    return _status_kb(pid, "VmRSS") or 0


def command_line(pid: int) -> str:
    """A process's command line, its arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class RssSampler:
    """Samples the resident memory of a process and all its descendants every ``every_s`` while
    the block runs: the peak of their sum, of a single descendant, how many there were, and the
    command lines of the descendants seen."""

    pid: int
    every_s: float = SAMPLE_EVERY_S
    peak_total_kb: int = 0
    peak_process_kb: int = 0
    peak_descendants: int = 0
    samples: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        seen: set[int] = set()
        while not self._stop.wait(self.every_s):
            children = descendants(self.pid)
            for pid in set(children) - seen:
                self.kinds[command_line(pid)[:80]] += 1
            seen.update(children)
            sizes = [rss_kb(pid) for pid in [self.pid, *children]]
            self.peak_total_kb = max(self.peak_total_kb, sum(sizes))
            self.peak_process_kb = max([self.peak_process_kb, *sizes[1:]])
            self.peak_descendants = max(self.peak_descendants, len(children))
            self.samples += 1


# -- the load ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw."""

    answer_s: list[float] = field(default_factory=list)
    feedback_s: list[float] = field(default_factory=list)
    answers: int = 0  # /answer requests answered 200
    failures: Counter[str] = field(default_factory=Counter)  # "route status" or "route ExceptionName"
    failed_at_s: list[float] = field(default_factory=list)  # when each failure came, from the run's start
    started: float = field(default_factory=time.perf_counter)
    program_errors: Counter[str] = field(default_factory=Counter)  # error kinds of 200 answers
    fallback_answers: int = 0
    acknowledged: int = 0  # labels the router took as new
    for_the_policy: int = 0  # of those, labels of decisions the policy made (it must learn each)


async def _post(client: httpx.AsyncClient, tally: Tally, route: str, body: dict[str, Any]) -> dict[str, Any] | None:
    started = time.perf_counter()
    try:
        reply = await client.post(route, json=body)
    except httpx.HTTPError as exc:
        tally.failures[f"{route} {type(exc).__name__}"] += 1
        tally.failed_at_s.append(round(time.perf_counter() - tally.started, 1))
        return None
    (tally.answer_s if route == "/answer" else tally.feedback_s).append(time.perf_counter() - started)
    if reply.status_code != 200:
        tally.failures[f"{route} {reply.status_code}"] += 1
        tally.failed_at_s.append(round(time.perf_counter() - tally.started, 1))
        return None
    return reply.json()


async def load(
    router: str,
    program_id: str,
    frames: list[tuple[str, str]],
    requests: int,
    concurrency: int,
    *,
    feedback: bool = True,
) -> tuple[Tally, float]:
    """Send ``requests`` frames, each then labelled (with ``feedback``), from ``concurrency``
    clients; the tally and the seconds it took."""
    tally = Tally()
    sent = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests:
            image, right = frames[sent % len(frames)]
            sent += 1
            answer = await _post(client, tally, "/answer", {"program_id": program_id, "image": image})
            if answer is None:
                continue
            tally.answers += 1
            if answer["error"] is not None:
                tally.program_errors[answer["error"]["kind"]] += 1
            tally.fallback_answers += answer["fallback"]
            if not feedback:
                continue
            taken = await _post(client, tally, "/feedback", {"decision_id": answer["decision_id"], "label": right})
            if taken is not None and not taken["repeat"]:
                tally.acknowledged += 1
                tally.for_the_policy += not answer["fallback"]

    # An idle connection is dropped after KEEPALIVE_S, before uvicorn closes it (after 5 s): with
    # httpx's default (5 s, the same) a request sent on a connection the server is closing at
    # that moment fails with a ReadError, the client's race, not the router's failure.
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=KEEPALIVE_S
    )
    async with httpx.AsyncClient(base_url=router, timeout=120, limits=limits) as client:
        tally.started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return tally, time.perf_counter() - tally.started


def logged_problems(log_dir: Path, service: str) -> list[str]:
    """Lines of a service's log that say something went wrong: warnings, errors, tracebacks, and
    access lines of replies other than 2xx."""
    log = log_dir / f"{service}.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [f"{service}: {line[:300]}" for line in lines if _PROBLEM.search(line)]


def learned(settings: StackSettings, program_id: str, timeout_s: float = 120) -> int:
    """The labels the policy learned for the program, once the router's outbox is empty."""
    key = {"authorization": f"Bearer {settings.policy_api_key.get_secret_value()}"}
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{settings.router_url}/readyz").json()["policy_outbox"] and time.monotonic() < deadline:
        time.sleep(0.5)
    return httpx.get(f"{settings.policy_url}/policies/{program_id}", headers=key).json()["observed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000, help="frames answered, each then labelled")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending at once")
    parser.add_argument("--warmup", type=int, default=64, help="answers before the run, not counted nor labelled")
    parser.add_argument("--frames", type=int, default=200, help="distinct generated frames, cycled through")
    parser.add_argument("--config", type=Path, default=SYNTHETIC, help="backend configuration (default: %(default)s)")
    parser.add_argument("--backends", default=",".join(VISION), help="backends fmprog up serves (comma-separated)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    scenes = scene_stream(seed=21, count=args.frames, mix={"easy": 0.3, "medium": 0.4, "hard": 0.3})
    frames = [(base64.b64encode(encode_png(scene.image)).decode("ascii"), truth(scene)) for scene in scenes]
    with tempfile.TemporaryDirectory(prefix="fmprog-load-") as state:
        settings = StackSettings.on_free_ports(
            config=args.config, backends=args.backends.split(","), state_dir=Path(state)
        )
        started = time.perf_counter()
        with StackProcess(settings) as stack:
            startup_s = time.perf_counter() - started
            router_pid, policy_pid = service_pid(stack, "router.app"), service_pid(stack, "policy.app")
            body = {"source": PROGRAM.read_text(), "kind": "binary", "lambda": 1.0, "algorithm": "fast"}
            program = httpx.post(f"{settings.router_url}/programs", json=body, timeout=60)
            program.raise_for_status()
            program_id = program.json()["id"]
            load_before = os.getloadavg()[0]
            with RssSampler(router_pid) as memory:
                # The router starts its program workers on demand (about 0.3 s of CPU each): a
                # burst at full concurrency first, not counted, so that the run sees the pool warm.
                asyncio.run(
                    load(settings.router_url, program_id, frames, args.warmup, args.concurrency, feedback=False)
                )
                tally, elapsed = asyncio.run(
                    load(settings.router_url, program_id, frames, args.requests, args.concurrency)
                )
            load_after = os.getloadavg()[0]
            policy_learned = learned(settings, program_id)
            router_hwm, policy_hwm = _status_kb(router_pid, "VmHWM"), _status_kb(policy_pid, "VmHWM")
            restarts = [line for line in stack.output().splitlines() if "restarted" in line]
            problems = [line for name in ("router", "policy") for line in logged_problems(settings.log_dir, name)]
            if stack.stop() != 0:
                raise RuntimeError(f"fmprog up did not stop cleanly:\n{stack.output(20)}")

    results = {
        "provenance": provenance(),
        "load_average_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},  # others' work too
        "backends": args.backends.split(","),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "frames": args.frames,
        "warmup_answers": args.warmup,
        "startup_s": round(startup_s, 1),
        "duration_s": round(elapsed, 1),
        "answers": tally.answers,
        "answers_per_s": round(tally.answers / elapsed, 2),
        "errors": sum(tally.failures.values()),
        "errors_by_route": dict(tally.failures),
        "errors_at_s": tally.failed_at_s[:20],
        "service_log_problems": problems[:20],
        "program_errors": dict(tally.program_errors),
        "fallback_answers": tally.fallback_answers,
        "answer_latency": latency(tally.answer_s),
        "feedback_latency": latency(tally.feedback_s),
        "labels_acknowledged": tally.acknowledged,
        "labels_for_the_policy": tally.for_the_policy,
        "labels_learned_by_the_policy": policy_learned,
        "peak_rss_mb": {
            "router": round((router_hwm or 0) / 1024, 1),
            "router_with_program_workers": round(memory.peak_total_kb / 1024, 1),
            "program_workers": memory.peak_descendants,
            "policy": round((policy_hwm or 0) / 1024, 1),
        },
        "service_restarts": len(restarts),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if policy_learned != tally.for_the_policy:
        raise SystemExit(f"the policy learned {policy_learned} labels, the router acknowledged {tally.for_the_policy}")


if __name__ == "__main__":
    main()
