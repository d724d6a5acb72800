"""Programs in worker processes: the same traces as in process, and hostile runs stopped hard."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmprog.backends import BackendSpec, Function
from fmprog.program import CascadeDecider, ExecutionLimits, Executor, InvalidDecision, Trace, compile_program
from fmprog.program.workers import WorkerPool
from tests.fakes import Zoo, all_of, box

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "programs"
NESTED_EQUAL = (
    "def execute_command(image):\n"
    "    x = [1]\n    y = [1]\n"
    "    for i in range(60):\n        x = [x, x]\n        y = [y, y]\n"
    "    return x == y\n"
)
NESTED_HASH = (
    "def execute_command(image):\n    x = (1,)\n    for i in range(40):\n        x = (x, x)\n    return len({x})\n"
)
ROWS = (
    "def execute_command(image):\n    rows = [[0] * 9999 for i in range(9999)]\n    return len(list(map(list, rows)))\n"
)
NORMAL = "def execute_command(image):\n    return len(ImagePatch(image).find('person'))\n"


def _without_latency(trace: Trace) -> dict[str, Any]:
    dump = trace.model_dump(exclude={"latency_s"})
    for invocation in dump["invocations"]:
        invocation.pop("latency_s")
    return dump


@pytest.fixture
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)


class FakeReader:
    """Reads a text that depends on the patch's pixels (its shape and their sum)."""

    def ocr(self, image: np.ndarray) -> str:
        return f"SIGN {image.shape[0]}x{image.shape[1]} {int(image.sum()) % 97}"


@pytest.fixture
def zoo() -> Zoo:
    zoo = Zoo()
    zoo.set_boxes(
        {
            "person": [box(10, 10, 40, 60)],
            "bicycle": [box(12, 40, 42, 70)],
            "car": [box(50, 20, 90, 50)],
            "circle": [box(100, 30, 130, 60)],
        }
    )
    zoo.set_vqa(lambda image, question: f"yes {image.shape[0]}x{image.shape[1]} {int(image.sum()) % 97}")
    for name, cost in (("ocr-small", 0.4), ("ocr-large", 4.0)):  # the shared fake zoo reads no text
        zoo.models[name] = FakeReader()
        zoo.specs.append(BackendSpec(name=name, function=Function.ocr, cost=cost))
    return zoo


@pytest.fixture
def pool(zoo: Zoo) -> Iterator[WorkerPool]:
    with WorkerPool(zoo.registry(), ExecutionLimits(timeout_s=1.5), workers=2, retries=1, kill_margin_s=0.5) as pool:
        yield pool


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.stem)
def test_a_program_in_a_worker_traces_as_in_process(pool: WorkerPool, zoo: Zoo, frame: np.ndarray, path: Path):
    program = compile_program(path.read_text())
    decision = all_of(program, "small")
    assert set(decision.values()) <= set(zoo.models), "the fake zoo has no backend for one of its functions"
    in_process = Executor(zoo.registry(), ExecutionLimits(timeout_s=1.5), retries=1).run(program, frame, decision)
    assert _without_latency(pool.run(program, frame, decision)) == _without_latency(in_process)


def test_crops_reach_the_backends_as_the_frame_s_pixels(pool: WorkerPool, zoo: Zoo, frame: np.ndarray):
    source = "def execute_command(image):\n    return ImagePatch(image).find('car')[0].simple_query()\n"
    program = compile_program(source)
    seen: list[np.ndarray] = []
    zoo.set_vqa(lambda image, question: seen.append(image.copy()) or "ok")
    assert pool.run(program, frame, all_of(program, "small")).answer == "ok"
    assert np.array_equal(seen[0], frame[20:50, 50:90])  # the car's box, rows counted from the top


def test_failures_retries_and_fallbacks_trace_as_in_process(zoo: Zoo, frame: np.ndarray):
    program = compile_program(NORMAL)
    site = program.call_sites[0].id
    calls = {"n": 0}

    def flaky(image: np.ndarray, noun: str) -> list:
        calls["n"] += 1
        raise ConnectionError("detector down")

    zoo.models["detect-small"].detect = flaky  # type: ignore[method-assign]
    alternates = {site: ["detect-large"]}
    in_process = Executor(zoo.registry(), retries=1).run(program, frame, {site: "detect-small"}, alternates)
    with WorkerPool(zoo.registry(), workers=1, retries=1) as pool:
        pooled = pool.run(program, frame, {site: "detect-small"}, alternates)
    assert [i.error for i in pooled.invocations] == ["ConnectionError: detector down"] * 2 + [None]
    assert _without_latency(pooled) == _without_latency(in_process)


