"""The answer-size limit (``ExecutionLimits.max_answer_bytes``): an answer whose JSON encoding
(compact, UTF-8) is larger ends the run with ``resource_limit`` and is not kept, however it was
built, in process and in a worker."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from fmprog.program import ExecutionLimits, Executor, Trace, compile_program
from fmprog.program.workers import WorkerPool
from tests.fakes import Zoo, all_of, box

LIMIT = 1_000


def _source(body: str) -> str:
    return "def execute_command(image):\n" + "".join(f"    {line}\n" for line in body.splitlines())


def _run(zoo: Zoo, frame: np.ndarray, body: str, **limits: Any) -> Trace:
    program = compile_program(_source(body))
    return Executor(zoo.registry(), ExecutionLimits(timeout_s=5, **limits)).run(
        program, frame, all_of(program, "small")
    )


def _json_bytes(answer: Any) -> int:
    return len(json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _assert_over(trace: Trace, limit: int) -> None:
    assert trace.answer is None
    assert trace.error is not None and trace.error.kind == "resource_limit", trace.error
    assert f"(limit {limit:,} bytes)" in trace.error.message, trace.error.message
    trace.model_dump_json()  # the trace itself is JSON


OVER = {
    "a string": "return 'a' * 1200",
    "a list of strings, each under the limit": "return ['a' * 90] * 12",
    "strings rendered by map(str, ...)": "rows = ['x' * 100] * 20\nreturn list(map(str, [rows]))",
    "a nested dict": "return {'k%d' % i: {'v': ['x' * 10] * 5, 'w': {'n': i}} for i in range(20)}",
    "many keys": "return {str(i): i for i in range(300)}",
    "many small items": "return list(range(400))",
    "a string that grows as JSON (escapes)": "return '\\n' * 600",
    "text that grows as UTF-8": "return '\u00e9' * 600",
    "a tuple key rendered as text": "return {('a' * 300, 'b' * 300, 'c' * 300, 'd' * 300): 1}",
    "deep nesting": "x = ['a' * 60]\nfor i in range(15):\n    x = [x, x]\nreturn x",
}


@pytest.mark.parametrize("body", OVER.values(), ids=OVER.keys())
def test_an_answer_over_the_limit_ends_the_run_with_resource_limit(zoo: Zoo, frame: np.ndarray, body: str):
    _assert_over(_run(zoo, frame, body, max_answer_bytes=LIMIT), LIMIT)


UNDER = {
    "a string": "'a' * 300",
    "text with escapes and UTF-8": (
        "'quote \" backslash \\\\ newline \\n tab \\t bell \\x07 caf\u00e9 \u732b \U0001f600'"
    ),
    "a nested dict": "{'k%d' % i: {'v': [1.5, None, True, False, -3], 'w': 'x' * i} for i in range(5)}",
    "numbers": "[0, -1, 10 ** 30, 0.1, 1e300, -2.5e-8, float('inf'), float('nan')]",
    "non-text keys": "{1: 'a', 2.5: 'b', None: 'c', True: 'd', (1, 'x'): 'e'}",
    "keys with the same text": "{1: 'a' * 50, 'x': 0, '1': 'b', 2: 'c', '2': 'd' * 40}",
    "a patch": "ImagePatch(image).find('person')",
    "empty containers": "[[], {}, [[]], '', [{}], {'': []}]",
    "a value that is not data": "[range(3), math.pi]",
}


@pytest.mark.parametrize("expression", UNDER.values(), ids=UNDER.keys())
def test_the_limit_is_the_exact_size_of_the_answer_s_json(zoo: Zoo, frame: np.ndarray, expression: str):
    """An answer of exactly the limit is accepted and one byte less refuses it: the size counted is
    that of ``json.dumps(answer, ensure_ascii=False, separators=(",", ":"))`` in UTF-8."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60), box(50, 20, 90, 50)]})
    body = f"import math\nreturn {expression}" if "math." in expression else f"return {expression}"
    answer = _run(zoo, frame, body).answer
    size = _json_bytes(answer)
    assert size < LIMIT * 2
    trace = _run(zoo, frame, body, max_answer_bytes=size)
    assert trace.error is None, trace.error
    assert trace.answer == answer
    _assert_over(_run(zoo, frame, body, max_answer_bytes=size - 1), size - 1)


def test_just_under_the_default_limit_is_accepted_and_just_over_is_not(zoo: Zoo, frame: np.ndarray):
    assert ExecutionLimits().max_answer_bytes == 65_536
    # 8 strings of 8,189 characters: 8 * 8,191 bytes with their quotes, 7 commas, 2 brackets = 65,537
    over = _run(zoo, frame, "return ['a' * 8189] * 8")
    _assert_over(over, 65_536)
    under = _run(zoo, frame, "return ['a' * 8189] * 7 + ['a' * 8188]")
    assert under.error is None and _json_bytes(under.answer) == 65_536


