"""The whole cluster on localhost, on real video, learning online against a reference (``make demo``).

Starts ``fmprog up`` with the default real-image configuration (fmprog/configs/real.yaml: its vision
backends on Ray Serve, the policy service, the router) on free ports, and registers one query of
the real-video track through the router twice: learning (the ``fast`` policy, at the
configuration's default lambda) and all-dearest (the reference configuration). It streams frames
of OpenCV's ``vtest.avi`` (pedestrians seen by a fixed camera, Debian's opencv-doc) to both through
``POST /answer``, as PNG, and after each answer sends as its label, through ``POST /feedback``, the
reference's answer on that frame as the video track records it (benchmarks/tracks/video: the
program run with the dearest backend at every call). It prints each program's agreement with the
reference and cost per frame, checks that the live all-dearest program agrees with the recorded
reference on every frame, prints what the learned program's log says all-dearest and all-cheapest
would have cost and scored (off-policy estimates), which backends the policy came to choose, the
policy's state and the router's cost metrics. Then it stops the cluster with SIGTERM and checks
that it exited cleanly. Exit code 0 only if all of that worked. It talks to the router through
its Python client, ``fmprog.client.Client``.

    python examples/demo.py [--frames 200] [--query "Is anyone in the bottom half of the frame?"]

Costs are millions of multiply-adds per call (fmprog/configs/real.yaml); at its default lambda of
0.001 an answer's reward (+100 right, -100 wrong) outweighs a call of YOLOv3-tiny at 608 px
(5,944 MMAC: 5.9 reward points), so the dearer detector pays for itself where it changes about
one answer in 34.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.vqa.tracks import TrackQuery, load_open, parse_video_ref
from benchmarks.vqa.video import agreement
from fmprog.backends import Function, load_catalog
from fmprog.backends.config import DEFAULT_CONFIG
from fmprog.client import Answer, Client, FmprogError, Program
from fmprog.images import encode_png
from fmprog.vision.video import SAMPLE_VIDEOS, VideoFrames
from launcher.process import StackProcess
from launcher.settings import StackError, StackSettings

ROOT = Path(__file__).resolve().parents[1]
TRACK = ROOT / "benchmarks" / "tracks" / "video"
QUERY = "Is anyone in the bottom half of the frame?"


def track_query(query: str) -> TrackQuery:
    """The video track's query: its program, frames (in the camera's order) and reference answers."""
    for found in load_open(TRACK, "video", shuffle=False).queries:
        if found.query == query:
            return found
    raise RuntimeError(f"the video track ({TRACK}) has no query {query!r}")


def vision_backends(config: str) -> list[str]:
    """The configuration's detect and vqa backends: what the video's programs call."""
    catalog = load_catalog(config)
    return [spec.name for spec in catalog.backends if spec.function in (Function.detect, Function.vqa)]


@dataclass(frozen=True)
class Answered:
    """One program's answer to one frame, how long ``POST /answer`` took, and the reference's label
    sent for it with the reward it earned."""

    result: Answer
    seconds: float
    reward: float
    reference: str


def policy_state(policy_url: str, policy_key: str, program_id: str) -> dict[str, Any]:
    """A program's state on the policy service (``GET /policies/{id}``, with the policy's key): the
    policy's own API, not the router's, so plain HTTP, failing loudly on any unexpected status."""
    url = f"{policy_url}/policies/{program_id}"
    response = httpx.get(url, headers={"Authorization": f"Bearer {policy_key}"}, timeout=120)
    if response.status_code >= 400:
        raise RuntimeError(f"GET {url}: HTTP {response.status_code}: {response.text}")
    return response.json()


def dearest_decision(program: Program) -> dict[str, str]:
    """The dearest candidate of every call site."""
    return {site.id: max(site.candidates, key=lambda c: c.cost).name for site in program.call_sites}


def stream(
    fm: Client, programs: dict[str, Program], frames: list[tuple[int, Any]], labels: list[str]
) -> dict[str, list[Answered]]:
    """Answer every frame with every program and send its reference label right after each answer."""
    results: dict[str, list[Answered]] = {name: [] for name in programs}
    started = time.perf_counter()
    for n, ((index, pixels), label) in enumerate(zip(frames, labels, strict=True), 1):
        image = encode_png(pixels)  # once per frame, for both programs
        for name, program in programs.items():
            start = time.perf_counter()
            answer = fm.answer(program.id, image, frame_id=f"vtest-{index}")
            seconds = time.perf_counter() - start
            reward = fm.feedback(answer.decision_id, label).reward
            results[name].append(Answered(answer, seconds, reward, label))
        if n % 50 == 0 or n == len(frames):
            print(f"  {n:>4} frames  {time.perf_counter() - started:6.1f} s", flush=True)
    return results


def agreed(answers: list[Answered]) -> float:
    """The share of answers that agree with the reference's."""
    return agreement([str(a.result.answer) for a in answers], [a.reference for a in answers])