def test_a_failure_that_says_it_cannot_be_retried_is_not_retried_in_a_worker(zoo: Zoo, frame: np.ndarray):
    """``retryable = False`` (a refusal, an open circuit) crosses the pipe: straight to the alternate."""
    program = compile_program(NORMAL)
    site = program.call_sites[0].id

    class Refused(RuntimeError):
        retryable = False

    def refusing(image: np.ndarray, noun: str) -> list:
        raise Refused("HTTP 422: no")

    zoo.models["detect-small"].detect = refusing  # type: ignore[method-assign]
    alternates = {site: ["detect-large"]}
    in_process = Executor(zoo.registry(), retries=2).run(program, frame, {site: "detect-small"}, alternates)
    with WorkerPool(zoo.registry(), workers=1, retries=2) as pool:
        pooled = pool.run(program, frame, {site: "detect-small"}, alternates)
    assert [(i.backend, i.ok) for i in pooled.invocations] == [("detect-small", False), ("detect-large", True)]
    assert _without_latency(pooled) == _without_latency(in_process)


def test_a_decider_runs_in_the_worker_and_traces_as_in_process(pool: WorkerPool, zoo: Zoo, frame: np.ndarray):
    program = compile_program((EXAMPLES / "person_on_bike.py").read_text())
    zoo.set_vqa(lambda image, question: "no")  # so the cascade escalates
    decider = CascadeDecider.for_backends(zoo.registry())
    in_process = Executor(zoo.registry(), ExecutionLimits(timeout_s=1.5), retries=1).run(program, frame, decider)
    pooled = pool.run(program, frame, decider)
    assert any(i.escalated_from for i in pooled.invocations)
    assert _without_latency(pooled) == _without_latency(in_process)


def test_frames_of_any_size_follow_one_another(pool: WorkerPool, zoo: Zoo):
    program = compile_program(
        "def execute_command(image):\n    return ImagePatch(image).find('car')[0].simple_query()\n"
    )
    seen: list[np.ndarray] = []
    zoo.set_vqa(lambda image, question: seen.append(image.copy()) or "ok")
    rng = np.random.default_rng(1)
    for shape in [(120, 160, 3), (1500, 2000, 3), (60, 90, 3), (1600, 1200, 3)]:
        frame = rng.integers(0, 255, shape, dtype=np.uint8)
        assert pool.run(program, frame, all_of(program, "small")).answer == "ok"
        rows = frame.shape[0]
        assert np.array_equal(seen[-1], frame[20:50, 50:90]), rows


def test_a_bad_decision_is_refused_before_a_worker_runs(pool: WorkerPool, frame: np.ndarray):
    program = compile_program(NORMAL)
    with pytest.raises(InvalidDecision):
        pool.run(program, frame, {program.call_sites[0].id: "vqa-small"})
    with pytest.raises(ValueError, match="H x W x 3"):
        pool.run(program, np.zeros((4, 4, 5), np.uint8), all_of(program, "small"))
    assert pool.pids == []


