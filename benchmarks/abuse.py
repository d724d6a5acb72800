"""A bounded reliability probe over loopback: how one caller of ``fmprog up`` can hurt another.

Starts ``fmprog up`` (Ray Serve with the synthetic zoo's vision backends, the policy service, the
router; the stack ``benchmarks.load`` measures) on free loopback ports with a state directory of
its own, makes tenants' keys with ``fmprog keys create``, and runs these probes in order, each a
section of the printed report and of the JSON written to ``--out``:

1. ``isolation``: tenant ``a`` tries to read, list, answer, label, evaluate, stream and delete
   tenant ``b``'s program, decision and stream; every attempt should be a 404 (a label batch: the
   outcome ``unknown``), ``a``'s lists should hold nothing of ``b``'s, and an admin key sees both.
2. ``noisy_neighbour``: tenant ``v`` answers frames of a one-call program one at a time, idle and
   then while tenant ``h`` keeps 40 requests in flight (from another process, ignoring
   Retry-After: it sends again 0.1 s after a refusal) of a program that calls a backend 30 times
   (``backend_loop``), then of one that spins the CPU until its time limit (``cpu_spin``). ``v``'s
   p50/p99, the ratio of its loaded p99 to its idle p99 (target <= 2) and ``h``'s replies. The
   program pool is warmed first, and ``v``'s first three frames under load are reported apart
   (one may start a program worker); beside them ``v``'s run time as its replies give it and a
   ``/healthz`` ping's, to tell a wait for admission from a slow run or a late event loop.
3. ``bad_inputs``: decompression bombs (a real 20000x20000 PNG, a PNG header claiming 65535^2, a
   JPEG SOF claiming 65500^2), lone surrogates (in a program's source, in a program's answer, in
   the policy's JSON), JSON nested 5,000 deep, a program whose answer is a 60 MB string, sent to
   the router and, where they apply, to the policy: each reply's status (target: no 5xx); then
   whether the router's policy circuit opened and whether another tenant's next answer is the
   policy's (not the fallback).
4. ``overload``: 128 callers over four tenants (three with a quota of 64 frames in flight, one
   with the default 8, so the router's own queue refuses too) sending frames for 20 s, each
   honouring Retry-After (at most 1 s): p50/p99 of accepted answers (target p99 <= 2 s), counts
   of 200/429/503, and how long a refusal took (target p99 <= 0.5 s: this probe's bar for
   "prompt"); beside them the router's own answer latency (its histogram), a ``/healthz`` ping's
   and how late the callers' event loop ran (they run in a process of their own), to tell the
   router's delays from the load generator's.
5. ``memory``: programs that try to take as much memory as they can (a 10^9-character string,
   10,000 lists of 10,000 integers, a hundred renderings of a 60 MB string, a 60 MB answer) from
   three tenants at once, while the resident memory of the router and all its descendants (the
   program workers) is sampled every 0.2 s: the peak against the budget (the router's
   ``program_memory_share`` of the machine's memory, plus the router itself), and the replies
   (target: resource_limit errors, no 5xx).
6. ``policy_restart``: SIGKILL the policy; ``fmprog up`` restarts it. From the moment its
   ``/readyz`` answers again until a frame is decided by the policy again (``fallback`` false),
   target <= 5 s.
7. ``serve_gone``: every Ray Serve actor process of the stack (replicas, controller, proxy) is
   SIGKILLed, and again every 0.3 s, while a frame is sent every 0.5 s for 10 s, each waited for
   up to 180 s: what ``/answer`` says, and when (target: 503 with Retry-After, no 200 with a
   ``backend_error``, no request left without a reply). Last, since the backends do not come back.

``--fuzz N`` adds ``schemathesis``: an in-process run (ASGI, no stack) over the router's and the
policy's OpenAPI documents like ``tests/test_api_fuzz.py``, at least N requests per service,
counting the requests and the 5xx replies. It takes minutes; ``--no-stack`` runs it alone, merged
into the results file already at ``--out``. Timings are printed, never judged by a test.

    .venv/bin/python -m benchmarks.abuse [--out benchmarks/results/abuse.json] [--probes isolation,...] [--fuzz N]

Everything shares this machine's cores, the load generator included. Nothing leaves the machine:
every address is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import multiprocessing
import os
import re
import signal
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import SYNTHETIC, VISION, RssSampler, command_line, descendants, rss_kb, service_pid
from benchmarks.provenance import provenance

PROBES = ("isolation", "noisy_neighbour", "bad_inputs", "overload", "memory", "policy_restart", "serve_gone")
JSON = {"content-type": "application/json"}
NESTED_DEPTH = 5_000
SAMPLE_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
AGGRESSOR_PAUSE_S = 0.1  # the noisy neighbour sends again this soon after a refusal, whatever Retry-After says
RETRY_AFTER_CAP_S = 1.0  # the overload's callers honour Retry-After, waiting at most this long
SERVE_ACTORS = ("ray::ServeReplica", "ray::ServeController", "ray::ProxyActor")
TARGETS = {
    "noisy_ratio": 2.0,  # V's loaded p99 over its idle p99
    "overload_p99_s": 2.0,  # accepted answers
    "refusal_p99_s": 0.5,  # this probe's own bar for a "prompt" refusal
    "policy_ready_to_decided_s": 5.0,
}
# The overload's tenants: three whose quota lets their 32 callers in (so the router's queue is what
# refuses them) and one with the default quota of 8 frames in flight.
OVERLOAD_TENANTS = ("o1", "o2", "o3", "o4")
TENANT_QUOTAS = {name: {"max_in_flight": 64} for name in OVERLOAD_TENANTS[:3]}

# -- programs ---------------------------------------------------------------------------------

SMALL = """def execute_command(image):
    image_patch = ImagePatch(image)
    return bool_to_yesno(image_patch.exists("circle"))
"""
BACKEND_LOOP = """def execute_command(image):
    image_patch = ImagePatch(image)
    seen = 0
    for i in range(30):
        seen = seen + len(image_patch.find(f"circle {i}"))
    return seen
"""
# Each step renders a thousand 1,200-digit integers (about 15 ms): 19,000 steps outlast the
# 10 s time limit, within the step budget and every size guard.
CPU_SPIN = """def execute_command(image):
    image_patch = ImagePatch(image)
    found = image_patch.exists("circle")
    big = 7 ** 1300
    rounds = 0
    for i in range(100):
        for j in range(190):
            rounds = rounds + len(list(map(str, [big] * 1000)))
    return found
"""
BIG_STRING = """def execute_command(image):
    image_patch = ImagePatch(image)
    x = 'a' * 10**9
    return image_patch.exists("circle")
"""
MANY_LISTS = """def execute_command(image):
    image_patch = ImagePatch(image)
    found = image_patch.exists("circle")
    rows = [list(range(10000)) for i in range(100) for j in range(100)]
    return len(rows)
"""
RENDERINGS = """def execute_command(image):
    image_patch = ImagePatch(image)
    found = image_patch.exists("circle")
    rows = ['x' * 9999] * 6000
    texts = list(map(str, [rows] * 100))
    return len(texts)
"""
ANSWER_60MB = """def execute_command(image):
    n = len(ImagePatch(image).find('circle'))
    rows = ['x' * 9999] * 6000
    return list(map(str, [rows, n]))
"""
# Escapes only (ASCII source): the program builds the lone surrogate as it runs.
SURROGATE_ANSWER = """def execute_command(image):
    image_patch = ImagePatch(image)
    if image_patch.exists('circle'):
        return 'circle \\ud800'
    return 'none \\udfff'
"""
MEMORY_PROGRAMS = {
    "big_string": BIG_STRING,
    "many_lists": MANY_LISTS,
    "renderings": RENDERINGS,
    "answer_60mb": ANSWER_60MB,
}


# -- pure helpers -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, interpolated linearly between the two nearest
    ranks (numpy's default); None when there are none."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """How many, and p50, p99 and max in milliseconds (None without values)."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "n": len(seconds),
        "p50_ms": ms(percentile(seconds, 50)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds) if seconds else None),
    }


