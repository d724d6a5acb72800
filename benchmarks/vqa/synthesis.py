"""Program synthesis measured on the benchmark's queries.

For every query of both tracks, the router's synthesizer writes a program from the query's words
alone, and the synthesized program and the track's reference program then answer the same held-out
frames with the same backends: the largest backend of each function, so that perception errors
are the fewest and the differences come from the programs. Per query this gives: whether a
program came out, the attempts and time it took, each program's accuracy on the frames (binary
queries: F1 too), and the share of frames on which the two programs' answers agree (the authors'
rule, with the reference program's answer as the label).

Held-out frames: the query's stream without the scenes the synthesizer's dry run uses (the same
generator seeds would otherwise appear in both); for a binary query every positive frame and the
first negatives in stream order, for an open query the first frames in stream order (the stream is
shuffled, so its label mix holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

import numpy as np
from pydantic import BaseModel, ConfigDict

from benchmarks.vqa.runner import f1_score
from benchmarks.vqa.tracks import ImageResolver, TrackQuery
from fmprog.backends.base import BackendRegistry
from fmprog.program import Executor, Program, compile_program
from fmprog.rewards import TaskKind, is_yes, task_loss
from router.synthesis.prompt import EXAMPLES
from router.synthesis.synthesizer import ProgramSynthesizer, normalize_query

WITHIN = 0.02  # the target: the synthesized program's accuracy within 2 points of the reference's


class ProgramScore(BaseModel):
    """One program's answers on the held-out frames, and how good they are."""

    model_config = ConfigDict(frozen=True)

    answers: list[str]
    accuracy: float
    f1: float | None = None  # binary queries only
    errors: int = 0  # frames on which the program failed (answer "")


class QueryMeasure(BaseModel):
    """What synthesis did for one benchmark query."""

    model_config = ConfigDict(frozen=True)

    query: str
    kind: TaskKind
    type: str
    in_examples: bool  # the query is one of the prompt's few-shot tasks
    ok: bool
    attempts: int
    latency_s: float
    errors: list[str]
    source: str | None
    frames: int
    reference: ProgramScore
    synthesized: ProgramScore | None = None
    agreement: float | None = None

    @property
    def within(self) -> bool:
        """A program came out and its accuracy is within ``WITHIN`` of the reference program's."""
        return (
            self.synthesized is not None and abs(self.synthesized.accuracy - self.reference.accuracy) <= WITHIN + 1e-9
        )

    @property
    def not_worse(self) -> bool:
        """A program came out and its accuracy is at most ``WITHIN`` under the reference program's
        (a synthesized program may beat the hand-written one: it checks less, or differently)."""
        return self.synthesized is not None and self.synthesized.accuracy >= self.reference.accuracy - WITHIN - 1e-9


def dry_run_refs(synthesizer: ProgramSynthesizer) -> set[str]:
    """The track references of the scenes the synthesizer's dry run runs programs on."""
    return {f"scene/{difficulty}/{seed}" for seed, difficulty in synthesizer.scenes}


def held_out(query: TrackQuery, kind: TaskKind, frames: int, exclude: set[str]) -> TrackQuery:
    """At most ``frames`` frames of ``query``'s stream, none of them in ``exclude``: for a binary
    query every positive and then negatives in stream order; for an open query the first frames."""
    kept = [i for i, ref in enumerate(query.frames) if str(ref) not in exclude]
    if kind == "binary":
        positives = [i for i in kept if is_yes(query.labels[i])]
        negatives = [i for i in kept if not is_yes(query.labels[i])]
        kept = sorted(positives[:frames] + negatives[: max(0, frames - len(positives))])
    else:
        kept = kept[:frames]
    return TrackQuery(
        query.query, query.type, query.program, [query.frames[i] for i in kept], [query.labels[i] for i in kept]
    )


def largest_decision(program: Program, backends: BackendRegistry) -> dict[str, str]:
    """The most expensive backend of its function for every call site."""
    return {
        site.id: max(backends.for_function(site.function), key=lambda b: b.cost).name for site in program.call_sites
    }