@pytest.mark.parametrize("source", [NESTED_EQUAL, NESTED_HASH], ids=["nested equal", "nested hash"])
def test_a_hostile_run_is_killed_at_its_deadline_while_others_answer(pool: WorkerPool, frame: np.ndarray, source: str):
    hostile, normal = compile_program(source), compile_program(NORMAL)
    pool.run(normal, frame, all_of(normal, "small"))  # one worker up
    result: dict[str, Any] = {}

    def attack() -> None:
        started = time.perf_counter()
        result["trace"] = pool.run(hostile, frame, {})
        result["took"] = time.perf_counter() - started

    thread = threading.Thread(target=attack)
    thread.start()
    answers = []
    while thread.is_alive():
        started = time.perf_counter()
        assert pool.run(normal, frame, all_of(normal, "small")).answer == 1
        answers.append(time.perf_counter() - started)
    thread.join()
    trace = result["trace"]
    assert trace.error is not None and trace.error.kind == "timeout"
    assert result["took"] < 1.5 + 0.5 + 1.0
    assert len(answers) > 3 and sorted(answers)[len(answers) // 2] < 0.1
    assert pool.kills == 1
    deadline = time.monotonic() + 10
    while len(pool.pids) < 2 and time.monotonic() < deadline:  # the replacement starts in the background
        time.sleep(0.05)
    assert len(pool.pids) == 2
    assert pool.run(normal, frame, all_of(normal, "small")).answer == 1


def test_a_killed_run_still_charges_what_it_invoked(pool: WorkerPool, frame: np.ndarray):
    found = "    n = len(ImagePatch(image).find('car'))\n    x = [1]\n"
    program = compile_program(NESTED_EQUAL.replace("    x = [1]\n", found))
    trace = pool.run(program, frame, all_of(program, "small"))
    assert trace.error is not None and trace.error.kind == "timeout"
    assert [i.backend for i in trace.invocations] == ["detect-small"]
    assert trace.cost == trace.invocations[0].cost and trace.executed_sites == [program.call_sites[0].id]


def test_a_killed_run_keeps_the_trace_the_worker_reported(pool: WorkerPool, frame: np.ndarray):
    """Killed at its deadline, a run keeps what the worker reported before the stall: its
    invocations, its memo hits (and their sites as executed), its steps and its printed output,
    the same as an in-process run of the program up to the stall."""
    before_stall = (
        "def execute_command(image):\n"
        "    p = ImagePatch(image)\n"
        "    print('looking for cars')\n"
        "    n = len(p.find('car'))\n"
        "    print('found', n)\n"
        "    seen = p.exists('car')\n"
    )
    stall = (
        "    x = [1]\n    y = [1]\n    for i in range(60):\n        x = [x, x]\n        y = [y, y]\n    return x == y\n"
    )
    killed = compile_program(before_stall + stall)
    trace = pool.run(killed, frame, all_of(killed, "small"))
    assert trace.error is not None and trace.error.kind == "timeout"
    unkilled = compile_program(before_stall + "    return seen\n")
    expected = Executor(pool.backends, pool.limits, retries=1).run(unkilled, frame, all_of(unkilled, "small"))
    assert [hit.site_id for hit in expected.memo_hits] == [unkilled.call_sites[1].id]  # exists answered from memory
    assert _without_latency(trace) | {"answer": None, "error": None} == _without_latency(expected) | {
        "answer": None,
        "error": None,
    }
    assert trace.steps > 0 and trace.output == "looking for cars\nfound 1\n"


def test_the_killed_worker_is_replaced(zoo: Zoo, frame: np.ndarray):
    with WorkerPool(zoo.registry(), ExecutionLimits(timeout_s=0.5), workers=1, kill_margin_s=0.2) as pool:
        normal = compile_program(NORMAL)
        pool.run(normal, frame, all_of(normal, "small"))
        [before] = pool.pids
        assert pool.run(compile_program(NESTED_EQUAL), frame, {}).error.kind == "timeout"  # type: ignore[union-attr]
        assert not _alive(before)
        assert pool.run(normal, frame, all_of(normal, "small")).answer == 1
        [after] = pool.pids
        assert after != before


def test_the_address_space_limit_ends_a_run_with_resource_limit(zoo: Zoo, frame: np.ndarray):
    limits = ExecutionLimits(timeout_s=20, max_memory_mb=0)  # only the worker's RLIMIT_AS stops it
    with WorkerPool(zoo.registry(), limits, workers=1, memory_mb=512) as pool:
        trace = pool.run(compile_program(ROWS), frame, {})
        assert trace.error is not None and trace.error.kind == "resource_limit", trace.error
        assert pool.kills == 1
        normal = compile_program(NORMAL)
        assert pool.run(normal, frame, all_of(normal, "small")).answer == 1


def test_a_worker_holds_no_secrets_and_no_router_sockets(zoo: Zoo, frame: np.ndarray, monkeypatch):
    monkeypatch.setenv("FMPROG_ROUTER_API_KEY", "s" * 32)
    with WorkerPool(zoo.registry(), workers=1) as pool:
        pool.warm()
        [pid] = pool.pids
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(b"FMPROG" in entry or b"KEY" in entry for entry in environment)
        descriptors = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert len([d for d in descriptors if d.startswith("socket:")]) == 1  # the pipe to the pool


def test_closing_the_pool_and_the_parent_s_death_end_the_workers(zoo: Zoo):
    pool = WorkerPool(zoo.registry(), workers=2)
    pool.warm()
    pids = pool.pids
    pool.close()
    assert not any(_alive(pid) for pid in pids)
    script = (
        "from tests.fakes import Zoo\nfrom fmprog.program.workers import WorkerPool\nimport os\n"
        "pool = WorkerPool(Zoo().registry(), workers=1)\npool.warm()\nprint(pool.pids[0], flush=True)\nos._exit(0)\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    command = [sys.executable, "-c", script]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=root, timeout=60)
    orphan = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(orphan)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"
