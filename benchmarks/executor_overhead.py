"""Executor overhead per run: a 4-call-site program against zero-cost, instant backends.

Prints the per-run time of the sandboxed executor and, for scale, of the same program run as
plain Python with the same backends (no validation, guards or trace). Both are measured in the
same process, interleaved, so their ratio is meaningful on a noisy machine.

Then the cost of deciding each call when it runs: the same program under a decider object that
makes the same choices as the fixed decision (so the backends do the same work), measured
interleaved with the fixed decision; the difference of the medians, divided by the 4 invocations,
is what asking a decider costs per invocation (building the context, the call, checking the
choice, recording the features in the trace).

Last, the policy's gates: the same runs under a ``GateDecider`` whose gates score two candidates
per call site and an escalation gate at each VQA call (that never fires, so the backends still do
the same work); the difference to the decider object, per invocation, is what evaluating the gates
costs, and a loop over one context times ``decide`` plus ``escalate`` alone.

    python -m benchmarks.executor_overhead [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fmprog.backends import BackendRegistry, BackendSpec, Detection, Function
from fmprog.contract import CONTEXT_FEATURES, ESCALATION_FEATURES, SiteGate
from fmprog.program import Decider, EarlierOutput, Executor, GateDecider, InvocationContext, compile_program

PROGRAM = """
def execute_command(image):
    image_patch = ImagePatch(image)
    people = image_patch.find("person")
    if not people:
        return "no"
    people.sort(key=lambda p: p.horizontal_center)
    if not image_patch.exists("bicycle"):
        return "no"
    riding = people[0].verify_property("person", "riding a bicycle")
    color = people[0].query("What color is the shirt?")
    return bool_to_yesno(riding and color == "red")
