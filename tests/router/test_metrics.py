"""The router's metrics: cost, backend seconds, retries and replacements, running accuracy and F1."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fmprog.program import Invocation
from router.metrics import RouterMetrics
from router.schemas import FrameResult
from router.store import ProgramInfo, QualityCounts

PROGRAM = "a" * 32


def samples(metrics: RouterMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def call(backend: str, cost: float, latency_s: float, ok: bool = True, **extra) -> Invocation:
    return Invocation(site="query@1:1", function="vqa", backend=backend, cost=cost, latency_s=latency_s, ok=ok, **extra)


def test_an_answer_counts_cost_seconds_retries_and_replacements():
    metrics = RouterMetrics()
    trace = [
        call("vqa-large", 10.0, 0.5, ok=False, error="timeout"),
        call("vqa-large", 10.0, 0.25, ok=False, attempt=2, error="timeout"),
        call("vqa-small", 1.0, 0.125, fallback_from="vqa-large"),
    ]
    result = FrameResult(
        decision_id="b" * 32,
        program_id=PROGRAM,
        answer="yes",
        decision={"query@1:1": "vqa-large"},
        fallback=False,
        trace=trace,
        cost=21.0,
        latency_s=0.9,
    )
    metrics.answered(result, latency_s=1.0)
    got = samples(metrics)
    key = (("backend", "vqa-large"), ("function", "vqa"), ("program", PROGRAM))
    assert got[("fmprog_cost_total", key)] == 20.0
    assert got[("fmprog_backend_seconds_total", key)] == 0.75
    assert got[("fmprog_backend_calls_total", (*key[:2], ("ok", "false"), key[2]))] == 2
    assert got[("fmprog_fallbacks_total", (("program", PROGRAM), ("reason", "backend_retry")))] == 1
    assert got[("fmprog_fallbacks_total", (("program", PROGRAM), ("reason", "backend_replaced")))] == 1
    assert got[("fmprog_answer_latency_seconds_sum", (("program", PROGRAM),))] == 1.0


def test_label_counts_are_published_from_the_store_at_each_scrape():
    metrics, counts = RouterMetrics(), {PROGRAM: QualityCounts(right=2, wrong=1, tp=1, fp=1, fn=0, tn=1)}
    metrics.watch_quality(lambda: counts)
    got = samples(metrics)
    assert got[("fmprog_program_labels_total", (("outcome", "right"), ("program", PROGRAM)))] == 2
    assert got[("fmprog_program_labels_total", (("outcome", "wrong"), ("program", PROGRAM)))] == 1
    assert got[("fmprog_program_binary_labels_total", (("outcome", "tn"), ("program", PROGRAM)))] == 1
    counts[PROGRAM] = QualityCounts(right=3, wrong=1, tp=2, fp=1, fn=0, tn=1)  # another router labelled one
    assert samples(metrics)[("fmprog_program_binary_labels_total", (("outcome", "tp"), ("program", PROGRAM)))] == 2
    counts["open"] = QualityCounts(right=1)
    assert ("fmprog_program_binary_labels_total", (("outcome", "tp"), ("program", "open"))) not in samples(metrics)


def test_a_store_that_cannot_be_read_leaves_the_counts_out_of_the_scrape():
    def broken() -> dict[str, QualityCounts]:
        raise OSError("database unreachable")

    metrics = RouterMetrics()
    metrics.watch_quality(broken)
    assert not any(name.startswith("fmprog_program_") for name, _ in samples(metrics))


def test_program_names_are_published_from_the_store_at_each_scrape():
    other = "b" * 32
    metrics, names = RouterMetrics(), [ProgramInfo(PROGRAM, "Gate 3", "acme"), ProgramInfo(other, None, "default")]
    metrics.watch_programs(lambda: names)
    got = samples(metrics)
    assert got[("fmprog_program_info", (("name", "Gate 3"), ("program", PROGRAM), ("tenant", "acme")))] == 1
    assert got[("fmprog_program_info", (("name", ""), ("program", other), ("tenant", "default")))] == 1
    names.pop()  # deleted, by this router or another
    assert [key for key in samples(metrics) if key[0] == "fmprog_program_info"] == [
        ("fmprog_program_info", (("name", "Gate 3"), ("program", PROGRAM), ("tenant", "acme")))
    ]


def test_a_store_that_cannot_be_read_leaves_the_names_out_of_the_scrape():
    def broken() -> list[ProgramInfo]:
        raise OSError("database unreachable")

    metrics = RouterMetrics()
    metrics.watch_programs(broken)
    assert not any(name == "fmprog_program_info" for name, _ in samples(metrics))