def by_time_sent(replies: Sequence[tuple[float, float, bool]], width_s: float) -> dict[str, dict[str, Any]]:
    """Replies ``(sent, seconds, accepted)`` (sent: seconds from the start) in windows of
    ``width_s`` by when they were sent: how many were accepted and refused, and the p99 of each."""
    windows: dict[int, tuple[list[float], list[float]]] = {}
    for sent, seconds, accepted in replies:
        window = windows.setdefault(int(max(0.0, sent) // width_s), ([], []))
        window[0 if accepted else 1].append(seconds)
    found = {}
    for index in sorted(windows):
        accepted, refused = windows[index]
        p99 = [percentile(values, 99) for values in (accepted, refused)]
        found[f"{index * width_s:g}-{(index + 1) * width_s:g} s"] = {
            "accepted": len(accepted),
            "accepted_p99_ms": None if p99[0] is None else round(p99[0] * 1000, 1),
            "refused": len(refused),
            "refused_p99_ms": None if p99[1] is None else round(p99[1] * 1000, 1),
        }
    return found


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def huge_png(side: int = 20_000) -> bytes:
    """A real ``side`` x ``side`` PNG, one bit per pixel, all black, built from zlib-compressed
    zeros row by row (about 50 kB for 20000^2, without ever holding the 50 MB of pixels)."""
    row = b"\x00" * (1 + math.ceil(side / 8))  # filter byte "none", then the row's bits
    packer = zlib.compressobj(9)
    parts = [packer.compress(row) for _ in range(side)]
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A valid 2x2 PNG whose header (IHDR, its CRC patched) claims ``width`` x ``height``."""
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x00" * 6 for _ in range(2))
    data = bytearray(PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)))
    data += _chunk(b"IEND", b"")
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A valid 8x8 JPEG whose start of frame (SOF0) claims ``width`` x ``height`` (at most 65535)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def nested_json(depth: int, inside: str | None = None) -> str:
    """JSON arrays nested ``depth`` deep, as text; within the object ``{inside: ...}`` when given."""
    deep = "[" * depth + "]" * depth
    return deep if inside is None else "{" + inside + deep + "}"


def lone_surrogate_program() -> bytes:
    """A POST /programs body whose ``source`` holds a lone surrogate, as JSON writes one (``\\ud800``)."""
    body = {"source": "def execute_command(image):\n    return '\ud800'\n", "kind": "open", "lambda": 0}
    text = json.dumps(body)  # ensure_ascii: the surrogate becomes the six characters \ud800
    assert "\\ud800" in text
    return text.encode("ascii")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def status_counts(statuses: Iterable[int | str]) -> dict[str, int]:
    """How many of each status (or exception name), keys as text, sorted."""
    counted = Counter(str(status) for status in statuses)
    return dict(sorted(counted.items()))


def server_errors(statuses: Iterable[int | str]) -> int:
    """Replies that were a 5xx, and requests that got no reply at all (an exception's name)."""
    return sum(1 for status in statuses if not isinstance(status, int) or status >= 500)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus page: name, labels, value."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def metric_total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(value for n, have, value in samples if n == name and labels.items() <= have.items())


def metric_by(samples: list[tuple[str, dict[str, str], float]], name: str, *keys: str) -> dict[str, float]:
    """The samples called ``name``, keyed by the values of ``keys`` joined with '/'."""
    found: dict[str, float] = {}
    for n, labels, value in samples:
        if n == name:
            key = "/".join(labels.get(k, "") for k in keys)
            found[key] = found.get(key, 0.0) + value
    return dict(sorted(found.items()))


def histogram_buckets(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> dict[float, float]:
    """A Prometheus histogram's cumulative bucket counts by upper bound, summed over the series
    whose labels include ``labels``."""
    buckets: dict[float, float] = {}
    for n, have, value in samples:
        if n == f"{name}_bucket" and labels.items() <= have.items():
            bound = float(have["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return dict(sorted(buckets.items()))


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile (0-1) of what a histogram observed between two scrapes, interpolated
    linearly within its bucket as Prometheus does (the largest finite bound when it falls in the
    +Inf bucket); None when it observed nothing."""
    counts = [(bound, after[bound] - before.get(bound, 0.0)) for bound in sorted(after)]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def stage_p99_ms(
    before: list[tuple[str, dict[str, str], float]], after: list[tuple[str, dict[str, str], float]]
) -> dict[str, float | None]:
    """The p99 of each stage of answering (``fmprog_answer_stage_seconds``) between two scrapes, ms."""
    name = "fmprog_answer_stage_seconds"
    stages = sorted({labels["stage"] for n, labels, _ in after if n == f"{name}_bucket" and "stage" in labels})
    found: dict[str, float | None] = {}
    for stage in stages:
        value = histogram_quantile(
            histogram_buckets(before, name, stage=stage), histogram_buckets(after, name, stage=stage), 0.99
        )
        found[stage] = None if value is None else round(value * 1000, 1)
    return found


class LoopLag:
    """How late an event loop wakes up: a task sleeping ``every_s`` again and again records each
    overshoot, so a client's own lag can be told from the server's latency."""

    def __init__(self, every_s: float = 0.05):
        self.every_s = every_s
        self.late_s: list[float] = []

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            before = time.monotonic()
            await asyncio.sleep(self.every_s)
            self.late_s.append(max(0.0, time.monotonic() - before - self.every_s))


def _check(probe: str, what: str, target: str, value: Any, met: bool | None) -> dict[str, Any]:
    return {"probe": probe, "what": what, "target": target, "value": value, "met": met}


def _at_most(value: float | None, bar: float) -> bool | None:
    return None if value is None else value <= bar


def _zero(value: int | float | None) -> bool | None:
    return None if value is None else value == 0


def judge(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each probe's targets with the measured value and whether it was met (None: not measured)."""
    checks: list[dict[str, Any]] = []
    for name in PROBES:
        if isinstance(results.get(name), dict) and "failed" in results[name]:
            checks.append(_check(name, "the probe ran", "yes", results[name]["failed"], False))
    ran = {k: v for k, v in results.items() if not (isinstance(v, dict) and "failed" in v)}
    if iso := ran.get("isolation"):
        refused, attempts = iso.get("refused"), iso.get("attempts")
        checks.append(
            _check("isolation", "cross-tenant attempts refused", f"all {attempts}", refused, refused == attempts)
        )
        checks.append(
            _check("isolation", "other tenant's items listed", "0", iso.get("list_leaks"), _zero(iso.get("list_leaks")))
        )
        admin = iso.get("admin_sees_both")
        checks.append(_check("isolation", "admin key sees both tenants' programs", "true", admin, admin))
    if noisy := ran.get("noisy_neighbour"):
        bar = TARGETS["noisy_ratio"]
        for name, variant in noisy.get("loaded", {}).items():
            value = variant.get("p99_ratio")
            checks.append(
                _check("noisy_neighbour", f"V p99 loaded/idle, H {name}", f"<= {bar:g}", value, _at_most(value, bar))
            )
    if bad := ran.get("bad_inputs"):
        errors, opened = bad.get("server_errors"), bad.get("policy_circuit_open")
        checks.append(_check("bad_inputs", "5xx replies or no reply", "0", errors, _zero(errors)))
        checks.append(_check("bad_inputs", "policy circuit open afterwards", "0", opened, _zero(opened)))
        fallback = bad.get("next_answer_fallback")
        met = None if fallback is None else not fallback
        checks.append(_check("bad_inputs", "another tenant's next answer is the fallback", "false", fallback, met))
    if over := ran.get("overload"):
        p99 = (over.get("accepted_latency") or {}).get("p99_ms")
        bar = TARGETS["overload_p99_s"] * 1000
        checks.append(_check("overload", "accepted answers p99 ms", f"<= {bar:g}", p99, _at_most(p99, bar)))
        refusal = (over.get("refusal_latency") or {}).get("p99_ms")
        bar = TARGETS["refusal_p99_s"] * 1000
        checks.append(_check("overload", "time to refusal p99 ms", f"<= {bar:g}", refusal, _at_most(refusal, bar)))
        steady = over.get("after_the_first_5_s") or {}
        if steady:
            p99 = (steady.get("accepted_latency") or {}).get("p99_ms")
            bar = TARGETS["overload_p99_s"] * 1000
            what = "accepted answers p99 ms, sent after the first 5 s"
            checks.append(_check("overload", what, f"<= {bar:g}", p99, _at_most(p99, bar)))
            refusal = (steady.get("refusal_latency") or {}).get("p99_ms")
            bar = TARGETS["refusal_p99_s"] * 1000
            what = "time to refusal p99 ms, sent after the first 5 s"
            checks.append(_check("overload", what, f"<= {bar:g}", refusal, _at_most(refusal, bar)))
        other = over.get("server_errors_not_503")
        checks.append(_check("overload", "5xx other than 503, or no reply", "0", other, _zero(other)))
        missing = over.get("refusals_without_retry_after")
        checks.append(_check("overload", "refusals without Retry-After", "0", missing, _zero(missing)))
    if memory := ran.get("memory"):
        peak, budget = memory.get("peak_total_mb"), memory.get("budget_mb")
        met = None if budget is None else _at_most(peak, budget)
        checks.append(_check("memory", "peak RSS of the router and its workers MB", f"<= {budget}", peak, met))
        errors = memory.get("server_errors")
        checks.append(_check("memory", "5xx replies or no reply", "0", errors, _zero(errors)))
    if restart := ran.get("policy_restart"):
        value, bar = restart.get("ready_to_decided_s"), TARGETS["policy_ready_to_decided_s"]
        checks.append(
            _check("policy_restart", "policy ready -> decided by it, s", f"<= {bar:g}", value, _at_most(value, bar))
        )
    if gone := ran.get("serve_gone"):
        for key, what in (
            ("ok_with_backend_error", "200 with a backend_error"),
            ("refused_503_without_retry_after", "503 without Retry-After"),
            ("no_reply", "no reply within the client's timeout"),
        ):
            checks.append(_check("serve_gone", what, "0", gone.get(key), _zero(gone.get(key))))
    if fuzz := results.get("schemathesis"):
        for service, numbers in fuzz.get("services", {}).items():
            errors = numbers.get("server_errors")
            checks.append(_check("schemathesis", f"{service}: 5xx replies", "0", errors, _zero(errors)))
    return checks


def _p99(section: dict[str, Any], key: str) -> float | None:
    return (section.get(key) or {}).get("p99_ms")


def _section_lines(name: str, section: dict[str, Any]) -> list[str]:
    """One probe's numbers as lines of text."""
    counts = status_counts_text
    if "failed" in section:
        return [f"{name}: FAILED: {section['failed']}"]
    if name == "isolation":
        return [
            f"isolation: {section['refused']}/{section['attempts']} cross-tenant attempts refused "
            f"({counts(section['statuses'])}); listed leaks {section['list_leaks']}; "
            f"admin sees both: {section['admin_sees_both']}"
        ]
    if name == "noisy_neighbour":
        idle = section["idle"]
        lines = [f"noisy_neighbour: V idle p50 {idle['p50_ms']} ms, p99 {idle['p99_ms']} ms (n={idle['n']})"]
        for aggressor, variant in section["loaded"].items():
            v, h = variant["v"], variant["h"]
            lines.append(
                f"  H {aggressor}: V p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms (n={v['n']}), "
                f"p99 ratio {variant['p99_ratio']}; H {counts(h['statuses'])}"
            )
            if "v_breakdown" in variant:
                lines.append(
                    f"    V's runs (latency_s) p99 {_p99(variant['v_breakdown'], 'run_latency')} ms, "
                    f"/healthz p99 {_p99(variant, 'healthz')} ms, V's first 3 under load "
                    f"{variant.get('v_first_answers_ms')} ms"
                )
        return lines
    if name == "bad_inputs":
        lines = [
            f"bad_inputs: {len(section['inputs'])} inputs, {section['server_errors']} 5xx or no reply: "
            f"{counts(section['statuses'])}"
        ]
        for item in section["inputs"]:
            kind = f" ({item['error_kind']})" if item.get("error_kind") else ""
            lines.append(f"  {item['target']:<6} {item['name']:<46} {item['status']}{kind} {item['seconds']} s")
        lines.append(
            f"  policy circuit open afterwards: {section['policy_circuit_open']}; "
            f"another tenant's next answer a fallback: {section['next_answer_fallback']}"
        )
        return lines
    if name == "overload":
        accepted, refused = section["accepted_latency"], section["refusal_latency"]
        return [
            f"overload: {section['callers']} callers, {section['seconds']} s: {counts(section['statuses'])}",
            f"  accepted p50 {accepted['p50_ms']} ms, p99 {accepted['p99_ms']} ms; "
            f"refused p50 {refused['p50_ms']} ms, p99 {refused['p99_ms']} ms",
            f"  router's own answer latency p99 {_p99(section, 'router_side_answer_latency')} ms, "
            f"/healthz p99 {_p99(section, 'healthz')} ms, callers' loop lag p99 {_p99(section, 'client_loop_lag')} ms",
        ]
    if name == "memory":
        return [
            f"memory: peak RSS router + workers {section['peak_total_mb']} MB ({section['peak_workers']} processes), "
            f"budget {section['budget_mb']} MB",
            f"  replies {counts(section['statuses'])}; errors {counts(section['error_kinds'])}",
        ]
    if name == "policy_restart":
        return [
            f"policy_restart: killed -> ready {section['kill_to_ready_s']} s, ready -> decided by the policy "
            f"{section['ready_to_decided_s']} s; {section['fallback_answers']} fallback answers meanwhile",
        ]
    if name == "serve_gone":
        latency = section["latency"]
        return [
            f"serve_gone: {counts(section['outcomes'])} in {section['seconds']} s; "
            f"reply p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms"
        ]
    if name == "schemathesis":
        return [
            f"schemathesis {service}: {numbers['requests']} requests, {numbers['server_errors']} 5xx, "
            f"{numbers['seconds']} s"
            for service, numbers in section["services"].items()
        ]
    return []


def render(results: dict[str, Any]) -> list[str]:
    """The report as lines of text: each probe's numbers, then the targets."""
    lines: list[str] = []
    for name in (*PROBES, "schemathesis"):
        if isinstance(results.get(name), dict):
            lines += _section_lines(name, results[name])
    lines.append("targets:")
    for check in results.get("targets", []):
        mark = {True: "met", False: "MISSED", None: "not measured"}[check["met"]]
        lines.append(f"  [{mark}] {check['probe']}: {check['what']} = {check['value']} (target {check['target']})")
    return lines


def status_counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n}x {status}" for status, n in counts.items()) or "none"


def merge(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``existing`` results with the sections of ``new`` replacing theirs; the targets judged again.
    Probes of an earlier stack run that this one did not repeat keep that run's provenance, under
    ``earlier_run``."""
    merged = {**existing, **new}
    if "probes" in new and "probes" in existing:
        kept = [p for p in existing["probes"] if p not in new["probes"] and p in existing]
        if kept:
            earlier = existing.get("earlier_run", {})
            merged["earlier_run"] = {
                "probes": kept,
                "provenance": earlier.get("provenance", existing.get("provenance")),
            }
            merged["probes"] = [p for p in PROBES if p in kept or p in new["probes"]]
        else:
            merged.pop("earlier_run", None)
    merged["targets"] = judge(merged)
    return merged


# -- the stack --------------------------------------------------------------------------------


def fmprog_keys_create(state_dir: Path, tenant: str, *, admin: bool = False) -> str:
    """A new key for ``tenant`` from ``fmprog keys create`` (printed once on stdout)."""
    from launcher.process import fmprog_command

    command = [*fmprog_command(), "keys", "create", tenant, "--state-dir", str(state_dir)]
    done = subprocess.run(command + (["--admin"] if admin else []), capture_output=True, text=True, check=True)
    return done.stdout.strip()


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@dataclass
class Reply:
    """One request as the client saw it."""

    status: int | str  # the HTTP status, or the exception's name when there was no reply
    seconds: float
    sent_at: float = 0.0  # monotonic
    body: dict[str, Any] | None = None
    retry_after: str | None = None

    @property
    def error_kind(self) -> str | None:
        error = (self.body or {}).get("error")
        return error.get("kind") if isinstance(error, dict) else None

    @property
    def fallback(self) -> bool | None:
        return (self.body or {}).get("fallback") if self.status == 200 else None


def _reply(response: httpx.Response, started: float) -> Reply:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"items": body} if isinstance(body, list) else None
    seconds = time.monotonic() - started
    return Reply(response.status_code, seconds, started, body, response.headers.get("retry-after"))


class Api:
    """A tenant's client of the router (its key in every request)."""

    def __init__(self, url: str, key: str | None, timeout_s: float = 60.0):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, *, headers_only: bool = False, **kwargs: Any) -> Reply:
        """One request; with ``headers_only`` the body is read only when it is not a 200 (an event
        stream that never ends)."""
        started = time.monotonic()
        try:
            if headers_only:
                with self.client.stream(method, path, **kwargs) as response:
                    if response.status_code == 200:
                        return Reply(200, time.monotonic() - started, started, None, None)
                    response.read()
                    return _reply(response, started)
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            return Reply(type(exc).__name__, time.monotonic() - started, started)
        return _reply(response, started)

    def register(self, source: str, kind: str = "open") -> str:
        reply = self.request("POST", "/programs", json={"source": source, "kind": kind, "lambda": 0})
        if reply.status != 201 or reply.body is None:
            raise RuntimeError(f"registering a program: {reply.status} {reply.body}")
        return reply.body["id"]

    def answer(self, program_id: str, image: str) -> Reply:
        return self.request("POST", "/answer", json={"program_id": program_id, "image": image})

    def close(self) -> None:
        self.client.close()


@dataclass
class Context:
    """What the probes share: the stack, its settings, the tenants' keys and the frames."""

    stack: Any
    settings: Any
    keys: dict[str, str]
    frames: list[str]
    apis: dict[str, Api] = field(default_factory=dict)

    def api(self, tenant: str) -> Api:
        if tenant not in self.apis:
            self.apis[tenant] = Api(self.settings.router_url, self.keys[tenant])
        return self.apis[tenant]

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        return parse_metrics(httpx.get(f"{self.settings.router_url}/metrics", timeout=30).text)

    def settle(self, timeout_s: float = 30.0) -> None:
        """Wait until no tenant's frame runs or waits in the router (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if metric_total(self.metrics(), "fmprog_tenant_frames") == 0:
                    return
            time.sleep(0.5)

    def close(self) -> None:
        for api in self.apis.values():
            api.close()


def scene_frames(count: int = 20) -> list[str]:
    """``count`` generated scenes as base64 PNG."""
    from fmprog.images import encode_png
    from fmprog.scene import scene_stream

    return [b64(encode_png(scene.image)) for scene in scene_stream(seed=31, count=count)]


# -- 1. isolation -----------------------------------------------------------------------------


def probe_isolation(ctx: Context) -> dict[str, Any]:
    a, b, ops = ctx.api("a"), ctx.api("b"), ctx.api("ops")
    mine, theirs = a.register(SMALL, "binary"), b.register(SMALL, "binary")
    answered = b.answer(theirs, ctx.frames[0])
    if answered.status != 200 or answered.body is None:
        raise RuntimeError(f"tenant b could not answer its own program: {answered.status} {answered.body}")
    decision = answered.body["decision_id"]
    stream_id = None
    if SAMPLE_VIDEO.exists():
        started = b.request("POST", f"/programs/{theirs}/streams", json={"source": SAMPLE_VIDEO.as_uri(), "fps": 0.5})
        if started.status == 201 and started.body is not None:
            stream_id = started.body["id"]
    label = {"decision_id": decision, "label": "yes"}
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/programs/{theirs}", {}),
        ("GET", f"/programs/{theirs}/policy", {}),
        ("POST", f"/programs/{theirs}/evaluate", {"json": {"targets": [{"kind": "random"}]}}),
        ("POST", f"/programs/{theirs}/streams", {"json": {"source": "file:///nowhere.avi"}}),
        ("POST", "/answer", {"json": {"program_id": theirs, "image": ctx.frames[1]}}),
        ("POST", "/feedback", {"json": label}),
    ]
    if stream_id is not None:
        attempts += [
            ("GET", f"/streams/{stream_id}", {}),
            ("GET", f"/streams/{stream_id}/events", {}),
            ("GET", f"/streams/{stream_id}/dead-letters", {}),
            ("DELETE", f"/streams/{stream_id}", {}),
        ]
    attempts.append(("DELETE", f"/programs/{theirs}", {}))
    outcomes = []
    for method, path, kwargs in attempts:
        reply = a.request(method, path, headers_only=path.endswith("/events"), **kwargs)
        shown = path.replace(theirs, "{b_program}")
        if stream_id is not None:
            shown = shown.replace(stream_id, "{b_stream}")
        outcomes.append({"request": f"{method} {shown}", "status": reply.status})
    batch = a.request("POST", "/feedback", json=[label])
    batch_outcomes = [item.get("outcome") for item in (batch.body or {}).get("results", [])]
    outcomes.append({"request": "POST /feedback (batch of one)", "status": batch.status, "outcomes": batch_outcomes})
    refused = sum(o["status"] == 404 for o in outcomes[:-1]) + (batch.status == 200 and batch_outcomes == ["unknown"])

    listed = [p["id"] for p in (a.request("GET", "/programs").body or {}).get("items", [])]
    streams = [s["id"] for s in (a.request("GET", "/streams").body or {}).get("items", [])]
    leaks = (theirs in listed) + (stream_id is not None and stream_id in streams)
    admin_listed = {p["id"] for p in (ops.request("GET", "/programs").body or {}).get("items", [])}
    admin_gets = [ops.request("GET", f"/programs/{pid}").status for pid in (mine, theirs)]
    still_there = b.request("GET", f"/programs/{theirs}").status
    own_label = b.request("POST", "/feedback", json=label).status
    strangers = [Api(ctx.settings.router_url, key) for key in (None, "fmp_000000000000_" + "x" * 43)]
    nobody, wrong = (stranger.request("GET", "/programs").status for stranger in strangers)
    for stranger in strangers:
        stranger.close()
    if stream_id is not None:
        b.request("DELETE", f"/streams/{stream_id}")
    return {
        "attempts": len(outcomes),
        "refused": int(refused),
        "statuses": status_counts(o["status"] for o in outcomes),
        "requests": outcomes,
        "stream_probed": stream_id is not None,
        "list_leaks": int(leaks),
        "a_lists_own_program": mine in listed,
        "admin_sees_both": {mine, theirs} <= admin_listed and admin_gets == [200, 200],
        "b_program_still_there": still_there,
        "b_labels_its_own_decision": own_label,
        "no_key": nobody,
        "unknown_key": wrong,
    }


# -- 2. noisy neighbour -----------------------------------------------------------------------


async def _aggressor(conf: dict[str, Any], started: Any, stop: Any) -> dict[str, Any]:
    statuses: list[int | str] = []
    accepted: list[float] = []
    errors: Counter[str] = Counter()  # the error kinds of its answered frames
    frames = conf["frames"]
    limits = httpx.Limits(
        max_connections=conf["concurrency"], max_keepalive_connections=conf["concurrency"], keepalive_expiry=1.0
    )
    headers = {"authorization": f"Bearer {conf['key']}"}
    deadline = time.monotonic() + conf["max_s"]

    async def caller(client: httpx.AsyncClient, n: int) -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            body = {"program_id": conf["program_id"], "image": frames[n % len(frames)]}
            n += 1
            begun = time.monotonic()
            try:
                reply = await client.post("/answer", json=body)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
                await asyncio.sleep(conf["pause_s"])
                continue
            statuses.append(reply.status_code)
            if reply.status_code == 200:
                accepted.append(time.monotonic() - begun)
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    errors[(reply.json().get("error") or {}).get("kind", "none")] += 1
            else:
                await asyncio.sleep(conf["pause_s"])

    async with httpx.AsyncClient(base_url=conf["url"], headers=headers, timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(caller(client, i)) for i in range(conf["concurrency"])]
        started.set()
        await asyncio.gather(*tasks)
    return {"statuses": statuses, "accepted_s": accepted, "errors": dict(errors)}


def aggressor_process(conf: dict[str, Any], started: Any, stop: Any, out: Any) -> None:
    """The noisy neighbour, in a process of its own: ``concurrency`` callers answering frames of
    one program until ``stop`` is set (at most ``max_s``); puts its tally on ``out``."""
    out.put(asyncio.run(_aggressor(conf, started, stop)))


class Pinger:
    """GETs the router's ``/healthz`` every ``every_s`` while the block runs and keeps how long each
    took: a route that does nothing, so its delay is the router's event loop (or the machine)
    being late, not a queue for slots, workers or backends."""

    def __init__(self, url: str, every_s: float = 0.1):
        self.url = url
        self.every_s = every_s
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz", daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.wait(self.every_s):
                started = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    client.get("/healthz")
                    self.seconds.append(time.monotonic() - started)

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _sequential(api: Api, program_id: str, frames: list[str], count: int, max_s: float) -> list[Reply]:
    replies: list[Reply] = []
    deadline = time.monotonic() + max_s
    for i in range(count):
        if time.monotonic() > deadline:
            break
        replies.append(api.answer(program_id, frames[i % len(frames)]))
    return replies


def _ok_seconds(replies: list[Reply]) -> list[float]:
    return [r.seconds for r in replies if r.status == 200]


def where_the_time_went(replies: list[Reply]) -> dict[str, Any]:
    """Of answered frames: the program's run as the reply gives it (``latency_s``, the trace's: not
    the wait for admission, the policy or a program worker) and its backend calls (the trace's)."""
    answered = [r.body for r in replies if r.status == 200 and r.body is not None]
    return {
        "run_latency": latency_summary([float(body.get("latency_s") or 0.0) for body in answered]),
        "backend_calls": latency_summary(
            [sum(float(call.get("latency_s") or 0.0) for call in body.get("trace") or []) for body in answered]
        ),
    }


def probe_noisy_neighbour(
    ctx: Context, answers: int = 40, concurrency: int = 40, loaded_max_s: float = 30.0
) -> dict[str, Any]:
    v, h = ctx.api("v"), ctx.api("h")
    small = v.register(SMALL, "binary")
    aggressors = {"backend_loop": h.register(BACKEND_LOOP), "cpu_spin": h.register(CPU_SPIN)}
    # Warm: the policy, and the program pool at full size (it starts workers on demand, and one
    # started under load takes seconds: the first frame to need it would pay that, not H's load).
    # Slow frames of two tenants at once (one alone may not take the slots kept for tenants
    # running nothing), so that every worker is needed together.
    b = ctx.api("b")
    warm = [(v, v.register(BACKEND_LOOP)), (b, b.register(BACKEND_LOOP))]

    def warm_one(n: int) -> Reply:
        api, program_id = warm[n % 2]
        return api.answer(program_id, ctx.frames[n % len(ctx.frames)])

    with ThreadPoolExecutor(max_workers=16) as warming:
        list(warming.map(warm_one, range(32)))
    _sequential(v, small, ctx.frames, 5, 30)
    router_pid = service_pid(ctx.stack, "router.app")
    with Pinger(ctx.settings.router_url) as idle_pings:
        idle = _sequential(v, small, ctx.frames, answers, 60)
    result: dict[str, Any] = {
        "answers": answers,
        "h_concurrency": concurrency,
        "h_pause_after_refusal_s": AGGRESSOR_PAUSE_S,
        "idle": latency_summary(_ok_seconds(idle)),
        "idle_statuses": status_counts(r.status for r in idle),
        "idle_breakdown": where_the_time_went(idle),
        "idle_healthz": latency_summary(idle_pings.seconds),
        "loaded": {},
    }
    spawn = multiprocessing.get_context("spawn")
    for name, program_id in aggressors.items():
        ctx.settle()
        conf = {
            "url": ctx.settings.router_url,
            "key": ctx.keys["h"],
            "program_id": program_id,
            "frames": ctx.frames,
            "concurrency": concurrency,
            "pause_s": AGGRESSOR_PAUSE_S,
            "max_s": loaded_max_s + 60,
        }
        started, stop, out = spawn.Event(), spawn.Event(), spawn.Queue()
        process = spawn.Process(target=aggressor_process, args=(conf, started, stop, out), name=f"noisy-{name}")
        process.start()
        try:
            if not started.wait(60):
                raise RuntimeError("the noisy neighbour did not start")
            time.sleep(2.0)  # its 40 callers in flight
            frames_before = metric_by(ctx.metrics(), "fmprog_tenant_frames", "tenant", "state")
            workers = len(descendants(router_pid))
            scraped = ctx.metrics()
            began = time.monotonic()
            with Pinger(ctx.settings.router_url) as pings:
                # The first frames under load may start a program worker (seconds on a busy
                # machine): reported apart, then the measured ones.
                first = _sequential(v, small, ctx.frames, 3, loaded_max_s)
                loaded = _sequential(v, small, ctx.frames, answers, loaded_max_s)
            loaded_s = time.monotonic() - began
            stages = stage_p99_ms(scraped, ctx.metrics())
        finally:
            stop.set()
        tally = out.get(timeout=180)
        process.join(30)
        v_summary = latency_summary(_ok_seconds(loaded))
        h_statuses = tally["statuses"]
        result["loaded"][name] = {
            "v": v_summary,
            "v_statuses": status_counts(r.status for r in loaded),
            "v_fallbacks": sum(bool(r.fallback) for r in loaded),
            "v_errors": status_counts(r.error_kind for r in loaded if r.error_kind),
            "v_seconds": round(loaded_s, 1),
            "v_breakdown": where_the_time_went(loaded),
            "healthz": latency_summary(pings.seconds),
            "stage_p99_ms_all_tenants": stages,
            "p99_ratio": ratio(v_summary["p99_ms"], result["idle"]["p99_ms"]),
            "p50_ratio": ratio(v_summary["p50_ms"], result["idle"]["p50_ms"]),
            "tenant_frames_at_start": frames_before,
            "program_workers_at_start": workers,
            "v_first_answers_ms": [round(r.seconds * 1000, 1) for r in first],
            "h": {
                "requests": len(h_statuses),
                "statuses": status_counts(h_statuses),
                "accepted": sum(s == 200 for s in h_statuses),
                "refused_429": sum(s == 429 for s in h_statuses),
                "refused_503": sum(s == 503 for s in h_statuses),
                "accepted_latency": latency_summary(tally["accepted_s"]),
                "answered_error_kinds": tally["errors"],
            },
        }
    ctx.settle(60)
    return result


# -- 3. bad inputs ----------------------------------------------------------------------------


def probe_bad_inputs(ctx: Context) -> dict[str, Any]:
    v, a = ctx.api("v"), ctx.api("a")
    program = v.register(SMALL, "binary")
    policy = httpx.Client(
        base_url=ctx.settings.policy_url,
        headers={"authorization": f"Bearer {ctx.settings.policy_api_key.get_secret_value()}"},
        timeout=60,
    )
    bombs = {
        "png 20000x20000": (huge_png(20_000), "image/png"),
        "png header 65535x65535": (png_claiming(65535, 65535), "image/png"),
        "jpeg SOF 65500x65500": (jpeg_claiming(65500, 65500), "image/jpeg"),
    }
    inputs: list[dict[str, Any]] = []

    def record(target: str, name: str, reply: Reply, expected: str = "422") -> None:
        detail = (reply.body or {}).get("detail")
        seen = f"200 {reply.error_kind}" if reply.status == 200 and reply.error_kind else str(reply.status)
        inputs.append(
            {
                "target": target,
                "name": name,
                "status": reply.status,
                "expected": expected,
                "as_expected": seen == expected,
                "error_kind": reply.error_kind,
                "retry_after": reply.retry_after,
                "detail": str(detail)[:160] if detail is not None else None,
                "seconds": round(reply.seconds, 3),
            }
        )

    def to_policy(method: str, path: str, **kwargs: Any) -> Reply:
        started = time.monotonic()
        try:
            return _reply(policy.request(method, path, **kwargs), started)
        except httpx.HTTPError as exc:
            return Reply(type(exc).__name__, time.monotonic() - started, started)

    for name, (data, content_type) in bombs.items():
        record("router", f"/answer {name} (JSON)", v.answer(program, b64(data)))
        record(
            "router",
            f"/answer {name} (body)",
            v.request("POST", f"/answer?program_id={program}", content=data, headers={"content-type": content_type}),
        )
        record(
            "router",
            f"/answer {name} (form)",
            v.request("POST", "/answer", data={"program_id": program}, files={"image": ("f", data, content_type)}),
        )
        record(
            "policy",
            f"decisions {name} (body)",
            to_policy(
                "POST",
                f"/policies/{program}/decisions?decision_id={os.urandom(16).hex()}",
                content=data,
                headers={"content-type": "application/octet-stream"},
            ),
        )
        record(
            "policy",
            f"decisions {name} (JSON)",
            to_policy(
                "POST", f"/policies/{program}/decisions", json={"decision_id": os.urandom(16).hex(), "image": b64(data)}
            ),
        )
    record(
        "router",
        "/programs lone surrogate in source",
        v.request("POST", "/programs", content=lone_surrogate_program(), headers=JSON),
    )
    deep_label = nested_json(NESTED_DEPTH, '"decision_id": "' + "0" * 32 + '", "label": ')
    record(
        "router",
        f"/feedback label nested {NESTED_DEPTH}",
        v.request("POST", "/feedback", content=deep_label, headers=JSON),
    )
    record(
        "router",
        f"/feedback body nested {NESTED_DEPTH}",
        v.request("POST", "/feedback", content=nested_json(NESTED_DEPTH), headers=JSON),
    )
    deep_camera = nested_json(NESTED_DEPTH, '"program_id": "' + program + '", "image": "x", "camera": ')
    record(
        "router",
        f"/answer camera nested {NESTED_DEPTH}",
        v.request("POST", "/answer", content=deep_camera, headers=JSON),
    )
    deep_backends = nested_json(NESTED_DEPTH, '"source": "x", "kind": "binary", "backends": ')
    record(
        "router",
        f"/programs backends nested {NESTED_DEPTH}",
        v.request("POST", "/programs", content=deep_backends, headers=JSON),
    )
    for name, source in (("answer is a lone surrogate", SURROGATE_ANSWER), ("answer is a 60 MB string", ANSWER_60MB)):
        registered = v.request("POST", "/programs", json={"source": source, "kind": "open", "lambda": 0})
        record("router", f"/programs {name}", registered, "201")
        if registered.status == 201 and registered.body is not None:
            kind = "runtime_error" if "surrogate" in name else "resource_limit"
            record("router", f"/answer {name}", v.answer(registered.body["id"], ctx.frames[2]), f"200 {kind}")
    deep_sites = nested_json(NESTED_DEPTH, '"decision_id": "x", "reward": 1, "executed_sites": ')
    record(
        "policy",
        f"feedback nested {NESTED_DEPTH}",
        to_policy("POST", f"/policies/{program}/feedback", content=deep_sites, headers=JSON),
    )
    record(
        "policy",
        f"check nested {NESTED_DEPTH}",
        to_policy("POST", "/policies/check", content=nested_json(NESTED_DEPTH, '"sites": '), headers=JSON),
    )
    surrogate = json.dumps({"decision_id": "\udfff", "reward": 1, "executed_sites": []}).encode("ascii")
    record(
        "policy",
        "feedback lone surrogate",
        to_policy("POST", f"/policies/{program}/feedback", content=surrogate, headers=JSON),
    )
    policy.close()

    circuit = metric_total(ctx.metrics(), "fmprog_policy_circuit_open")
    other = a.register(SMALL, "binary")
    nxt = a.answer(other, ctx.frames[3])
    statuses = [item["status"] for item in inputs]
    return {
        "inputs": inputs,
        "statuses": status_counts(statuses),
        "server_errors": server_errors(statuses),
        "not_as_expected": [item["name"] for item in inputs if not item["as_expected"]],
        "policy_circuit_open": circuit,
        "next_answer_status": nxt.status,
        "next_answer_fallback": nxt.fallback,
    }


# -- 4. overload ------------------------------------------------------------------------------


async def _overload(
    url: str,
    keys: dict[str, str],
    programs: dict[str, str],
    frames: list[str],
    callers: int,
    seconds: float,
    lag: LoopLag,
) -> list[Reply]:
    replies: list[Reply] = []
    deadline = time.monotonic() + seconds
    tenants = list(programs)
    per_tenant = math.ceil(callers / len(tenants))

    async def caller(client: httpx.AsyncClient, tenant: str, n: int) -> None:
        while time.monotonic() < deadline:
            body = {"program_id": programs[tenant], "image": frames[n % len(frames)]}
            n += 1
            started = time.monotonic()
            try:
                response = await client.post("/answer", json=body)
            except httpx.HTTPError as exc:
                replies.append(Reply(type(exc).__name__, time.monotonic() - started, started))
                await asyncio.sleep(RETRY_AFTER_CAP_S)
                continue
            reply = (
                _reply(response, started)
                if response.status_code == 200
                else Reply(
                    response.status_code, time.monotonic() - started, started, None, response.headers.get("retry-after")
                )
            )
            replies.append(reply)
            if response.status_code != 200:
                wait = RETRY_AFTER_CAP_S
                with contextlib.suppress(TypeError, ValueError):
                    wait = min(float(reply.retry_after), RETRY_AFTER_CAP_S)  # type: ignore[arg-type]
                await asyncio.sleep(wait)

    clients = []
    try:
        tasks = [lag.run(deadline)]
        for i, tenant in enumerate(tenants):
            limits = httpx.Limits(
                max_connections=per_tenant, max_keepalive_connections=per_tenant, keepalive_expiry=1.0
            )
            client = httpx.AsyncClient(
                base_url=url, headers={"authorization": f"Bearer {keys[tenant]}"}, timeout=120, limits=limits
            )
            clients.append(client)
            count = min(per_tenant, callers - i * per_tenant)
            tasks += [caller(client, tenant, j) for j in range(count)]
        await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.aclose()
    return replies


def overload_process(conf: dict[str, Any], started: Any, out: Any) -> None:
    """The overload's callers, in a process of its own (so that this one's pings measure the router,
    not the load generator's event loop): puts each reply as a tuple, and the loop's lag, on ``out``."""
    lag = LoopLag()
    started.set()
    replies = asyncio.run(
        _overload(conf["url"], conf["keys"], conf["programs"], conf["frames"], conf["callers"], conf["seconds"], lag)
    )
    rows = [(r.status, r.seconds, r.sent_at, r.retry_after, r.error_kind, r.fallback) for r in replies]
    out.put({"replies": rows, "lag_s": lag.late_s})


def probe_overload(ctx: Context, callers: int = 128, seconds: float = 20.0) -> dict[str, Any]:
    programs = {tenant: ctx.api(tenant).register(SMALL, "binary") for tenant in OVERLOAD_TENANTS}
    for tenant, program in programs.items():  # warm each tenant's program
        ctx.api(tenant).answer(program, ctx.frames[0])
    ctx.settle()
    spawn = multiprocessing.get_context("spawn")
    conf = {
        "url": ctx.settings.router_url,
        "keys": ctx.keys,
        "programs": programs,
        "frames": ctx.frames,
        "callers": callers,
        "seconds": seconds,
    }
    started, out = spawn.Event(), spawn.Queue()
    process = spawn.Process(target=overload_process, args=(conf, started, out), name="overload")
    before = ctx.metrics()
    process.start()
    if not started.wait(60):
        raise RuntimeError("the overload's callers did not start")
    began = time.monotonic()
    with Pinger(ctx.settings.router_url) as pings:
        tally = out.get(timeout=seconds + 300)
    process.join(30)
    elapsed = time.monotonic() - began
    after = ctx.metrics()
    replies = [
        Reply(status, took, sent, {"error": {"kind": kind} if kind else None, "fallback": fallback}, retry_after)
        for status, took, sent, retry_after, kind, fallback in tally["replies"]
    ]
    histogram = "fmprog_answer_latency_seconds"
    buckets_before, buckets_after = histogram_buckets(before, histogram), histogram_buckets(after, histogram)

    def router_side(q: float) -> float | None:
        value = histogram_quantile(buckets_before, buckets_after, q)
        return None if value is None else round(value * 1000, 1)

    accepted = [r.seconds for r in replies if r.status == 200]
    refused = [r for r in replies if r.status in (429, 503)]
    start = min((r.sent_at for r in replies), default=0.0)
    refused_before = metric_by(before, "fmprog_refused_total", "tenant", "reason")
    refused_after = metric_by(after, "fmprog_refused_total", "tenant", "reason")
    statuses = [r.status for r in replies]
    return {
        "callers": callers,
        "tenants": list(OVERLOAD_TENANTS),
        "tenant_quotas": TENANT_QUOTAS,
        "seconds": round(elapsed, 1),
        "requests": len(replies),
        "statuses": status_counts(statuses),
        "answers_per_s": round(len(accepted) / elapsed, 1),
        "answered_error_kinds": status_counts(r.error_kind for r in replies if r.error_kind),
        "fallback_answers": sum(r.fallback is True for r in replies),
        "accepted_latency": latency_summary(accepted),
        "router_side_answer_latency": {"p50_ms": router_side(0.5), "p99_ms": router_side(0.99)},
        "client_loop_lag": latency_summary(tally["lag_s"]),
        "healthz": latency_summary(pings.seconds),
        "refusal_latency": latency_summary([r.seconds for r in refused]),
        "refusal_latency_429": latency_summary([r.seconds for r in refused if r.status == 429]),
        "refusal_latency_503": latency_summary([r.seconds for r in refused if r.status == 503]),
        "refusals_without_retry_after": sum(r.retry_after is None for r in refused),
        "by_time_sent": by_time_sent([(r.sent_at - start, r.seconds, r.status == 200) for r in replies], 5.0),
        "after_the_first_5_s": {  # past the burst of 128 callers starting together
            "accepted_latency": latency_summary(
                [r.seconds for r in replies if r.status == 200 and r.sent_at - start >= 5]
            ),
            "refusal_latency": latency_summary([r.seconds for r in refused if r.sent_at - start >= 5]),
        },
        "server_errors_not_503": sum(1 for s in statuses if not isinstance(s, int) or (s >= 500 and s != 503)),
        "refused_by_tenant_reason": {
            k: v - refused_before.get(k, 0.0) for k, v in refused_after.items() if v - refused_before.get(k, 0.0)
        },
    }


# -- 5. memory --------------------------------------------------------------------------------


async def _memory_load(
    url: str, keys: dict[str, str], programs: dict[str, dict[str, str]], frame: str, per_tenant: int, seconds: float
) -> list[tuple[str, Reply]]:
    replies: list[tuple[str, Reply]] = []
    deadline = time.monotonic() + seconds

    async def caller(client: httpx.AsyncClient, tenant: str, n: int) -> None:
        names = list(programs[tenant])
        while time.monotonic() < deadline:
            name = names[n % len(names)]
            n += 1
            started = time.monotonic()
            try:
                response = await client.post("/answer", json={"program_id": programs[tenant][name], "image": frame})
            except httpx.HTTPError as exc:
                replies.append((name, Reply(type(exc).__name__, time.monotonic() - started, started)))
                continue
            reply = _reply(response, started)
            replies.append((name, reply))
            if reply.status != 200:
                await asyncio.sleep(0.5)

    clients = [
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {keys[tenant]}"}, timeout=120)
        for tenant in programs
    ]
    try:
        await asyncio.gather(
            *(
                caller(client, tenant, i)
                for client, tenant in zip(clients, programs, strict=True)
                for i in range(per_tenant)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    return replies


def probe_memory(
    ctx: Context, tenants: Sequence[str] = ("m1", "m2", "m3"), per_tenant: int = 6, seconds: float = 20.0
) -> dict[str, Any]:
    from fmprog.program.workers import machine_memory, pool_size
    from router.settings import RouterSettings

    defaults = RouterSettings.model_fields
    share = float(os.environ.get("FMPROG_ROUTER_PROGRAM_MEMORY_SHARE", defaults["program_memory_share"].default))
    worker_mb = int(
        os.environ.get("FMPROG_ROUTER_PROGRAM_WORKER_MEMORY_MB", defaults["program_worker_memory_mb"].default)
    )
    workers = int(os.environ.get("FMPROG_ROUTER_PROGRAM_WORKERS", defaults["program_workers"].default))
    router_pid = service_pid(ctx.stack, "router.app")
    programs = {
        tenant: {name: ctx.api(tenant).register(source) for name, source in MEMORY_PROGRAMS.items()}
        for tenant in tenants
    }
    ctx.settle()
    router_before_kb = rss_kb(router_pid)
    with_workers_before_kb = sum(rss_kb(pid) for pid in [router_pid, *descendants(router_pid)])
    with RssSampler(router_pid) as sampler:
        replies = asyncio.run(
            _memory_load(ctx.settings.router_url, ctx.keys, programs, ctx.frames[0], per_tenant, seconds)
        )
    memory = machine_memory() or 0
    budget_kb = share * memory / 1024 + router_before_kb
    statuses = [reply.status for _, reply in replies]
    by_program: dict[str, Counter[str]] = {}
    for name, reply in replies:
        outcome = f"{reply.status} {reply.error_kind}" if reply.status == 200 else str(reply.status)
        by_program.setdefault(name, Counter())[outcome] += 1
    return {
        "tenants": list(tenants),
        "callers_per_tenant": per_tenant,
        "seconds": seconds,
        "requests": len(replies),
        "statuses": status_counts(statuses),
        "server_errors": server_errors(statuses),
        "error_kinds": status_counts(r.error_kind for _, r in replies if r.error_kind),
        "outcomes_by_program": {name: dict(sorted(c.items())) for name, c in by_program.items()},
        "program_memory_share": share,
        "program_worker_memory_mb": worker_mb,
        "expected_pool_size": pool_size(workers, worker_mb, share),
        "machine_memory_mb": round(memory / 2**20),
        "router_rss_before_mb": round(router_before_kb / 1024, 1),
        "router_with_workers_before_mb": round(with_workers_before_kb / 1024, 1),
        "budget_mb": round(budget_kb / 1024),
        "peak_total_mb": round(sampler.peak_total_kb / 1024, 1),
        "peak_single_descendant_mb": round(sampler.peak_process_kb / 1024, 1),
        "peak_workers": sampler.peak_descendants,
        "samples": sampler.samples,
        "descendant_kinds": dict(sampler.kinds.most_common(5)),
    }


# -- 6. policy restart ------------------------------------------------------------------------


def probe_policy_restart(ctx: Context, max_wait_s: float = 90.0) -> dict[str, Any]:
    v = ctx.api("v")
    program = v.register(SMALL, "binary")
    first = v.answer(program, ctx.frames[0])
    if first.status != 200 or first.fallback:
        raise RuntimeError(f"the policy does not decide before the kill: {first.status} {first.body}")
    old_pid = service_pid(ctx.stack, "policy.app")
    replies: list[Reply] = []
    ready_at: list[float] = []
    stop = threading.Event()
    sender_api = Api(ctx.settings.router_url, ctx.keys["v"])

    def send() -> None:
        n = 0
        while not stop.is_set():
            replies.append(sender_api.answer(program, ctx.frames[n % len(ctx.frames)]))
            n += 1
            time.sleep(0.05)

    def watch(killed: float) -> None:
        with httpx.Client(timeout=1) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{ctx.settings.policy_url}/readyz").status_code == 200 and time.monotonic() > killed:
                        ready_at.append(time.monotonic())
                        return
                time.sleep(0.05)

    restarted_before = ctx.stack.output().count("policy restarted")
    sender = threading.Thread(target=send, name="policy-restart-sender", daemon=True)
    sender.start()
    time.sleep(1.0)
    os.kill(old_pid, signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 10
    while alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    watcher = threading.Thread(target=watch, args=(killed,), name="policy-readyz", daemon=True)
    watcher.start()
    decided_at = None
    deadline = killed + max_wait_s
    while time.monotonic() < deadline:
        if ready_at:
            decided = [r for r in list(replies) if r.sent_at > killed and r.status == 200 and r.fallback is False]
            if decided:
                decided_at = decided[0].sent_at + decided[0].seconds
                break
        time.sleep(0.05)
    stop.set()
    sender.join(60)
    watcher.join(5)
    sender_api.close()
    after = [r for r in replies if r.sent_at > killed]
    supervisor = [
        line
        for line in ctx.stack.output().splitlines()
        if "restarting the policy" in line or "policy restarted" in line
    ]
    ready = ready_at[0] if ready_at else None
    return {
        "old_pid": old_pid,
        "restarted_by_supervisor": ctx.stack.output().count("policy restarted") > restarted_before,
        "supervisor_lines": supervisor[-2:],
        "kill_to_ready_s": None if ready is None else round(ready - killed, 2),
        "ready_to_decided_s": None if ready is None or decided_at is None else round(decided_at - ready, 2),
        "kill_to_decided_s": None if decided_at is None else round(decided_at - killed, 2),
        "answers_after_kill": len(after),
        "statuses": status_counts(r.status for r in after),
        "fallback_answers": sum(r.fallback is True for r in after),
        "answer_latency_after_kill": latency_summary([r.seconds for r in after if r.status == 200]),
    }


# -- 7. serve gone ----------------------------------------------------------------------------


def serve_actor_pids(root: int) -> list[int]:
    """The stack's Ray Serve actor processes (replicas, controller, proxy), by their process titles."""
    return [pid for pid in descendants(root) if command_line(pid).startswith(SERVE_ACTORS) and alive(pid)]


def probe_serve_gone(
    ctx: Context, seconds: float = 10.0, every_s: float = 0.5, timeout_s: float = 180.0, tenant: str = "o1"
) -> dict[str, Any]:
    """A frame sent every ``every_s`` for ``seconds`` (whatever became of the ones before: a camera
    does not wait), by a tenant whose quota does not refuse them first, each waited for up to
    ``timeout_s`` (past the router's 60 s backend timeout, and a retry), while the Serve actors are
    killed (until the last reply)."""
    api = ctx.api(tenant)
    program = api.register(SMALL, "binary")
    before = api.answer(program, ctx.frames[0])
    root = ctx.stack.process.pid
    found = {pid: command_line(pid).split(" ")[0] for pid in serve_actor_pids(root)}
    kills: Counter[str] = Counter()
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            for pid in serve_actor_pids(root):
                title = command_line(pid).split(" ")[0]
                if not title.startswith(SERVE_ACTORS):  # gone meanwhile: its pid is not ours to signal
                    continue
                title = title.removeprefix("ray::")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    kills[title.split(":")[0].split(".")[0]] += 1
            stop.wait(0.3)

    thread = threading.Thread(target=killer, name="serve-killer", daemon=True)
    thread.start()
    time.sleep(0.5)
    began = time.monotonic()
    replies: list[Reply] = []

    def send(n: int) -> None:
        caller = Api(ctx.settings.router_url, ctx.keys[tenant], timeout_s=timeout_s)
        try:
            replies.append(caller.answer(program, ctx.frames[n % len(ctx.frames)]))
        finally:
            caller.close()

    senders = []
    for n in range(int(seconds / every_s)):
        wait = began + n * every_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        senders.append(threading.Thread(target=send, args=(n,), daemon=True))
        senders[-1].start()
    for sender in senders:
        sender.join(timeout_s + 10)
    stop.set()
    thread.join(5)
    replies.sort(key=lambda reply: reply.sent_at)

    def outcome(reply: Reply) -> str:
        if reply.status == 503:
            return "503 with Retry-After" if reply.retry_after else "503 without Retry-After"
        if reply.status == 200:
            return f"200 {reply.error_kind or 'answered'}"
        return str(reply.status)

    outcomes = [outcome(r) for r in replies]
    timeline: dict[str, Counter[str]] = {}
    for reply, seen in zip(replies, outcomes, strict=True):
        start = 2 * int(max(0.0, reply.sent_at - began) // 2)
        timeline.setdefault(f"{start}-{start + 2} s", Counter())[seen] += 1
    return {
        "seconds": seconds,
        "tenant": tenant,
        "sent_every_s": every_s,
        "client_timeout_s": timeout_s,
        "before": {"status": before.status, "error_kind": before.error_kind},
        "serve_processes_found": status_counts(found.values()),
        "kills": dict(kills),
        "requests": len(replies),
        "outcomes": status_counts(outcomes),
        "refused_503_with_retry_after": outcomes.count("503 with Retry-After"),
        "refused_503_without_retry_after": outcomes.count("503 without Retry-After"),
        "ok_with_backend_error": outcomes.count("200 backend_error"),
        "no_reply": sum(not isinstance(r.status, int) for r in replies),
        "retry_after_values": status_counts(r.retry_after for r in replies if r.retry_after),
        "latency": latency_summary([r.seconds for r in replies]),
        "replies": [
            [round(r.sent_at - began, 1), round(r.seconds, 1), seen] for r, seen in zip(replies, outcomes, strict=True)
        ],
        "outcomes_by_time_sent": {
            window: dict(counts) for window, counts in sorted(timeline.items(), key=lambda w: int(w[0].split("-")[0]))
        },
        "details": sorted({str((r.body or {}).get("detail"))[:160] for r in replies if r.status not in (200,)})[:5],
    }


# -- schemathesis -----------------------------------------------------------------------------

FUZZ_KEY = "fuzz-key-0123456789abcdef"


class _Detector:
    def detect(self, image: Any, noun: str) -> list[Any]:
        return []


class _VQA:
    def vqa(self, image: Any, question: str) -> str:
        return "yes"


class _LLM:
    def llm(self, prompt: str) -> str:
        return "Paris"


def _fuzz_apps(state: Path) -> dict[str, Any]:
    """The router (on a fake zoo, no policy: its fallback decides) and the policy, as ASGI apps."""
    from fmprog.backends import BackendCatalog, BackendRegistry, BackendSpec, Function
    from policy.app import create_app as create_policy_app
    from policy.settings import PolicySettings
    from router.app import create_app as create_router_app
    from router.settings import RouterSettings

    models = {"detect": _Detector, "vqa": _VQA, "llm": _LLM}
    costs = {"small": 1.0, "large": 10.0}
    specs = [
        BackendSpec(name=f"{function}-{size}", function=Function(function), cost=cost)
        for function in models
        for size, cost in costs.items()
    ]
    registry = BackendRegistry.from_specs(specs, {spec.name: models[spec.function.value]() for spec in specs})
    router_settings = RouterSettings(database=state / "router.db", synthesis_backend=None, api_key=FUZZ_KEY)
    return {
        "router": create_router_app(router_settings, catalog=BackendCatalog(backends=specs), backends=registry),
        "policy": create_policy_app(
            PolicySettings(state_dir=state / "policy", api_key=FUZZ_KEY, train_interval_s=3600)
        ),
    }


@dataclass
class FuzzTally:
    """What one service answered to the generated requests."""

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def record(self, operation: str, status: int | str, body: str) -> None:
        self.sent += 1
        self.statuses[str(status)] += 1
        if (not isinstance(status, int) or status >= 500) and len(self.failures) < 20:
            self.failures.append({"operation": operation, "status": status, "body": body[:200]})

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if not status.isdigit() or int(status) >= 500)


def _fuzz_operation(
    operation: Any, mode: Any, examples: int, round_seed: int, auth: dict[str, str], tally: FuzzTally
) -> None:
    """Up to ``examples`` requests generated for one operation (schemathesis, hypothesis), each
    reply's status recorded in ``tally``; nothing is asserted, so nothing is shrunk or repeated."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    name = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=examples,
        derandomize=False,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(round_seed)
    @given(case=operation.as_strategy(mode))
    def run(case: Any) -> None:
        try:
            response = case.call(headers=auth)
        except Exception as exc:  # the app raised instead of replying: a server error
            tally.record(name, type(exc).__name__, str(exc))
            return
        tally.record(name, response.status_code, response.text)

    run()


def fuzz(requests_per_service: int, state: Path) -> dict[str, Any]:
    """At least ``requests_per_service`` generated requests per service (schemathesis, positive and
    negative cases where the operation has something to break, with the key), in process: how many
    were sent, their statuses, and the 5xx replies. Rounds of a few requests per operation, each
    round with a seed of its own, until enough were sent."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.python import asgi

    report: dict[str, Any] = {"requests_per_service_asked": requests_per_service, "services": {}}
    auth = {"Authorization": f"Bearer {FUZZ_KEY}"}
    apps = _fuzz_apps(state)
    try:
        for service, app in apps.items():
            began = time.monotonic()
            schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)
            operations = []
            for path, methods in app.openapi()["paths"].items():
                for method, operation in methods.items():
                    parameters = operation.get("parameters", [])
                    breakable = "requestBody" in operation or any(p["in"] == "query" for p in parameters)
                    modes = list(GenerationMode) if breakable else [GenerationMode.POSITIVE]
                    operations += [(schema[path][method.upper()], mode) for mode in modes]
            tally = FuzzTally()
            rounds = 0
            while tally.sent < requests_per_service and rounds < 50:
                rounds += 1
                examples = max(1, math.ceil((requests_per_service - tally.sent) / len(operations)))
                for operation, mode in operations:
                    _fuzz_operation(operation, mode, examples, rounds, auth, tally)
            seconds = round(time.monotonic() - began, 1)
            report["services"][service] = {
                "operations": len(operations),
                "rounds": rounds,
                "requests": tally.sent,
                "statuses": dict(sorted(tally.statuses.items())),
                "server_errors": tally.server_errors,
                "failures": tally.failures,
                "seconds": seconds,
            }
            print(f"schemathesis {service}: {tally.sent} requests, {tally.server_errors} 5xx, {seconds} s", flush=True)
    finally:
        asgi.shutdown_lifespans()
    return report


# -- the run ----------------------------------------------------------------------------------

PROBE_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "isolation": probe_isolation,
    "noisy_neighbour": probe_noisy_neighbour,
    "bad_inputs": probe_bad_inputs,
    "overload": probe_overload,
    "memory": probe_memory,
    "policy_restart": probe_policy_restart,
    "serve_gone": probe_serve_gone,
}
_SERVICE_PROBLEM = re.compile(r"Traceback|ERROR|CRITICAL")
_REPLY_5XX = re.compile(r"HTTP/1\.1\" (5\d\d)")


def log_problems(log_dir: Path, service: str) -> dict[str, Any]:
    """What a service's log says went wrong: its error and traceback lines (the first few), and its
    5xx replies by status."""
    log = log_dir / f"{service}.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line[:300] for line in lines if _SERVICE_PROBLEM.search(line)]
    fivexx = Counter(m.group(1) for line in lines if (m := _REPLY_5XX.search(line)))
    return {"error_lines": len(errors), "replies_5xx": dict(sorted(fivexx.items())), "first_errors": errors[:15]}


def router_limits() -> dict[str, Any]:
    """The router's limits this run had: its settings' defaults, FMPROG_ROUTER_* variables of this
    environment (passed on by fmprog up) and the probe's tenant quotas; the program workers this
    machine's memory allows."""
    from fmprog.program.workers import pool_size
    from router.settings import RouterSettings

    settings = RouterSettings(tenant_quotas=TENANT_QUOTAS, synthesis_backend=None)
    fields = {
        "answer_threads",
        "answer_queue",
        "tenant_quota",
        "tenant_quotas",
        "program_workers",
        "program_worker_memory_mb",
        "program_memory_share",
        "policy_probe_s",
        "policy_breaker_failures",
        "backend_timeout_s",
        "backend_breaker_failures",
        "max_answer_bytes",
    }
    limits = settings.model_dump(mode="json", include=fields)
    limits["program_pool_size"] = pool_size(
        settings.program_workers, settings.program_worker_memory_mb, settings.program_memory_share
    )
    return dict(sorted(limits.items()))


def _wait_for_keys(url: str, keys: dict[str, str], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    for key in keys.values():
        while httpx.get(f"{url}/programs", headers={"authorization": f"Bearer {key}"}, timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the router did not take the new keys")
            time.sleep(0.5)


def run_stack(probes: Sequence[str], num_cpus: float) -> dict[str, Any]:
    from launcher.process import StackProcess
    from launcher.settings import StackError, StackSettings

    results: dict[str, Any] = {}
    env = {**os.environ, "FMPROG_ROUTER_TENANT_QUOTAS": json.dumps(TENANT_QUOTAS)}
    with tempfile.TemporaryDirectory(prefix="fmprog-abuse-") as state:
        settings = StackSettings.on_free_ports(
            config=SYNTHETIC, backends=VISION, state_dir=Path(state), num_cpus=num_cpus
        )
        started = time.monotonic()
        stack = StackProcess(settings, env=env)
        stack.start()
        try:
            results["startup_s"] = round(time.monotonic() - started, 1)
            print(f"fmprog up ready in {results['startup_s']} s", flush=True)
            tenants = ["a", "b", "v", "h", *OVERLOAD_TENANTS, "m1", "m2", "m3"]
            keys = {tenant: fmprog_keys_create(settings.state_dir, tenant) for tenant in tenants}
            keys["ops"] = fmprog_keys_create(settings.state_dir, "ops", admin=True)
            _wait_for_keys(settings.router_url, keys)
            ctx = Context(stack, settings, keys, scene_frames())
            timings = {}
            load: dict[str, float] = {}  # others' work on this machine shows here too
            try:
                for name in probes:
                    load[name] = round(os.getloadavg()[0], 2)
                    began = time.monotonic()
                    print(f"-- {name}", flush=True)
                    try:
                        results[name] = PROBE_FUNCTIONS[name](ctx)
                    except Exception as exc:  # one probe failing leaves the others' numbers
                        results[name] = {"failed": f"{type(exc).__name__}: {exc}"}
                    timings[name] = round(time.monotonic() - began, 1)
                    for line in _section_lines(name, results[name]):
                        print(f"   {line}", flush=True)
                    print(f"   ({name} took {timings[name]} s)", flush=True)
                    if name != "serve_gone":
                        ctx.settle(60)
            finally:
                ctx.close()
            results["probe_seconds"] = timings
            results["load_average_1m_at_start"] = load
            results["service_log_problems"] = {
                name: log_problems(settings.log_dir, name) for name in ("router", "policy")
            }
            results["service_restarts"] = [line for line in stack.output().splitlines() if "restart" in line][:10]
        finally:
            try:
                code = stack.stop(timeout_s=90)
                results["stack_stop"] = f"exit code {code}"
            except StackError as exc:
                results["stack_stop"] = str(exc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the results as JSON here (merged into what is there)")
    parser.add_argument("--probes", default=",".join(PROBES), help="comma-separated probes, run in the order above")
    parser.add_argument(
        "--num-cpus", type=float, default=2, help="logical CPUs of the stack's Ray (default: %(default)s)"
    )
    parser.add_argument(
        "--fuzz",
        type=int,
        nargs="?",
        const=10_000,
        help="also fuzz both apps in process with at least N requests each (N: 10000)",
    )
    parser.add_argument(
        "--no-stack", action="store_true", help="run no probe of the stack (with --fuzz: only the fuzzing)"
    )
    args = parser.parse_args()
    probes = [] if args.no_stack else [p.strip() for p in args.probes.split(",") if p.strip()]
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        parser.error(f"unknown probes {unknown}; known: {', '.join(PROBES)}")
    probes = [p for p in PROBES if p in probes]  # serve_gone last, whatever the order asked

    began = time.monotonic()
    results: dict[str, Any] = {}
    if probes:
        results = {"provenance": provenance(), "probes": probes, "num_cpus": args.num_cpus, "backends": VISION}
        results["router_limits"] = router_limits()
        results |= run_stack(probes, args.num_cpus)
        results["duration_s"] = round(time.monotonic() - began, 1)
    if args.fuzz:
        fuzz_began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="fmprog-abuse-fuzz-") as state:
            results["schemathesis"] = {"provenance": provenance(), **fuzz(args.fuzz, Path(state))}
        results["schemathesis"]["duration_s"] = round(time.monotonic() - fuzz_began, 1)
    existing: dict[str, Any] = {}
    if args.out and args.out.exists():
        with contextlib.suppress(ValueError):
            existing = json.loads(args.out.read_text())
    results = merge(existing, results)
    print("\n".join(render(results)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