def test_the_message_names_the_answer_s_size_and_the_limit(zoo: Zoo, frame: np.ndarray):
    trace = _run(zoo, frame, "return 'a' * 2000", max_answer_bytes=LIMIT)
    assert trace.error is not None
    assert trace.error.message == (
        "the answer is too large: its JSON encoding takes at least 2,002 bytes (limit 1,000 bytes)"
    )


def test_a_60_mb_answer_is_refused_without_being_encoded(zoo: Zoo, frame: np.ndarray):
    """The probe's attack: a 60 MB string built through map(str, ...), past the rendering guard."""
    started = time.perf_counter()
    trace = _run(zoo, frame, "rows = ['a' * 9999] * 6000\nreturn list(map(str, [rows]))[0]")
    _assert_over(trace, 65_536)
    assert "at least 60,0" in trace.error.message  # type: ignore[union-attr]
    assert time.perf_counter() - started < 5


def test_a_huge_shared_structure_is_refused_without_being_walked(zoo: Zoo, frame: np.ndarray):
    """2,000 references to a list of 2,000 strings: a 52 MB answer, stopped at its first 64 KB."""
    started = time.perf_counter()
    trace = _run(zoo, frame, "row = ['abcdefghij'] * 2000\nreturn [row] * 2000")
    _assert_over(trace, 65_536)
    assert trace.latency_s < 1 and time.perf_counter() - started < 5


def test_max_answer_bytes_is_validated():
    with pytest.raises(ValueError, match="greater than or equal to 16"):
        ExecutionLimits(max_answer_bytes=0)


# -- in a worker process ------------------------------------------------------------------------


def _without_latency(trace: Trace) -> dict[str, Any]:
    dump = trace.model_dump(exclude={"latency_s"})
    for invocation in dump["invocations"]:
        invocation.pop("latency_s")
    return dump


WORKER_CASES = {
    "over": "n = len(ImagePatch(image).find('person'))\nrows = ['x' * 100] * 20\nreturn list(map(str, [rows, n]))",
    "under": "n = len(ImagePatch(image).find('person'))\nreturn ['x' * 100] * n",
}


@pytest.mark.parametrize("body", WORKER_CASES.values(), ids=WORKER_CASES.keys())
def test_a_worker_applies_the_limit_as_in_process(zoo: Zoo, frame: np.ndarray, body: str):
    """The worker checks the answer before it sends the trace: the same trace, message included."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)] * 3})
    program = compile_program(_source(body))
    decision = {site.id: "detect-small" for site in program.call_sites}
    limits = ExecutionLimits(timeout_s=5, max_answer_bytes=LIMIT)
    in_process = Executor(zoo.registry(), limits).run(program, frame, decision)
    with WorkerPool(zoo.registry(), limits, workers=1) as pool:
        pooled = pool.run(program, frame, decision)
    assert _without_latency(pooled) == _without_latency(in_process)
    assert (pooled.error is None) == (body == WORKER_CASES["under"])
    assert pooled.invocations and pooled.cost > 0  # an answer refused is still charged for its calls


def test_a_60_mb_answer_never_leaves_its_worker(zoo: Zoo, frame: np.ndarray):
    program = compile_program(_source("rows = ['a' * 9999] * 6000\nreturn list(map(str, [rows]))[0]"))
    with WorkerPool(zoo.registry(), ExecutionLimits(timeout_s=5), workers=1) as pool:
        trace = pool.run(program, frame, {})
        _assert_over(trace, 65_536)
        assert "takes at least 60,0" in trace.error.message  # type: ignore[union-attr]  # the worker's message
        assert pool.kills == 0  # the worker answered (a small trace) and is kept


def test_the_pool_refuses_an_oversized_answer_a_worker_sent_anyway(zoo: Zoo, frame: np.ndarray):
    """A worker is no more trusted than its program: an answer over the pool's limit that comes
    back all the same (here a worker told a larger limit) is dropped by the pool."""
    program = compile_program(_source("return 'a' * 5000"))
    with WorkerPool(zoo.registry(), ExecutionLimits(timeout_s=5, max_answer_bytes=LIMIT), workers=1) as pool:
        pool._setup["limits"]["max_answer_bytes"] = 10**6  # what the worker is told
        trace = pool.run(program, frame, {})
        assert pool.kills == 1  # a worker that sent such an answer is not used again
    _assert_over(trace, LIMIT)
    assert trace.error is not None and trace.error.message == (
        "the answer is too large: its JSON encoding takes 5,002 bytes (limit 1,000 bytes)"
    )
