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

    python -m benchmarks.executor_overhead [--runs N] [--out benchmarks/results/executor_overhead.json]

Writes every number it prints, and its provenance, to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import provenance
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


OUT = Path("benchmarks/results/executor_overhead.json")
TARGET_RUN_MS = 0.5  # the sandboxed executor, per run
TARGET_INVOCATION_MS = 0.1  # asking a decider or evaluating gates, per invocation


def summary_ms(xs: list[float]) -> dict[str, float]:
    """Mean, p50 and p99 of times in seconds, in milliseconds."""
    xs = sorted(xs)
    return {
        "mean": round(statistics.fmean(xs) * 1e3, 4),
        "p50": round(xs[len(xs) // 2] * 1e3, 4),
        "p99": round(xs[int(len(xs) * 0.99)] * 1e3, 4),
    }


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
    parser.add_argument("--out", type=Path, default=OUT, help="write the results as JSON here (default: %(default)s)")
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

    n = len(trace.invocations)
    ratio = median(sandboxed) / median(plain)
    per_call = (median(lazy) - median(sandboxed)) / n
    gate_call = (median(gated) - median(sandboxed)) / n
    gate_eval = (median(gated) - median(lazy)) / n
    alone = _gate_alone(gates, decision, args.runs)

    print(f"executor overhead, {len(program.call_sites)} call sites, {n} invocations, {args.runs} runs")
    print(row("sandboxed executor", sandboxed))
    print(row("plain python (for scale)", plain))
    print(f"ratio of medians: {ratio:.1f}x")
    print(f"target: under {TARGET_RUN_MS} ms per run for the sandboxed executor")
    print()
    print(f"deciding each call when it runs, {n} invocations per run, same runs")
    print(row("fixed decision (mapping)", sandboxed))
    print(row("decider object", lazy))
    print(f"asking a decider, per invocation: {per_call * 1e3:.4f} ms (difference of medians / {n})")
    print(f"target: under {TARGET_INVOCATION_MS} ms per invocation")
    print()
    print(f"the policy's gates (two candidates per site, an escalation gate at each VQA call), {n} invocations per run")
    print(row("gate decider", gated))
    print(f"deciding by gates, per invocation: {gate_call * 1e3:.4f} ms (difference of medians to the mapping / {n})")
    print(f"of which evaluating the gates: {gate_eval * 1e3:.4f} ms (to the decider object)")
    print(row("decide + escalate alone", alone))
    print(f"target: under {TARGET_INVOCATION_MS} ms p50 per invocation")

    results = {
        "provenance": provenance(),
        "runs": args.runs,
        "call_sites": len(program.call_sites),
        "invocations_per_run": n,
        "sandboxed_ms": summary_ms(sandboxed),
        "plain_python_ms": summary_ms(plain),
        "ratio_of_medians": round(ratio, 2),
        "sandbox_added_us": round((median(sandboxed) - median(plain)) * 1e6, 1),
        "target_run_ms": TARGET_RUN_MS,
        "decider": {
            "fixed_decision_ms": summary_ms(sandboxed),
            "decider_object_ms": summary_ms(lazy),
            "per_invocation_ms": round(per_call * 1e3, 4),
            "per_invocation_us": round(per_call * 1e6, 1),
            "target_invocation_ms": TARGET_INVOCATION_MS,
        },
        "gates": {
            "gate_decider_ms": summary_ms(gated),
            "per_invocation_ms": round(gate_call * 1e3, 4),
            "per_invocation_us": round(gate_call * 1e6, 1),
            "evaluating_gates_per_invocation_us": round(gate_eval * 1e6, 1),
            "decide_and_escalate_alone_ms": summary_ms(alone),
            "decide_and_escalate_alone_p50_us": round(median(alone) * 1e6, 1),
            "target_invocation_ms": TARGET_INVOCATION_MS,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


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
