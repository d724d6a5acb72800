"""The whole cluster on localhost, learning online from feedback (``make demo``).

Starts ``fmprog up`` (Ray Serve with the CPU zoo's vision backends, the policy service, the
router) on free ports, registers examples/programs/triangle_left_of_circle.py twice through the
router: with a learning policy (``fast``) and as the all-largest static program. It streams
generated frames (easy, medium and hard) to both through ``POST /answer``, sends each frame's
label through ``POST /feedback``, and prints accuracy, F1 on "yes", cost per frame, what the
learned program's log says all-largest and all-cheapest would have cost and scored (off-policy
estimates, beside the all-largest program's live run), what the policy learned, the policy's
state and the router's cost metrics. Then it stops the cluster with
SIGTERM and checks that it exited cleanly. Exit code 0 only if all of that worked.

    python examples/demo.py [--frames 300] [--lambda 100] [--backends all]

Costs are millions of parameters per call (deploy/config/cpu.yaml). The router scores answers
with the authors' binary rewards (a true positive +1000, a false negative or positive -100, a
true negative +1); ``lambda`` weighs cost against them, so at lambda 100 a large backend must
avoid about one mistake in 20 of the frames it runs on to pay for itself.
"""

from __future__ import annotations

import argparse
import base64
import math
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fmprog.images import encode_png
from fmprog.scene import Scene, scene_stream
from launcher.process import StackProcess
from launcher.settings import StackError, StackSettings

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "examples" / "programs" / "triangle_left_of_circle.py"
VISION = ["detect-small", "detect-large", "vqa-small", "vqa-large"]
MIX = {"easy": 0.3, "medium": 0.35, "hard": 0.35}


def truth(scene: Scene) -> str:
    """Is there a triangle left of a circle? (by the centres of the generated objects)"""
    triangles = [o for o in scene.objects if o.shape == "triangle"]
    circles = [o for o in scene.objects if o.shape == "circle"]
    return "yes" if any(t.center[0] < c.center[0] for t in triangles for c in circles) else "no"


def f1_yes(answers: list[Any], truths: list[str]) -> float:
    pairs = list(zip(answers, truths, strict=True))
    tp = sum(a == t == "yes" for a, t in pairs)
    fp = sum(a == "yes" != t for a, t in pairs)
    fn = sum(t == "yes" != a for a, t in pairs)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


class Client:
    """The router's and the policy's HTTP APIs, failing loudly on any unexpected status."""

    def __init__(self, router: str, policy: str, policy_key: str):
        self.router, self.policy = router, policy
        self.http = httpx.Client(timeout=60)
        self.policy_headers = {"Authorization": f"Bearer {policy_key}"}  # the policy's routes need its key

    def call(self, method: str, url: str, **kwargs: Any) -> Any:
        if url.startswith(self.policy):
            kwargs["headers"] = self.policy_headers
        response = self.http.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {url}: HTTP {response.status_code}: {response.text}")
        return response.json() if response.content else None

    def register(self, source: str, **fields: Any) -> dict:
        return self.call("POST", f"{self.router}/programs", json={"source": source, "kind": "binary", **fields})

    def metrics(self, base: str) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of a service's Prometheus page: name, labels, value."""
        text = self.http.get(f"{base}/metrics").text
        return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def largest_decision(program: dict) -> dict[str, str]:
    """The most expensive candidate of every call site."""
    return {site["id"]: max(site["candidates"], key=lambda c: c["cost"])["name"] for site in program["call_sites"]}


def stream(client: Client, programs: dict[str, dict], scenes: list[Scene]) -> dict[str, list[dict]]:
    """Answer every frame with every program and send its label right after each answer."""
    results: dict[str, list[dict]] = {name: [] for name in programs}
    started = time.perf_counter()
    for i, scene in enumerate(scenes, 1):
        image = base64.b64encode(encode_png(scene.image)).decode("ascii")
        label = truth(scene)
        for name, program in programs.items():
            body = {"program_id": program["id"], "image": image, "frame_id": f"frame-{i}"}
            start = time.perf_counter()
            answer = client.call("POST", f"{client.router}/answer", json=body)
            answer["seconds"] = time.perf_counter() - start
            feedback = {"decision_id": answer["decision_id"], "label": label}
            answer["reward"] = client.call("POST", f"{client.router}/feedback", json=feedback)["reward"]
            answer["difficulty"], answer["truth"] = scene.difficulty, label
            results[name].append(answer)
        if i % 50 == 0 or i == len(scenes):
            print(f"  {i:>4} frames  {time.perf_counter() - started:6.1f} s", flush=True)
    return results