"""


class InstantDetector:
    def detect(self, image, noun):
        return [Detection((4.0, 4.0, 20.0, 30.0), 0.9), Detection((30.0, 2.0, 50.0, 40.0), 0.7)]


class InstantVQA:
    def vqa(self, image, question):
        return "yes" if question.startswith("Is") else "red"


class MappingDecider(Decider):
    """The fixed decision asked as a decider: the same choices, decided at each invocation."""

    def __init__(self, decision: dict[str, str]):
        self.decision = decision

    def decide(self, context: InvocationContext) -> str:
        return self.decision[context.site_id]


def _plain_python(image: np.ndarray, detector: InstantDetector, vqa: InstantVQA) -> str:
    """The same program as direct calls, for scale."""
    people = detector.detect(image, "person")
    people = sorted(people, key=lambda d: (d.box[0] + d.box[2]) / 2)
    if not people or not detector.detect(image, "bicycle"):
        return "no"
    x0, y0, x1, y1 = (round(v) for v in people[0].box)
    crop = image[y0:y1, x0:x1]
    riding = "yes" in vqa.vqa(crop, "Is this person riding a bicycle?")
    color = vqa.vqa(crop, "What color is the shirt?")
    return "yes" if riding and color == "red" else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()

    specs = [
        BackendSpec(name="detect-zero", function=Function.detect, cost=1),
        BackendSpec(name="vqa-zero", function=Function.vqa, cost=1),
        BackendSpec(name="detect-other", function=Function.detect, cost=2),
        BackendSpec(name="vqa-other", function=Function.vqa, cost=2),
    ]
    detector, vqa = InstantDetector(), InstantVQA()
    models = {"detect-zero": detector, "vqa-zero": vqa, "detect-other": detector, "vqa-other": vqa}
    executor = Executor(BackendRegistry.from_specs(specs, models))
    program = compile_program(PROGRAM)
    decision = {s.id: "detect-zero" if s.function == Function.detect else "vqa-zero" for s in program.call_sites}
    image = np.zeros((64, 64, 3), np.uint8)
    assert executor.run(program, image, decision).answer == "yes"

    decider = MappingDecider(decision)
    decided = executor.run(program, image, decider)
    assert decided.answer == "yes" and all(i.features is not None for i in decided.invocations)

    gated_decider = GateDecider(_gates(program, decision), decision)
    gated_trace = executor.run(program, image, gated_decider)
    assert [i.backend for i in gated_trace.invocations] == [i.backend for i in decided.invocations]

    sandboxed, plain, lazy, gated = [], [], [], []
    for _ in range(200):  # warm-up
        executor.run(program, image, decision)
        _plain_python(image, detector, vqa)
        executor.run(program, image, decider)
        executor.run(program, image, GateDecider(_gates(program, decision), decision))
    gates = _gates(program, decision)
    for _ in range(args.runs):
        t0 = time.perf_counter()
        trace = executor.run(program, image, decision)
        t1 = time.perf_counter()
        _plain_python(image, detector, vqa)
        t2 = time.perf_counter()
        executor.run(program, image, decider)
        t3 = time.perf_counter()
        executor.run(program, image, GateDecider(gates, decision))
        t4 = time.perf_counter()
        sandboxed.append(t1 - t0)
        plain.append(t2 - t1)
        lazy.append(t3 - t2)
        gated.append(t4 - t3)
    assert len(trace.invocations) == 4 and trace.error is None

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    def row(name: str, xs: list[float]) -> str:
        xs = sorted(xs)
        p50, p99 = xs[len(xs) // 2], xs[int(len(xs) * 0.99)]
        return f"{name:<28} mean {statistics.fmean(xs) * 1e3:7.4f} ms  p50 {p50 * 1e3:7.4f} ms  p99 {p99 * 1e3:7.4f} ms"

    print(f"executor overhead, {len(program.call_sites)} call sites, 4 invocations, {args.runs} runs")
    print(row("sandboxed executor", sandboxed))
    print(row("plain python (for scale)", plain))
    print(f"ratio of medians: {sorted(sandboxed)[len(sandboxed) // 2] / sorted(plain)[len(plain) // 2]:.1f}x")
    print("target: under 0.5 ms per run for the sandboxed executor")
    print()
    n = len(trace.invocations)
    print(f"deciding each call when it runs, {n} invocations per run, same runs")
    print(row("fixed decision (mapping)", sandboxed))
    print(row("decider object", lazy))
    per_call = (median(lazy) - median(sandboxed)) / n
    print(f"asking a decider, per invocation: {per_call * 1e3:.4f} ms (difference of medians / {n})")
    print("target: under 0.1 ms per invocation")
    print()
    print(f"the policy's gates (two candidates per site, an escalation gate at each VQA call), {n} invocations per run")
    print(row("gate decider", gated))
    gate_call = (median(gated) - median(sandboxed)) / n
    print(f"deciding by gates, per invocation: {gate_call * 1e3:.4f} ms (difference of medians to the mapping / {n})")
    print(f"of which evaluating the gates: {(median(gated) - median(lazy)) / n * 1e3:.4f} ms (to the decider object)")
    alone = _gate_alone(gates, decision, args.runs)
    print(row("decide + escalate alone", alone))
    print("target: under 0.1 ms p50 per invocation")


def _gates(program, decision: dict[str, str]) -> dict[str, SiteGate]:
    """Gates that make the fixed decision's choices: the decided backend scores 1, the other 0;
    VQA calls have an escalation gate that scores -1 (never re-asks)."""
    gates = {}
    n, m = len(CONTEXT_FEATURES), len(ESCALATION_FEATURES)
    for site in program.call_sites:
        other = "detect-other" if site.function == Function.detect else "vqa-other"
        choice = {decision[site.id]: [1.0] + [0.1] * (n - 1), other: [0.0] * n}
        if site.function == Function.vqa:
            gates[site.id] = SiteGate(choice=choice, escalate_to=other, escalation=[-1.0] + [0.0] * (m - 1))
        else:
            gates[site.id] = SiteGate(choice=choice)
    return gates


def _gate_alone(gates: dict[str, SiteGate], decision: dict[str, str], runs: int) -> list[float]:
    """``decide`` then ``escalate`` on one VQA context with three earlier outputs, timed alone."""
    site = next(s for s, g in gates.items() if g.escalate_to is not None)
    earlier = (
        EarlierOutput("find", Function.detect, "detect-zero", boxes=2, top_score=0.9),
        EarlierOutput("exists", Function.detect, "detect-zero", boxes=2, top_score=0.9),
        EarlierOutput("verify", Function.vqa, "vqa-zero", answer="yes"),
    )
    context = InvocationContext(
        site_id=site, function=Function.vqa, method="query", index=3, site_calls=0, box=(4, 4, 20, 30),
        area=0.1, score=0.9, earlier=earlier, sites_left=0,
    )  # fmt: skip
    decider = GateDecider(gates, decision)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        decider.decide(context)
        decider.escalate(context, "red")
        times.append(time.perf_counter() - t0)
    return times


if __name__ == "__main__":
    main()
