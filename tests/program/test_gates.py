"""Gates: a policy's per-site linear scores, evaluated at each invocation by the GateDecider, and
the vectors they scored rebuilt from the trace alone."""

from __future__ import annotations

import pytest

from fmprog.contract import CONTEXT_FEATURES, ESCALATION_FEATURES, SiteGate
from fmprog.program import (
    GateDecider,
    InvocationContext,
    compile_program,
    context_vector,
    escalation_vector,
    gate_vectors,
)
from fmprog.program.deciders import Decider
from tests.fakes import CANDIDATE, box

N, M = len(CONTEXT_FEATURES), len(ESCALATION_FEATURES)


def weights(size: int, **named: float) -> list[float]:
    """Weights over the named features (the rest 0)."""
    names = ESCALATION_FEATURES[:size]
    vector = [0.0] * size
    for name, value in named.items():
        vector[names.index(name)] = value
    return vector


def sites(program):
    return {s.method: s.id for s in program.call_sites}


def cascade_gates(program) -> dict[str, SiteGate]:
    """detect-large always; vqa-small first, re-asked of vqa-large only on "no" about a found patch."""
    ids = sites(program)
    return {
        ids["find"]: SiteGate(choice={"detect-small": weights(N), "detect-large": weights(N, bias=1.0)}),
        ids["verify_property"]: SiteGate(
            choice={"vqa-small": weights(N, bias=1.0), "vqa-large": weights(N)},
            escalate_to="vqa-large",
            escalation=weights(M, bias=-0.5, no_on_found=1.0),
        ),
    }


def context(**fields) -> InvocationContext:
    base = dict(
        site_id="s", function="vqa", method="query", index=0, site_calls=0, box=None, area=None, score=None,
        earlier=(), sites_left=0,
    )  # fmt: skip
    return InvocationContext(**{**base, **fields})


def test_the_vectors_follow_the_documented_features():
    x = context_vector(context(index=4, site_calls=2, sites_left=1, box=(0, 0, 10, 10), area=0.25, score=0.7))
    assert len(x) == N and dict(zip(CONTEXT_FEATURES, x, strict=True)) == {
        "bias": 1.0, "patch": 1.0, "area": 0.25, "found": 1.0, "score": 0.7, "call": 4 / 32,
        "site_calls": 2 / 8, "sites_left": 1 / 8, "detected": 0.0, "top_score": 0.0, "said_yes": 0.0,
        "said_no": 0.0,
    }  # fmt: skip
    no = dict(zip(ESCALATION_FEATURES, escalation_vector(x, "No, it is blue."), strict=True))
    assert (no["answer_yes"], no["answer_no"], no["answer_empty"], no["no_on_found"], no["yes_on_found"]) == (
        0, 1, 0, 1, 0,
    )  # fmt: skip
    unfound = dict(zip(ESCALATION_FEATURES, escalation_vector(context_vector(context()), "yes"), strict=True))
    assert (unfound["answer_yes"], unfound["no_on_found"], unfound["yes_on_found"]) == (1, 0, 0)
    assert escalation_vector(x, "")[M - 3] == 1.0  # answer_empty


def test_the_gate_decider_picks_the_best_score_and_escalates_on_its_gate():
    gate = SiteGate(
        choice={"vqa-small": weights(N, bias=0.5), "vqa-large": weights(N, score=1.0)},
        escalate_to="vqa-large",
        escalation=weights(M, bias=-0.5, no_on_found=1.0),
    )
    decider = GateDecider({"s": gate}, {"t": "llm-small"})
    weak = context(box=(0, 0, 5, 5), area=0.1, score=0.3)
    assert decider.decide(weak) == "vqa-small"
    assert decider.escalate(weak, "no") == "vqa-large"
    assert decider.escalate(weak, "yes") is None
    strong = context(box=(0, 0, 5, 5), area=0.1, score=0.9)
    assert decider.decide(strong) == "vqa-large"
    assert decider.escalate(strong, "no") is None  # vqa-large answered already
    whole = context()
    assert decider.decide(whole) == "vqa-small" and decider.escalate(whole, "no") is None  # nothing found
    assert decider.decide(context(site_id="t", function="llm")) == "llm-small"


def test_a_gated_run_follows_the_gates_and_its_trace_rebuilds_what_they_saw(executor, zoo, frame):
    program = compile_program(CANDIDATE)
    zoo.set_boxes({"car": [box(10, 0, 40, 40, score=0.8)]})
    zoo.models["vqa-small"].answer = lambda image, question: "no"
    zoo.models["vqa-large"].answer = lambda image, question: "yes"

    seen: list[tuple[float, ...]] = []

    class Watching(GateDecider):
        def decide(self, context):
            seen.append(context_vector(context))
            return super().decide(context)

    trace = executor.run(program, frame, Watching(cascade_gates(program), {}))
    assert trace.error is None and trace.answer == "yes"
    assert [(i.backend, i.escalated_from) for i in trace.invocations] == [
        ("detect-large", None),
        ("vqa-small", None),
        ("vqa-large", "vqa-small"),
    ]
    vectors = gate_vectors(trace.invocations)
    assert vectors[:2] == seen
    assert vectors[2] == escalation_vector(seen[1], "no")
    assert dict(zip(CONTEXT_FEATURES, vectors[1], strict=True))["detected"] == 1.0

    zoo.models["vqa-small"].answer = lambda image, question: "yes"
    calm = executor.run(program, frame, GateDecider(cascade_gates(program), {}))
    assert [i.backend for i in calm.invocations] == ["detect-large", "vqa-small"]


def test_a_fixed_decision_has_no_vectors(executor, zoo, frame):
    program = compile_program(CANDIDATE)
    zoo.set_boxes({"car": [box(10, 0, 40, 40)]})
    trace = executor.run(program, frame, {s.id: f"{s.function.value}-small" for s in program.call_sites})
    assert gate_vectors(trace.invocations) == [None, None]


def test_a_failed_attempt_has_no_vector_and_its_retry_sees_the_same_context(zoo, frame):
    from fmprog.program import ExecutionLimits, Executor

    program = compile_program(CANDIDATE)
    zoo.set_boxes({"car": [box(10, 0, 40, 40)]})
    calls = {"n": 0}

    def flaky(image, question):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("down")
        return "yes"

    zoo.models["vqa-small"].answer = flaky
    executor = Executor(zoo.registry(), ExecutionLimits(timeout_s=5), retries=1)
    trace = executor.run(program, frame, GateDecider(cascade_gates(program), {}))
    assert [i.ok for i in trace.invocations] == [True, False, True]
    first, failed, retried = gate_vectors(trace.invocations)
    assert failed is None and first is not None and retried is not None and retried[8] == 1.0  # detected


def test_gates_are_checked_by_the_contract():
    with pytest.raises(ValueError, match="weights"):
        SiteGate(choice={"vqa-small": [0.0] * (N - 1)})
    with pytest.raises(ValueError, match="both"):
        SiteGate(choice={"vqa-small": [0.0] * N}, escalate_to="vqa-large")
    with pytest.raises(ValueError, match="finite"):
        SiteGate(choice={"vqa-small": [float("nan")] * N})
    assert issubclass(GateDecider, Decider)