def print_quality_and_cost(results: dict[str, list[dict]]) -> None:
    truths = [a["truth"] for a in next(iter(results.values()))]
    n = len(truths)
    print(f"\nIs there a triangle left of a circle? {n} frames, {truths.count('yes')} of them 'yes'")
    print(f"\n{'program':<34} {'accuracy':>8} {'F1 yes':>7} {'cost/frame':>11} {'ms/frame':>9} {'fallbacks':>10}")
    accuracy, cost = {}, {}
    for name, answers in results.items():
        said = [a["answer"] for a in answers]
        accuracy[name] = sum(a == t for a, t in zip(said, truths, strict=True)) / n
        cost[name] = sum(a["cost"] for a in answers) / n
        f1, ms = f1_yes(said, truths), 1000 * sum(a["seconds"] for a in answers) / n
        fallbacks = sum(a["fallback"] for a in answers)
        print(f"{name:<34} {accuracy[name]:>8.3f} {f1:>7.3f} {cost[name]:>11.4f} {ms:>9.1f} {fallbacks:>10}")
    learned, largest = list(results)
    saving = 100 * (1 - cost[learned] / cost[largest])
    change = 100 * (accuracy[learned] - accuracy[largest])
    print(f"\nthe learned program costs {saving:.1f}% less than all-largest, accuracy {change:+.1f} points")


def print_off_policy(client: Client, learned: dict, results: dict[str, list[dict]]) -> None:
    """What the learned program's log says all-largest would have cost and scored (the router's
    off-policy estimates, ``POST /programs/{id}/evaluate``), beside the all-largest program's live run."""
    body = {"targets": [{"kind": "static", "backends": "largest"}, {"kind": "static", "backends": "cheapest"}]}
    report = client.call("POST", f"{client.router}/programs/{learned['id']}/evaluate", json=body)
    live = results["all largest (static)"]
    n = len(live)
    live_cost = sum(a["cost"] for a in live) / n
    live_accuracy = sum(a["answer"] == a["truth"] for a in live) / n
    print(f"\noff-policy estimates from the learned program's {report['labelled']} logged decisions")
    print(f"{'target':<16} {'estimator':<9} {'accuracy':>8} {'cost/frame':>11} {'matched':>8} {'mean weight':>12}")
    for evaluation in report["evaluations"]:
        for name in ("ips", "snips", "dr"):
            estimate = evaluation[name]
            accuracy = "n/a" if estimate["accuracy"] is None else f"{estimate['accuracy']:.3f}"
            cost = "n/a" if estimate["cost_per_frame"] is None else f"{estimate['cost_per_frame']:.4f}"
            print(
                f"{evaluation['target']:<16} {name:<9} {accuracy:>8} {cost:>11} {evaluation['matched']:>8} "
                f"{evaluation['mean_weight']:>12.3f}"
            )
    print(f"{'static-largest':<16} {'live':<9} {live_accuracy:>8.3f} {live_cost:>11.4f}   (the all-largest program)")


def large_share(client: Client, program: dict, last: int, large: set[str]) -> dict[str, float]:
    """Per call site, the share of its calls in the program's last ``last`` decisions that went
    to a large backend, as the router reports it (``GET /programs/{id}/policy``), over all buckets."""
    view = client.call("GET", f"{client.router}/programs/{program['id']}/policy", params={"last": last})
    if view["decisions"] != last or view["fallback_decisions"]:
        raise RuntimeError(f"the router's policy view read {view['decisions']} decisions, not {last}, or fallbacks")
    shares = {}
    for site in view["sites"]:
        to_large = sum(b["calls"] for bucket in site["buckets"] for b in bucket["backends"] if b["backend"] in large)
        shares[site["site"]] = to_large / site["calls"] if site["calls"] else float("nan")
    return shares


def print_what_it_learned(client: Client, program: dict, answers: list[dict], large: set[str]) -> None:
    """The share of calls to a large backend per call site: early and late in the stream (the
    late one as the router reports it, checked against the answers' traces), and by difficulty
    once the policy has seen a third of the stream (the router does not know the difficulty:
    counted here from the answers' traces)."""

    def share(subset: list[dict], site: str) -> float:
        decided = (c for a in subset for c in a["trace"] if c["attempt"] == 1 and c["fallback_from"] is None)
        calls = [c["backend"] for c in decided if c["site"] == site and "escalated_from" not in c]
        return sum(backend in large for backend in calls) / len(calls) if calls else float("nan")

    third = len(answers) // 3
    early, late, after_first = answers[:third], answers[-third:], answers[third:]
    recent = large_share(client, program, third, large)
    for site, value in recent.items():  # the router counts what the answers' traces say
        if not math.isclose(value, share(late, site)) and not (math.isnan(value) and math.isnan(share(late, site))):
            raise RuntimeError(f"{site}: the router's policy view says {value}, the answers {share(late, site)}")
    print("\nwhat it learned: the share of calls to a large backend")
    print(f"{'':<20} {'in the stream':^23}   {'by difficulty, after the first third':^36}")
    print(f"{'call site':<20} {'first third':>11} {'last third':>11}   {'easy':>10} {'medium':>12} {'hard':>12}")
    for site in (s["id"] for s in program["call_sites"]):
        levels = [share([a for a in after_first if a["difficulty"] == d], site) for d in ("easy", "medium", "hard")]
        row = f"{site:<20} {share(early, site):>11.2f} {recent[site]:>11.2f}   "
        print(row + " ".join(f"{x:>10.2f}  " for x in levels))
    early_cost, late_cost = (sum(a["cost"] for a in part) / len(part) for part in (early, late))
    print(f"cost per frame: first third {early_cost:.4f}, last third {late_cost:.4f}")


