"""The abuse probe's pure parts, without a stack: percentiles, the bad inputs it builds, the
programs it sends (compiled, and run where that is quick), and the report it judges and writes."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from benchmarks import abuse
from fmprog.program import compile_program
from fmprog.web import MAX_JSON_DEPTH, json_body_problem


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([3.0], 99, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        (list(range(1, 101)), 99, 99.01),
    ],
)
def test_percentile_interpolates_as_numpy_does(values, q, expected):
    found = abuse.percentile(values, q)
    if expected is None:
        assert found is None
    else:
        assert found == pytest.approx(expected)
        assert found == pytest.approx(float(np.percentile(values, q)))


def test_percentile_refuses_a_rank_outside_0_to_100():
    with pytest.raises(ValueError, match="101"):
        abuse.percentile([1.0], 101)


def test_latency_summary_is_in_milliseconds():
    assert abuse.latency_summary([0.1, 0.2, 0.3]) == {"n": 3, "p50_ms": 200.0, "p99_ms": 298.0, "max_ms": 300.0}
    assert abuse.latency_summary([]) == {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    assert abuse.ratio(300.0, 150.0) == 2.0
    assert abuse.ratio(None, 1.0) is None and abuse.ratio(1.0, 0) is None


def test_by_time_sent_splits_replies_into_windows():
    replies = [(0.1, 0.5, True), (1.0, 2.0, True), (0.5, 0.01, False), (5.2, 0.1, True), (-0.01, 0.3, False)]
    assert abuse.by_time_sent(replies, 5.0) == {
        "0-5 s": {"accepted": 2, "accepted_p99_ms": 1985.0, "refused": 2, "refused_p99_ms": 297.1},
        "5-10 s": {"accepted": 1, "accepted_p99_ms": 100.0, "refused": 0, "refused_p99_ms": None},
    }


def test_where_the_time_went_reads_the_router_s_latency_and_the_trace():
    replies = [
        abuse.Reply(200, 0.5, 0.0, {"latency_s": 0.4, "trace": [{"latency_s": 0.1}, {"latency_s": 0.2}]}),
        abuse.Reply(429, 0.01, 0.0, {"detail": "quota"}),
    ]
    found = abuse.where_the_time_went(replies)
    assert found["run_latency"]["p50_ms"] == 400.0
    assert found["backend_calls"]["p50_ms"] == 300.0 and found["backend_calls"]["n"] == 1


def _ihdr(data: bytes) -> tuple[int, int]:
    assert data[:8] == abuse.PNG_SIGNATURE and data[12:16] == b"IHDR"
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(data[12:29])  # a header a decoder takes
    return struct.unpack(">II", data[16:24])


def test_huge_png_is_a_real_png_of_that_size():
    small = abuse.huge_png(64)
    with Image.open(io.BytesIO(small)) as image:
        assert image.size == (64, 64)
        assert not np.asarray(image).any()  # every pixel decodes, all black
    big = abuse.huge_png(20_000)
    assert _ihdr(big) == (20_000, 20_000)
    assert len(big) < 200_000  # 400 M pixels in a few tens of kB


def test_headers_that_claim_more_than_they_hold():
    png = abuse.png_claiming(65535, 65535)
    assert _ihdr(png) == (65535, 65535)
    jpeg = abuse.jpeg_claiming(65500, 65500)
    with pytest.raises(Image.DecompressionBombError, match="4290250000 pixels"):  # Pillow reads the claim
        Image.open(io.BytesIO(jpeg))
    with Image.open(io.BytesIO(abuse.jpeg_claiming(16, 12))) as image:
        assert image.size == (16, 12)


def test_nested_json_and_the_lone_surrogate_are_what_the_router_refuses():
    deep = abuse.nested_json(abuse.NESTED_DEPTH, '"label": ')
    assert json_body_problem(deep.encode(), MAX_JSON_DEPTH) is not None
    assert "5000 levels deep" in json_body_problem(abuse.nested_json(5000).encode(), MAX_JSON_DEPTH)
    assert json.loads(abuse.nested_json(3, '"a": ')) == {"a": [[[]]]}
    body = abuse.lone_surrogate_program()
    assert b"\\ud800" in body
    assert "lone surrogate" in json_body_problem(body, MAX_JSON_DEPTH)


@pytest.mark.parametrize(
    "source",
    [
        abuse.SMALL,
        abuse.BACKEND_LOOP,
        abuse.CPU_SPIN,
        abuse.SURROGATE_ANSWER,
        *abuse.MEMORY_PROGRAMS.values(),
    ],
)
def test_the_probe_s_programs_compile(source):
    program = compile_program(source)
    assert program.call_sites


def test_status_counts_and_server_errors():
    statuses = [200, 404, 404, 503, "ReadTimeout", 500]
    assert abuse.status_counts(statuses) == {"200": 1, "404": 2, "500": 1, "503": 1, "ReadTimeout": 1}
    assert abuse.server_errors(statuses) == 3


def test_metrics_are_read_by_name_and_labels():
    text = (
        "# TYPE fmprog_refused_total counter\n"
        'fmprog_refused_total{tenant="a",reason="QuotaExceeded"} 3\n'
        'fmprog_refused_total{tenant="b",reason="Overloaded"} 2\n'
        "# TYPE fmprog_policy_circuit_open gauge\n"
        "fmprog_policy_circuit_open 0\n"
    )
    samples = abuse.parse_metrics(text)
    assert abuse.metric_total(samples, "fmprog_refused_total") == 5
    assert abuse.metric_total(samples, "fmprog_refused_total", tenant="a") == 3
    assert abuse.metric_by(samples, "fmprog_refused_total", "tenant", "reason") == {
        "a/QuotaExceeded": 3,
        "b/Overloaded": 2,
    }
    assert abuse.metric_total(samples, "fmprog_policy_circuit_open") == 0


def test_histogram_quantile_reads_what_was_observed_between_two_scrapes():
    text = (
        "# TYPE lat histogram\n"
        'lat_bucket{program="p",le="0.1"} 10\n'
        'lat_bucket{program="p",le="1.0"} 20\n'
        'lat_bucket{program="p",le="+Inf"} 20\n'
        'lat_bucket{program="q",le="0.1"} 0\n'
        'lat_bucket{program="q",le="1.0"} 80\n'
        'lat_bucket{program="q",le="+Inf"} 80\n'
        'lat_count{program="p"} 20\n'
        'lat_sum{program="p"} 3\n'
    )
    after = abuse.histogram_buckets(abuse.parse_metrics(text), "lat")
    assert after == {0.1: 10, 1.0: 100, float("inf"): 100}
    before = {0.1: 10, 1.0: 20, float("inf"): 20}
    assert abuse.histogram_quantile(before, after, 0.5) == pytest.approx(0.55)  # all 80 new ones in (0.1, 1]
    assert abuse.histogram_quantile({}, after, 0.1) == pytest.approx(0.1)
    assert abuse.histogram_quantile(after, after, 0.5) is None
    assert abuse.histogram_quantile({}, {0.5: 0, float("inf"): 4}, 0.99) == 0.5  # in +Inf: the largest bound


def _results() -> dict:
    latency = {"n": 40, "p50_ms": 50.0, "p99_ms": 90.0, "max_ms": 95.0}
    return {
        "isolation": {
            "attempts": 12,
            "refused": 12,
            "statuses": {"200": 1, "404": 11},
            "list_leaks": 0,
            "admin_sees_both": True,
        },
        "noisy_neighbour": {
            "idle": latency,
            "loaded": {
                "backend_loop": {
                    "v": {**latency, "p99_ms": 150.0},
                    "p99_ratio": 1.67,
                    "h": {"statuses": {"200": 10, "429": 90}},
                },
                "cpu_spin": {"v": {**latency, "p99_ms": 900.0}, "p99_ratio": 10.0, "h": {"statuses": {"429": 5}}},
            },
        },
        "bad_inputs": {
            "inputs": [{"target": "router", "name": "x", "status": 422, "error_kind": None, "seconds": 0.01}],
            "statuses": {"422": 1},
            "server_errors": 0,
            "policy_circuit_open": 0.0,
            "next_answer_fallback": False,
        },
        "overload": {
            "callers": 128,
            "seconds": 20.0,
            "statuses": {"200": 500, "429": 40, "503": 60},
            "accepted_latency": {**latency, "p99_ms": 2500.0},
            "refusal_latency": {**latency, "p99_ms": 30.0},
            "server_errors_not_503": 0,
            "refusals_without_retry_after": 0,
            "after_the_first_5_s": {
                "accepted_latency": {**latency, "p99_ms": 1500.0},
                "refusal_latency": {**latency, "p99_ms": 600.0},
            },
        },
        "memory": {"failed": "RuntimeError: no process serves router.app"},
        "policy_restart": {
            "kill_to_ready_s": 3.0,
            "ready_to_decided_s": None,
            "fallback_answers": 20,
        },
        "serve_gone": {
            "outcomes": {"503 with Retry-After": 30, "200 backend_error": 2},
            "seconds": 10,
            "latency": latency,
            "ok_with_backend_error": 2,
            "refused_503_without_retry_after": 0,
            "no_reply": 0,
        },
    }


def _met(checks: list[dict], probe: str, what: str) -> bool | None:
    """Whether the one target of ``probe`` whose description is ``what``, or else contains it, was met."""
    found = [c for c in checks if c["probe"] == probe and c["what"] == what]
    [check] = found or [c for c in checks if c["probe"] == probe and what in c["what"]]
    return check["met"]


def test_judge_marks_each_target_met_missed_or_not_measured():
    checks = abuse.judge(_results())
    assert _met(checks, "isolation", "refused") is True
    assert _met(checks, "noisy_neighbour", "backend_loop") is True
    assert _met(checks, "noisy_neighbour", "cpu_spin") is False
    assert _met(checks, "bad_inputs", "5xx") is True
    assert _met(checks, "bad_inputs", "fallback") is True
    assert _met(checks, "overload", "accepted answers p99 ms") is False
    assert _met(checks, "overload", "time to refusal p99 ms") is True
    assert _met(checks, "overload", "accepted answers p99 ms, sent after the first 5 s") is True
    assert _met(checks, "overload", "time to refusal p99 ms, sent after the first 5 s") is False
    assert _met(checks, "memory", "the probe ran") is False  # a failed probe is a missed target
    assert _met(checks, "policy_restart", "decided") is None  # never decided again: not measured
    assert _met(checks, "serve_gone", "backend_error") is False
    assert _met(checks, "serve_gone", "Retry-After") is True


def test_render_prints_every_probe_and_target():
    results = _results()
    results["targets"] = abuse.judge(results)
    text = "\n".join(abuse.render(results))
    for name in abuse.PROBES:
        assert f"{name}:" in text
    assert "memory: FAILED: RuntimeError" in text
    assert "[MISSED] overload: accepted answers p99 ms = 2500.0 (target <= 2000)" in text
    assert "[not measured] policy_restart" in text
    assert "12/12 cross-tenant attempts refused" in text


def test_merge_keeps_what_a_later_run_did_not_repeat():
    first = {"provenance": {"date": "then"}, "probes": ["isolation", "overload"], **_results()}
    fuzz = {"schemathesis": {"services": {"router": {"requests": 10_000, "server_errors": 0, "seconds": 60.0}}}}
    merged = abuse.merge(first, fuzz)
    assert merged["isolation"] == first["isolation"] and merged["schemathesis"] == fuzz["schemathesis"]
    assert merged["provenance"] == {"date": "then"}
    assert _met(merged["targets"], "schemathesis", "router") is True
    again = abuse.merge(merged, {"provenance": {"date": "now"}, "probes": ["overload"], "overload": {"failed": "x"}})
    assert again["provenance"] == {"date": "now"} and again["isolation"] == first["isolation"]
    assert again["earlier_run"] == {"probes": ["isolation"], "provenance": {"date": "then"}}
    assert again["probes"] == ["isolation", "overload"]
    assert "schemathesis" in again
    json.dumps(again)  # what is written
