"""Measuring synthesis against the reference programs (``benchmarks.vqa.synthesis``): held-out
frames, scores, and whole measurements with real zoo backends and a scripted model in place of the
LLM (the real synthesizer is tested in tests/router/test_synthesis_llama.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks.vqa.harness import load_backends
from benchmarks.vqa.queries import binary_queries
from benchmarks.vqa.synthesis import (
    QueryMeasure,
    agreement,
    dry_run_refs,
    held_out,
    measure_query,
    score,
    summarize,
)
from benchmarks.vqa.tracks import ImageResolver, TrackQuery, build_streams
from fmprog.backends import load_catalog
from fmprog.program import Executor
from router.synthesis.synthesizer import ProgramSynthesizer

CONFIG = Path(__file__).resolve().parents[2] / "fmprog" / "configs" / "synthetic.yaml"
ALWAYS_NO = 'def execute_command(image):\n    ImagePatch(image).find("person")\n    return "no"\n'  # wrong, but routed


class ScriptedModel:
    """Replies with ``reply`` to every conversation."""

    name = "scripted"

    def __init__(self, reply: str):
        self.reply = reply

    def chat(self, messages: Sequence[dict[str, Any]], *, max_tokens: int) -> str:
        return self.reply


def test_held_out_keeps_every_positive_and_skips_the_dry_run_scenes():
    frames = [f"scene/easy/{i}" for i in range(20)]
    labels = ["yes" if i % 5 == 0 else "no" for i in range(20)]  # positives 0, 5, 10, 15
    query = TrackQuery("q?", "t", "p", frames, labels)
    kept = held_out(query, "binary", 6, exclude={"scene/easy/0", "scene/easy/1"})
    assert kept.frames == ["scene/easy/2", "scene/easy/3", "scene/easy/4", "scene/easy/5", "scene/easy/10",
                           "scene/easy/15"]  # fmt: skip
    assert kept.labels == ["no", "no", "no", "yes", "yes", "yes"]
    opened = held_out(TrackQuery("q?", "t", "p", frames, [str(i) for i in range(20)]), "open", 3, {"scene/easy/1"})
    assert opened.frames == ["scene/easy/0", "scene/easy/2", "scene/easy/3"] and opened.labels == ["0", "2", "3"]


def test_scores_follow_the_authors_rules():
    binary = score("binary", ["yes", "no", "yes", "no"], ["yes", "yes", "no", "no"])
    assert binary.accuracy == 0.5 and binary.f1 == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    assert score("binary", ["no", "no"], ["yes", "no"]).f1 == 0.0
    opened = score("open", ["a red circle", "3", "0"], ["red", "4", "n/a"])
    assert opened.accuracy == pytest.approx(2 / 3) and opened.f1 is None
    assert agreement("open", ["Red", "blue"], ["red", "green"]) == 0.5


@pytest.fixture(scope="module")
def measured():
    """One binary query's short stream, its reference program, and a measuring setup with the
    zoo's detection and VQA backends in process."""
    spec = binary_queries()[0]
    stream = build_streams([spec], binary_frames=40, binary_positives=6)[0]
    backends = load_backends(CONFIG, None, functions={"detect", "vqa"})
    catalog = load_catalog(CONFIG)

    def measure(reply: str) -> QueryMeasure:
        synthesizer = ProgramSynthesizer(ScriptedModel(reply), catalog, backends, attempts=2, dry_run_frames=2)
        query = held_out(stream, "binary", 30, dry_run_refs(synthesizer))
        return measure_query(synthesizer, Executor(backends), query, "binary", ImageResolver())

    return stream, measure


def test_the_reference_program_agrees_with_itself(measured):
    stream, measure = measured
    result = measure(f"```python\n{stream.program}```")
    assert result.ok and result.attempts == 1 and result.within and result.not_worse and result.agreement == 1.0
    assert result.synthesized is not None and result.synthesized.answers == result.reference.answers
    assert 0 < result.frames <= 30 and result.reference.errors == 0
    assert result.reference.f1 is not None and result.reference.f1 > 0.5  # the zoo finds most positives


def test_a_wrong_program_and_no_program_are_not_within_two_points(measured):
    _, measure = measured
    wrong = measure(ALWAYS_NO)
    assert wrong.ok and not wrong.within and not wrong.not_worse
    assert wrong.synthesized is not None and wrong.synthesized.f1 == 0.0
    assert wrong.agreement is not None and wrong.agreement < 1.0
    failed = measure("I cannot write that.")
    assert not failed.ok and failed.attempts == 2 and failed.synthesized is None and not failed.within
    assert len(failed.errors) == 2

    summary = summarize([wrong, failed])
    assert summary["queries"] == 2 and summary["valid"] == 0.5 and summary["within_2_points"] == 0.0
    assert summary["not_2_points_worse"] == 0.0
    assert summary["first_attempt"] == 0.5 and summary["mean_attempts"] == 1.0
    assert summarize([]) == {}


def test_a_program_better_than_the_reference_is_not_within_but_not_worse():
    labels = ["yes"] * 5 + ["no"] * 5
    reference, synthesized = score("binary", ["no"] * 10, labels), score("binary", labels, labels)
    measure = QueryMeasure(
        query="q?", kind="binary", type="t", in_examples=False, ok=True, attempts=1, latency_s=1.0, errors=[],
        source="s", frames=10, reference=reference, synthesized=synthesized, agreement=0.5,
    )  # fmt: skip
    assert measure.not_worse and not measure.within
    assert summarize([measure])["within_2_points"] == 0.0 and summarize([measure])["not_2_points_worse"] == 1.0


def test_dry_run_refs_name_the_synthesizers_own_scenes():
    backends = load_backends(CONFIG, None, functions={"detect"})
    synthesizer = ProgramSynthesizer(ScriptedModel(ALWAYS_NO), load_catalog(CONFIG), backends, dry_run_frames=2)
    refs = sorted(dry_run_refs(synthesizer), key=lambda ref: int(ref.rsplit("/", 1)[1]))
    images = [ImageResolver()(ref) for ref in refs]
    assert len(images) == len(synthesizer.frames) == 16
    assert all((a == b).all() for a, b in zip(images, synthesizer.frames, strict=True))