def print_quality_and_cost(query: str, results: dict[str, list[Answered]]) -> None:
    labels = [a.reference for a in next(iter(results.values()))]
    print(f"\n{query} {len(labels)} frames; the reference says: {dict(Counter(labels))}")
    print(f"\n{'program':<36} {'agreement':>9} {'cost/frame':>11} {'ms/frame':>9} {'fallbacks':>10}")
    cost = {}
    for name, answers in results.items():
        n = len(answers)
        cost[name] = sum(a.result.cost for a in answers) / n
        ms = 1000 * sum(a.seconds for a in answers) / n
        fallbacks = sum(a.result.fallback for a in answers)
        print(f"{name:<36} {agreed(answers):>9.3f} {cost[name]:>11.0f} {ms:>9.1f} {fallbacks:>10}")
    learned, dearest = list(results)
    if agreed(results[dearest]) != 1.0:
        raise RuntimeError("the live all-dearest program disagrees with the recorded reference on some frames")
    saving = 100 * (1 - cost[learned] / cost[dearest])
    print(f"\nthe learned program costs {saving:.1f}% less than the reference and agrees with it on "
          f"{100 * agreed(results[learned]):.1f}% of frames")  # fmt: skip


def print_off_policy(fm: Client, learned: Program, results: dict[str, list[Answered]]) -> None:
    """What the learned program's log says all-dearest and all-cheapest would have cost and scored
    (``POST /programs/{id}/evaluate``), beside the all-dearest program's live run."""
    report = fm.evaluate(learned.id, ["largest", "cheapest"])
    live = list(results.values())[1]
    print(f"\noff-policy estimates from the learned program's {report.labelled} logged decisions")
    print(f"{'target':<16} {'estimator':<9} {'agreement':>9} {'cost/frame':>11} {'matched':>8} {'mean weight':>12}")
    for evaluation in report.evaluations:
        for name in ("ips", "snips", "dr"):
            estimate = evaluation[name]
            accuracy = "n/a" if estimate["accuracy"] is None else f"{estimate['accuracy']:.3f}"
            cost = "n/a" if estimate["cost_per_frame"] is None else f"{estimate['cost_per_frame']:.0f}"
            print(
                f"{evaluation['target']:<16} {name:<9} {accuracy:>9} {cost:>11} {evaluation['matched']:>8} "
                f"{evaluation['mean_weight']:>12.3f}"
            )
    live_cost = sum(a.result.cost for a in live) / len(live)
    print(f"{'static-largest':<16} {'live':<9} {agreed(live):>9.3f} {live_cost:>11.0f}   (the all-dearest program)")


def print_what_it_learned(fm: Client, program: Program, answers: list[Answered]) -> None:
    """Which backend each call site's calls went to, early and late in the stream (the late share
    as the router reports it, ``GET /programs/{id}/policy``, checked against the answers' traces)."""
    third = len(answers) // 3
    early, late = answers[:third], answers[-third:]

    def shares(subset: list[Answered], site: str) -> Counter:
        calls = [c["backend"] for a in subset for c in a.result.trace if c["site"] == site and c["attempt"] == 1]
        return Counter({backend: n / len(calls) for backend, n in Counter(calls).items()}) if calls else Counter()

    view = fm.policy_view(program.id, last=third)
    if view["decisions"] != third:
        raise RuntimeError(f"the router's policy view read {view['decisions']} decisions, not {third}")
    print("\nwhat it learned: each call site's share of calls per backend")
    for site in view["sites"]:
        counted = Counter()
        for bucket in site["buckets"]:
            for b in bucket["backends"]:
                counted[b["backend"]] += b["calls"]
        reported = {name: n / site["calls"] for name, n in counted.items()} if site["calls"] else {}
        traced = shares(late, site["site"])
        if any(not math.isclose(reported.get(k, 0.0), traced.get(k, 0.0)) for k in set(reported) | set(traced)):
            raise RuntimeError(f"{site['site']}: the router's policy view says {reported}, the answers {dict(traced)}")
        names = sorted(set(reported) | set(shares(early, site["site"])))
        first = shares(early, site["site"])
        print(f"  {site['site']:<22} first third: " + ", ".join(f"{n} {first.get(n, 0):.2f}" for n in names))
        print(f"  {'':<22} last third:  " + ", ".join(f"{n} {reported.get(n, 0):.2f}" for n in names))
    early_cost, late_cost = (sum(a.result.cost for a in part) / len(part) for part in (early, late))
    print(f"cost per frame: first third {early_cost:.0f}, last third {late_cost:.0f}")