def score(kind: TaskKind, answers: Sequence[str], labels: Sequence[str], errors: int = 0) -> ProgramScore:
    """Accuracy under the authors' rule, and F1 on the positives for a binary query."""
    correct = [task_loss(kind, a, y) == 0 for a, y in zip(answers, labels, strict=True)]
    f1 = None
    if kind == "binary":
        predicted = np.array([is_yes(a) for a in answers], bool)
        actual = np.array([is_yes(y) for y in labels], bool)
        f1 = f1_score(predicted, actual)
    return ProgramScore(answers=list(answers), accuracy=float(np.mean(correct)), f1=f1, errors=errors)


def answer_frames(
    executor: Executor, program: Program, frames: Sequence[np.ndarray], kind: TaskKind, labels: Sequence[str]
) -> ProgramScore:
    """``program``'s answers on ``frames`` with the largest backends; a failed run answers ""."""
    decision = largest_decision(program, executor.backends)
    answers, errors = [], 0
    for frame in frames:
        trace = executor.run(program, frame, decision)
        errors += trace.error is not None
        answers.append("" if trace.answer is None else str(trace.answer))
    return score(kind, answers, labels, errors)


def agreement(kind: TaskKind, answers: Sequence[str], reference: Sequence[str]) -> float:
    """The share of frames on which ``answers`` match the reference program's answers."""
    return float(np.mean([task_loss(kind, a, r) == 0 for a, r in zip(answers, reference, strict=True)]))


EXAMPLE_TASKS = frozenset(normalize_query(example.query) for example in EXAMPLES)


def measure_query(
    synthesizer: ProgramSynthesizer,
    executor: Executor,
    query: TrackQuery,
    kind: TaskKind,
    images: ImageResolver,
) -> QueryMeasure:
    """Synthesise a program for ``query`` and compare it with the reference program on the
    frames of ``query`` (already held out)."""
    result = synthesizer.synthesize(query.query, kind)
    frames = [images(ref) for ref in query.frames]
    reference = answer_frames(executor, compile_program(query.program), frames, kind, query.labels)
    synthesized = agreed = None
    if result.source is not None:
        synthesized = answer_frames(executor, compile_program(result.source), frames, kind, query.labels)
        agreed = agreement(kind, synthesized.answers, reference.answers)
    return QueryMeasure(
        query=query.query,
        kind=kind,
        type=query.type,
        in_examples=normalize_query(query.query) in EXAMPLE_TASKS,
        ok=result.ok,
        attempts=result.attempts,
        latency_s=result.latency_s,
        errors=result.errors,
        source=result.source,
        frames=len(frames),
        reference=reference,
        synthesized=synthesized,
        agreement=agreed,
    )


def summarize(measures: Sequence[QueryMeasure]) -> dict[str, float | int]:
    """The numbers docs/benchmarks.md reports for a set of queries (empty dict for none)."""
    if not measures:
        return {}
    ok = [m for m in measures if m.ok]
    latencies = sorted(m.latency_s for m in measures)
    return {
        "queries": len(measures),
        "valid": len(ok) / len(measures),
        "first_attempt": sum(m.ok and m.attempts == 1 for m in measures) / len(measures),
        "mean_attempts": float(np.mean([m.attempts for m in ok])) if ok else 0.0,
        "latency_median_s": median(latencies),
        "latency_p90_s": latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))],
        "latency_max_s": latencies[-1],
        "within_2_points": sum(m.within for m in measures) / len(measures),
        "not_2_points_worse": sum(m.not_worse for m in measures) / len(measures),
        "mean_agreement": float(np.mean([m.agreement for m in ok])) if ok else 0.0,
        # over the queries with a program, so that the two compare
        "reference_accuracy": float(np.mean([m.reference.accuracy for m in ok])) if ok else 0.0,
        "synthesized_accuracy": float(np.mean([m.synthesized.accuracy for m in ok if m.synthesized])) if ok else 0.0,
    }