def print_policy_state(client: Client, programs: dict[str, dict], frames: int) -> None:
    print("\npolicy state (GET /policies/{id} on the policy service)")
    for name, program in programs.items():
        state = client.call("GET", f"{client.policy}/policies/{program['id']}")
        print(
            f"  {name:<32} algorithm {state['algorithm']:<7} observed {state['observed']:>4}  "
            f"pending {state['pending']}  trained steps {state['trained_steps']}"
        )
        if state["observed"] != frames:
            raise RuntimeError(f"the policy of {name!r} observed {state['observed']} of {frames} labels")
    print("  (fast updates its posterior in closed form on every label; it takes no gradient steps)")


def print_router_metrics(client: Client, programs: dict[str, dict], results: dict[str, list[dict]]) -> None:
    """fmprog_cost_total by backend, checked against the costs the answers reported."""
    print("\nrouter metrics: fmprog_cost_total by backend (millions of parameters)")
    samples = client.metrics(client.router)
    for name, program in programs.items():
        mine = [(metric, labels, value) for metric, labels, value in samples if labels.get("program") == program["id"]]
        per_backend: dict[str, float] = defaultdict(float)
        for metric, labels, value in mine:
            if metric == "fmprog_cost_total":
                per_backend[labels["backend"]] += value
        total, traced = sum(per_backend.values()), sum(a["cost"] for a in results[name])
        if abs(total - traced) > 1e-6 * max(1.0, traced):
            raise RuntimeError(f"{name}: the router's cost counter says {total}, the answers' traces {traced}")
        counts = {tags["outcome"]: value for metric, tags, value in mine if metric == "fmprog_program_labels_total"}
        accuracy = counts["right"] / (counts["right"] + counts["wrong"])  # the store's label counts
        print(f"  {name:<32} " + "  ".join(f"{b} {v:.3f}" for b, v in sorted(per_backend.items())))
        print(f"  {'':<32} total {total:.3f} (= the answers' traces), accuracy of the labels {accuracy:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--lambda", dest="lam", type=float, default=100.0, help="cost weight of the learned program")
    parser.add_argument("--seed", type=int, default=7, help="seed of the frame stream")
    parser.add_argument("--config", default=str(ROOT / "deploy" / "config" / "cpu.yaml"))
    parser.add_argument("--backends", default=",".join(VISION), help="'all', or a comma-separated subset")
    args = parser.parse_args()
    if args.frames < 30:
        parser.error("--frames must be at least 30")

    state_dir = Path(tempfile.mkdtemp(prefix="fmprog-demo-"))
    settings = StackSettings.on_free_ports(
        config=args.config,
        backends=None if args.backends == "all" else args.backends.split(","),
        state_dir=state_dir,
    )
    print(f"fmprog up, state in {state_dir}", flush=True)
    started = time.perf_counter()
    try:
        with StackProcess(settings, echo=lambda line: print(f"  [fmprog up] {line}", flush=True)) as stack:
            print(f"cluster ready after {time.perf_counter() - started:.1f} s\n", flush=True)
            client = Client(settings.router_url, settings.policy_url, settings.policy_api_key.get_secret_value())
            source = PROGRAM.read_text()
            learned = client.register(source, **{"lambda": args.lam, "algorithm": "fast"})
            largest_of = {site["function"]: largest_decision(learned)[site["id"]] for site in learned["call_sites"]}
            static = {"lambda": 0, "algorithm": "static", "hyperparameters": {"mode": "largest"}}
            largest = client.register(source, **static)
            learned_name = f"learned (fast, lambda {args.lam:g})"
            programs = {learned_name: learned, "all largest (static)": largest}
            for site in learned["call_sites"]:
                candidates = ", ".join(f"{c['name']} ({c['cost']:g})" for c in site["candidates"])
                print(f"call site {site['id']:<20} {site['source']:<45} {candidates}")
            scenes = list(scene_stream(seed=args.seed, count=args.frames, mix=MIX))
            print(f"\nstreaming {len(scenes)} frames to both programs, with feedback after each answer", flush=True)
            stream_start = time.perf_counter()
            results = stream(client, programs, scenes)
            stream_s = time.perf_counter() - stream_start
            if any(a["decision"] != largest_decision(learned) for a in results["all largest (static)"]):
                raise RuntimeError("the all-largest program answered with another decision")
            print_quality_and_cost(results)
            print_off_policy(client, learned, results)
            print_what_it_learned(client, learned, results[learned_name], set(largest_of.values()))
            print_policy_state(client, programs, len(scenes))
            print_router_metrics(client, programs, results)
            print("\nstopping the cluster (SIGTERM)", flush=True)
            code = stack.stop()
        if code != 0:
            raise RuntimeError(f"fmprog up exited with code {code}")
    except (StackError, RuntimeError, httpx.HTTPError) as exc:
        print(f"\ndemo failed: {exc}\nstate and logs kept in {state_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(state_dir, ignore_errors=True)
    total_s = time.perf_counter() - started
    print(f"fmprog up exited with code 0; streaming took {stream_s:.0f} s, {total_s:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