def print_policy_state(policy_url: str, policy_key: str, programs: dict[str, Program], frames: int) -> None:
    print("\npolicy state (GET /policies/{id} on the policy service)")
    for name, program in programs.items():
        state = policy_state(policy_url, policy_key, program.id)
        observed, pending = state["observed"], state["pending"]
        print(f"  {name:<36} algorithm {state['algorithm']:<7} observed {observed:>4}  pending {pending}")
        if state["observed"] != frames:
            raise RuntimeError(f"the policy of {name!r} observed {state['observed']} of {frames} labels")


def print_router_metrics(fm: Client, programs: dict[str, Program], results: dict[str, list[Answered]]) -> None:
    """fmprog_cost_total by backend, checked against the costs the answers reported."""
    print("\nrouter metrics: fmprog_cost_total by backend (millions of multiply-adds)")
    text = fm.metrics()
    samples = [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]
    for name, program in programs.items():
        mine = [(metric, labels, value) for metric, labels, value in samples if labels.get("program") == program.id]
        per_backend: dict[str, float] = defaultdict(float)
        for metric, labels, value in mine:
            if metric == "fmprog_cost_total":
                per_backend[labels["backend"]] += value
        total, traced = sum(per_backend.values()), sum(a.result.cost for a in results[name])
        if abs(total - traced) > 1e-6 * max(1.0, traced):
            raise RuntimeError(f"{name}: the router's cost counter says {total}, the answers' traces {traced}")
        print(f"  {name:<36} " + "  ".join(f"{b} {v:.0f}" for b, v in sorted(per_backend.items())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="the first N frames of the video (at most 795)")
    parser.add_argument("--query", default=QUERY, help="a query of the video track (benchmarks/tracks/video)")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--videos-root", type=Path, default=SAMPLE_VIDEOS)
    args = parser.parse_args()
    if args.frames < 30:
        parser.error("--frames must be at least 30")
    query = track_query(args.query)
    source, labels = query.program, query.labels
    refs = [parse_video_ref(str(ref)) for ref in query.frames]
    video = VideoFrames(args.videos_root / refs[0][0])
    count = min(args.frames, len(refs))
    frames = [(index, video[index]) for _, index in refs[:count]]

    state_dir = Path(tempfile.mkdtemp(prefix="fmprog-demo-"))
    backends = vision_backends(args.config)
    settings = StackSettings.on_free_ports(config=args.config, backends=backends, state_dir=state_dir)
    print(f"fmprog up, state in {state_dir}", flush=True)
    started = time.perf_counter()
    try:
        with StackProcess(settings, echo=lambda line: print(f"  [fmprog up] {line}", flush=True)) as stack:
            print(f"cluster ready after {time.perf_counter() - started:.1f} s\n", flush=True)
            key = settings.api_key.get_secret_value() if settings.api_key else ""  # "": no key, whatever the shell has
            policy_key = settings.policy_api_key.get_secret_value()
            with Client(settings.router_url, api_key=key, timeout_s=120) as fm:
                learned = fm.register(source, kind="open", algorithm="fast")
                dearest = fm.register(
                    source, kind="open", lambda_=0, algorithm="static", hyperparameters={"mode": "largest"}
                )
                learned_name = f"learned (fast, lambda {learned.lambda_:g})"
                programs = {learned_name: learned, "all dearest (the reference)": dearest}
                for site in learned.call_sites:
                    candidates = ", ".join(f"{c.name} ({c.cost:g})" for c in site.candidates)
                    print(f"call site {site.id:<20} {site.source:<32} {candidates}")
                for warning in learned.warnings:
                    print(f"warning: {warning}")
                print(f"\nstreaming {count} frames of vtest.avi to both programs, the reference's answer as each label")
                stream_start = time.perf_counter()
                results = stream(fm, programs, frames, labels[:count])
                stream_s = time.perf_counter() - stream_start
                reference = results["all dearest (the reference)"]
                if any(a.result.decision != dearest_decision(learned) for a in reference):
                    raise RuntimeError("the all-dearest program answered with another decision")
                print_quality_and_cost(args.query, results)
                print_off_policy(fm, learned, results)
                print_what_it_learned(fm, learned, results[learned_name])
                print_policy_state(settings.policy_url, policy_key, programs, count)
                print_router_metrics(fm, programs, results)
            print("\nstopping the cluster (SIGTERM)", flush=True)
            code = stack.stop()
        if code != 0:
            raise RuntimeError(f"fmprog up exited with code {code}")
    except (StackError, RuntimeError, FmprogError, httpx.HTTPError) as exc:
        print(f"\ndemo failed: {exc}\nstate and logs kept in {state_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(state_dir, ignore_errors=True)
    total_s = time.perf_counter() - started
    print(f"fmprog up exited with code 0; streaming took {stream_s:.0f} s, {total_s:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
