"""The replay with real zoo backends (detect and VQA, in process) on a short binary stream, and
``fmprog bench`` end to end in a worker process, writing its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.harness import ReplaySetup, load_backends, replay_query
from benchmarks.vqa.queries import binary_queries
from benchmarks.vqa.tracks import ImageResolver, build_streams, save_binary
from launcher.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG, PRICES = ROOT / "deploy" / "config" / "cpu.yaml", ROOT / "deploy" / "config" / "gpu.yaml"


@pytest.fixture(scope="module")
def vision_config(tmp_path_factory):
    """The CPU configuration's vision backends (the binary track needs no LLM and reads no text)."""
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    config["backends"] = [b for b in config["backends"] if b["function"] in ("detect", "vqa")]
    path = tmp_path_factory.mktemp("config") / "vision.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stream():
    return build_streams([binary_queries()[14]], binary_frames=120, binary_positives=6)[0]


def test_replay_runs_every_baseline_and_policy(vision_config, stream):
    backends = cached_registry(load_backends(vision_config, PRICES), OutputCache())
    setup = ReplaySetup(backends=backends, images=ImageResolver(), lambdas=(1e-3, 1e-2))
    result = replay_query(stream, "binary", setup)
    assert result.configurations == 16 and len(result.sites) == 4
    runs = result.runs
    assert set(runs) == {
        ("static-small", None), ("static-large", None), ("monolithic-small", None),
        ("monolithic-large", None), ("oracle", None), ("random", None),
        ("structured", 1e-3), ("fast", 1e-3), ("whole_query", 1e-3),
        ("structured", 1e-2), ("fast", 1e-2), ("whole_query", 1e-2),
    }  # fmt: skip
    for stats in runs.values():
        assert len(stats.cost) == len(stream.frames)
    # priced as the production backends of the same names
    assert np.all(runs[("monolithic-large", None)].cost == 73400)
    assert set(runs[("whole_query", 1e-3)].invocations) <= {"vqa-small", "vqa-large"}
    assert set(runs[("static-small", None)].invocations) <= {"detect-small", "vqa-small"}
    # the oracle is right whenever any configuration is, at no more cost than a right static program
    oracle = runs[("oracle", None)]
    for name in ("static-small", "static-large", "structured", "fast", "random"):
        key = (name, None) if name.startswith("static") or name == "random" else (name, 1e-3)
        assert np.all(oracle.correct >= runs[key].correct)
        right = runs[key].correct
        assert np.all(oracle.cost[right] <= runs[key].cost[right] + 1e-9)
    # no policy over the program's configurations beats the hindsight-best reward, at any lambda;
    # the oracle's cheapest right answer is that best only where lambda makes right answers pay
    for lam in (1e-3, 1e-2):
        best = result.best_reward[lam]
        for key in (("structured", lam), ("fast", lam), ("random", None), ("oracle", None), ("static-large", None)):
            assert runs[key].task.sum() - lam * runs[key].cost.sum() <= best + 1e-6
    # the program's detector short-circuits: far cheaper than one large VQA call per frame
    assert runs[("static-large", None)].cost.mean() < 0.2 * 73400


def test_replay_runs_the_cascade_through_the_executor_with_its_reference_lines(vision_config, stream):
    backends = cached_registry(load_backends(vision_config, PRICES), OutputCache())
    setup = ReplaySetup(
        backends=backends, images=ImageResolver(), lambdas=(1e-3,), policies=("cascade",), whole_query=False
    )
    runs = replay_query(stream, "binary", setup).runs
    assert {("static-detect-large", None), ("cascade-fixed", None), ("cascade", 1e-3)} <= set(runs)
    assert ("fast", 1e-3) not in runs
    for key in (("static-detect-large", None), ("cascade-fixed", None), ("cascade", 1e-3)):
        assert len(runs[key].cost) == len(stream.frames)
    assert set(runs[("static-detect-large", None)].invocations) <= {"detect-large", "vqa-small"}
    # the hand-fixed rule: the dear detector, the cheap VQA, the dear VQA only as its escalation
    fixed = runs[("cascade-fixed", None)].invocations
    assert set(fixed) <= {"detect-large", "vqa-small", "vqa-large"} and fixed["vqa-large"] <= fixed["vqa-small"]
    learned = runs[("cascade", 1e-3)].invocations
    assert set(learned) <= {"detect-small", "detect-large", "vqa-small", "vqa-large"}
    assert learned["vqa-large"] <= learned["vqa-small"]  # asked only as an escalation


def test_fmprog_bench_writes_the_report(vision_config, stream, tmp_path, capsys):
    save_binary([stream], tmp_path / "tracks" / "binary.json")
    out = tmp_path / "report"
    code = main(
        ["bench", "--out", str(out), "--only", "binary", "--binary", str(tmp_path / "tracks" / "binary.json"),
         "--config", str(vision_config), "--lambdas", "0.001", "--workers", "1", "--frames", "60"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    track = results["tracks"]["binary"]
    policies = {(e["policy"], e["lambda"]) for e in track["entries"]}
    assert ("structured", 0.001) in policies and ("oracle", None) in policies
    mono = next(e for e in track["entries"] if e["policy"] == "monolithic-large")
    assert mono["cost_per_frame"] == 73400 and mono["saving_vs_monolithic_large"] == 0
    learned = next(e for e in track["entries"] if e["policy"] == "fast")
    assert learned["regret_per_frame"] >= 0 and learned["frames"] == 60
    assert learned["backend_mix"]["detect-small"] + learned["backend_mix"].get("detect-large", 0) >= 1
    assert set(results["standalone"]) == {"detect-small", "detect-large", "vqa-small", "vqa-large"}
    assert results["backend_calls"]["detect-small"]["misses"] > 0
    for name in ("results.md", "binary_pareto.png", "binary_stream.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "binary_pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "| oracle |" in (out / "results.md").read_text()


def test_fmprog_bench_refuses_bad_settings(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path), "--lambdas", "-1"]) == 2
    assert "lambda must be finite and >= 0" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--policies", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--binary", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


POOL_SCRIPT = """
import os, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from fmprog.program.workers import exit_with_parent

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=exit_with_parent, initargs=(0.1,))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_replay_workers_exit_when_their_parent_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        worker = int(parent.stdout.readline())
        assert _running(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(worker), "the pool's worker outlived its parent"
    finally:
        parent.kill()
