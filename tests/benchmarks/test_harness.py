"""The replay with real zoo backends (detect and VQA, in process) on a short binary stream, and
``fmprog bench`` end to end in a worker process, writing its report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.harness import (
    Drift,
    LabelPlan,
    QueryResult,
    ReplaySetup,
    RunStats,
    degrading,
    load_backends,
    policy_spec,
    replay_gated,
    replay_query,
)
from benchmarks.vqa.queries import binary_queries
from benchmarks.vqa.runner import drift_recovery, summaries
from benchmarks.vqa.tracks import ImageResolver, Track, build_streams, save_binary
from fmprog.off_policy import LoggedRun, Target, evaluate
from fmprog.program import Executor, compile_program
from launcher.cli import main
from policy.algorithms import build_policy

ROOT = Path(__file__).resolve().parents[2]
CONFIG, PRICES = ROOT / "fmprog" / "configs" / "synthetic.yaml", ROOT / "fmprog" / "configs" / "gpu.yaml"


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
    setup = ReplaySetup(backends=backends, images=ImageResolver(), lambdas=(1e-3, 1e-2), label_lambda=1e-3)
    result = replay_query(stream, "binary", setup)
    assert result.configurations == 16 and len(result.sites) == 4
    # the learned runs at 1e-3 estimate the others; another lambda where the decisions say how
    # they were drawn (structured's score spreads), not from fast's
    estimated = {(e.logged, e.evaluation.target): e for e in result.off_policy}
    assert (("structured", 1e-3), "lambda=0.01") in estimated and (("fast", 1e-3), "lambda=0.01") not in estimated
    assert estimated[(("structured", 1e-3), "lambda=0.01")].live == ("structured", 1e-2)
    for algorithm in ("structured", "fast"):
        static = estimated[((algorithm, 1e-3), "static-cheapest")].evaluation
        assert static.runs == len(stream.frames) and static.skipped == 0 and static.uncovered == []
    runs = result.runs
    assert set(runs) == {
        ("static-small", None), ("static-large", None), ("monolithic-small", None),
        ("monolithic-large", None), ("oracle", None), ("random", None),
        ("structured", 1e-3), ("fast", 1e-3), ("whole_query", 1e-3),
        ("structured", 1e-2), ("fast", 1e-2), ("whole_query", 1e-2),
        ("cascade", 1e-3), ("cascade", 1e-2), ("static-detect-large", None), ("cascade-fixed", None),
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


def test_the_gated_runs_logs_estimate_the_other_runs_beside_them(vision_config, stream):
    backends = cached_registry(load_backends(vision_config, PRICES), OutputCache())
    setup = ReplaySetup(
        backends=backends, images=ImageResolver(), lambdas=(1e-3, 1e-2), policies=("cascade",), whole_query=False,
        label_lambda=1e-3,
    )  # fmt: skip
    result = replay_query(stream, "binary", setup)
    assert {e.logged for e in result.off_policy} == {("cascade", 1e-3)}
    estimates = {e.evaluation.target: e for e in result.off_policy}
    assert set(estimates) == {
        "lambda=0.01",
        "static-cheapest",
        "static-largest",
        "static:detect=detect-large",
        "random",
    }
    assert {e.logged for e in estimates.values()} == {("cascade", 1e-3)}
    assert estimates["lambda=0.01"].live == ("cascade", 1e-2)
    for estimate in estimates.values():
        assert estimate.evaluation.runs == len(stream.frames) and estimate.evaluation.skipped == 0
    # the learned cascade asks vqa-large only to re-ask: all-largest's runs that ask a question are
    # never logged (those that find nothing to ask about are)
    largest = estimates["static-largest"].evaluation
    assert any("vqa-large" in gap for gap in largest.uncovered)
    assert largest.matched < largest.runs
    # the warm-started cascade never runs the cheap detector first, so its log cannot say what
    # all-cheapest costs; a cold one (the base prior alone, plain Thompson draws) flips coins
    # between the detectors and logs all-cheapest runs (deterministically: seeded), whose cost is
    # all-cheapest's
    program, frames = compile_program(stream.program), [ImageResolver()(ref) for ref in stream.frames]
    plain = policy_spec(program, backends, 1e-3, "cascade", setup.seed, "binary", extra={"nu": 1.0})
    cold = LabelPlan(warm=False).spec(plain)
    log: list[LoggedRun] = []
    replay_gated(cold, Executor(backends), program, frames, stream.labels, "binary", log=log)
    [cheapest] = evaluate([Target(kind="static", backends="cheapest")], log, cold.sites, "binary", 1e-3)
    assert cheapest.runs == len(frames) and cheapest.matched >= 10, cheapest.matched
    live = result.runs[("static-small", None)]
    assert cheapest.snips.cost_per_frame == pytest.approx(float(live.cost.mean()), rel=0.15)  # 0.08 off


def test_the_runs_on_fewer_labels_learn_from_the_frames_the_budget_asks_for(vision_config, stream):
    backends = cached_registry(load_backends(vision_config, PRICES), OutputCache())
    plans = (
        LabelPlan(0.1),
        LabelPlan(0.1, pick="random"),
        LabelPlan(0.1, teacher=True, pick="doubt"),
        LabelPlan(0.5, teacher=True),
        LabelPlan(warm=False),
    )
    setup = ReplaySetup(
        backends=backends, images=ImageResolver(), lambdas=(1e-3,), policies=("cascade",), whole_query=False,
        label_plans=plans, label_lambda=1e-3,
    )  # fmt: skip
    result = replay_query(stream, "binary", setup)
    runs = result.runs
    assert result.plans[("cascade-cold", 1e-3)] == ("cascade", LabelPlan(warm=False))
    names = {"cascade-labels-0.1", "cascade-labels-random-0.1", "cascade-teacher-doubt-0.1", "cascade-teacher-0.5"}
    names.add("cascade-cold")
    assert {(name, 1e-3) for name in names} <= set(runs)
    assert runs[("cascade-labels-0.1", 1e-3)].teacher_cost is None
    # the teacher by doubt ran on at most the budget's frames (one token to start, 0.1 a frame),
    # the one at random on about half; each charged the all-largest configuration's cost there
    large = runs[("static-large", None)].cost
    for name, most in (
        ("cascade-teacher-doubt-0.1", 0.1 * len(stream.frames) + 1),
        ("cascade-teacher-0.5", 0.8 * len(stream.frames)),
    ):
        teacher = runs[(name, 1e-3)].teacher_cost
        taught = teacher > 0
        assert 0 < taught.sum() <= most, name
        assert np.allclose(teacher[taught], large[taught])
    # the policy learns from the frames whose label was asked for only
    program, frames = compile_program(stream.program), [ImageResolver()(ref) for ref in stream.frames]
    policy = build_policy(policy_spec(program, backends, 1e-3, "cascade", 0))
    replay_gated(policy.spec, Executor(backends), program, frames, stream.labels, "binary", policy, plan=plans[0])
    assert 0 < policy.observed <= 0.1 * len(frames) + 1


def test_a_drift_corrupts_the_backend_from_its_frame_on(vision_config):
    """Every answer of the degraded backend flipped from the drift on (rate 1): the hand-fixed
    cascade (which asks the cheap VQA about every red candidate) answers as before up to the drift;
    after it, each flipped "yes" is a "no" about a found candidate, which it re-asks of the dear VQA."""
    built = build_streams([binary_queries()[0]], binary_frames=60, binary_positives=10)[0]
    # built streams list positives first: reversed, they come after the drift
    stream = replace(built, frames=built.frames[::-1], labels=built.labels[::-1])
    backends = cached_registry(load_backends(vision_config, PRICES), OutputCache())
    setup = ReplaySetup(
        backends=backends, images=ImageResolver(), lambdas=(1e-3,), policies=("cascade",), whole_query=False,
        random=False, drift=Drift("vqa-small", rate=1.0, at=0.5),
    )  # fmt: skip
    runs = replay_query(stream, "binary", setup).runs
    assert {("cascade-drift", 1e-3), ("cascade-fixed-drift", None)} <= set(runs)
    fixed, drifted = runs[("cascade-fixed", None)], runs[("cascade-fixed-drift", None)]
    half = len(stream.frames) // 2
    np.testing.assert_array_equal(fixed.predicted_positive[:half], drifted.predicted_positive[:half])
    assert drifted.invocations["vqa-large"] > fixed.invocations["vqa-large"]
    assert len(runs[("cascade-drift", 1e-3)].cost) == len(stream.frames)
    # a detector that degrades loses each detection at the rate
    drifting, switch = degrading(backends, Drift("detect-large", rate=1.0), frames=10, seed=0)
    frame = ImageResolver()(stream.frames[-1])  # a positive: there is a red triangle to find
    switch.at_frame(4)
    assert drifting["detect-large"].model.detect(frame, "red triangle")
    switch.at_frame(5)
    assert drifting["detect-large"].model.detect(frame, "red triangle") == []


def _result(type_: str, correct: list[bool], predicted: list[bool], labels: list[str]) -> QueryResult:
    n = len(correct)
    stats = RunStats(np.array(correct), np.ones(n), np.zeros(n), np.array(predicted))
    return QueryResult(
        query=type_, type=type_, kind="open", labels=labels,
        runs={("p", None): stats, ("p-drift", 0.1): stats, ("monolithic-large", None): stats},
        configurations=1, sites=["s"], best_frames={0.1: np.zeros(n)},
    )  # fmt: skip


def test_the_open_track_is_also_summarised_without_its_knowledge_queries():
    results = [
        _result("spatial", [True] * 4, [False] * 4, ["a"] * 4),
        _result("knowledge", [False] * 4, [False] * 4, ["b"] * 4),
    ]
    track = Track("open", "open")
    out = summaries([track], {"open": results}, [0.1])
    assert set(out) == {"open", "open-without-knowledge"}
    entry = lambda name: next(e for e in out[name]["entries"] if e["policy"] == "p")  # noqa: E731
    assert entry("open")["metric"] == 0.5 and entry("open-without-knowledge")["metric"] == 1.0


def test_drift_recovery_counts_frames_until_the_pooled_f1_is_back():
    """Right on every positive, then wrong on all of them for 100 frames after the drift."""
    labels = ["yes" if i % 10 == 0 else "no" for i in range(1000)]
    truth = np.array([y == "yes" for y in labels])
    predicted = truth.copy()
    predicted[500:600] = False
    result = _result("t", list(predicted == truth), list(predicted), labels)
    report = drift_recovery([result], ("p-drift", 0.1), at=0.5, window=100, step=25)
    assert report["f1_before"] == 1.0 and report["f1_first_window_after"] == 0.0
    assert report["frames_to_recover"] == 100
    predicted[500:] = False
    never = drift_recovery(
        [_result("t", list(predicted == truth), list(predicted), labels)], ("p-drift", 0.1), 0.5, 100
    )
    assert never["frames_to_recover"] is None


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
    # the regret curve ends at the run's regret per frame
    assert track["curves"]["fast (lambda 0.001)"]["regret_per_frame"][-1] == pytest.approx(learned["regret_per_frame"])
    assert "regret_per_frame" not in track["curves"]["oracle"]
    assert learned["backend_mix"]["detect-small"] + learned["backend_mix"].get("detect-large", 0) >= 1
    assert set(results["standalone"]) == {"detect-small", "detect-large", "vqa-small", "vqa-large"}
    assert results["backend_calls"]["detect-small"]["misses"] > 0
    fewer = {(e["policy"], e["label_fraction"], e["teacher"], e["algorithm"]) for e in track["entries"]}
    assert {
        ("cascade-labels-0.1", 0.1, False, "cascade"),
        ("cascade-cold-teacher-0.1", 0.1, True, "cascade-cold"),
    } <= fewer
    taught = next(e for e in track["entries"] if e["policy"] == "cascade-teacher-doubt-0.1")
    assert taught["teacher_pick"] == "doubt" and "teacher_cost_per_frame" in taught
    assert "| cascade-cold | 0.001 | 1% |" in (out / "results.md").read_text()
    for name in ("results.md", "binary_pareto.png", "binary_stream.png", "binary_labels.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "binary_pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "| oracle |" in (out / "results.md").read_text()
    estimated = {(row["logged"], row["target"]) for row in track["off_policy"]}
    for logged in ("cascade (lambda 0.001)", "structured (lambda 0.001)", "fast (lambda 0.001)"):
        assert {(logged, "static-cheapest"), (logged, "static-largest"), (logged, "random")} <= estimated
    assert "| structured (lambda 0.001) | static-cheapest |" in (out / "results.md").read_text()


def test_fmprog_bench_refuses_bad_settings(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path), "--lambdas", "-1"]) == 2
    assert "lambda must be finite and >= 0" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--policies", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--binary", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--drift-backend", "nope"]) == 2
    assert "not a backend" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--hyperparameters", '{"cascade": {"nu": -1}}']) == 2
    assert "hyper-parameters of cascade" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--hyperparameters", '{"cascade": {"bogus": 1}}']) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--hyperparameters", '{"oracle": {}}']) == 2
    assert "unknown policy 'oracle'" in capsys.readouterr().err


def test_a_run_takes_a_seed_and_an_algorithms_hyperparameters_over_the_benchmarks(vision_config, stream):
    import argparse

    from benchmarks.vqa.cli import add_arguments, settings_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--seed", "7", "--hyperparameters", '{"cascade": {"nu": 0.5}}'])
    settings = settings_from(args)
    assert settings.seed == 7 and settings.hyperparameters == {"cascade": {"nu": 0.5}}
    backends = cached_registry(load_backends(vision_config, PRICES), OutputCache())
    extra = settings.hyperparameters["cascade"]
    spec = policy_spec(compile_program(stream.program), backends, 1e-3, "cascade", settings.seed, "binary", extra)
    assert spec.seed == 7 and spec.hyperparameters == {"kind": "binary", "nu": 0.5}
    assert build_policy(spec).params.nu == 0.5


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


def test_the_prior_learns_the_detectors_from_every_configuration_of_each_frame(vision_config):
    """The prior script's counterfactual evidence: on every frame both detectors get a target
    (their reward against the detectors' mean, so the two sum to zero), at the site's choice
    features; on a stream rich in positives the dear detector, which finds what the cheap one
    misses, comes out ahead."""
    from benchmarks.cascade_prior import detector_evidence
    from benchmarks.vqa.harness import policy_spec
    from fmprog.program import Executor, compile_program

    backends = cached_registry(load_backends(vision_config, PRICES), OutputCache())
    stream = build_streams([binary_queries()[0]], binary_frames=40, binary_positives=20)[0]
    program = compile_program(stream.program)
    spec = policy_spec(program, backends, 1e-3, "cascade", seed=0, kind="binary")
    frames = [ImageResolver()(ref) for ref in stream.frames]
    evidence = detector_evidence(spec, program, Executor(backends), backends, frames, stream.labels)
    large, small = (evidence[f"binary:authors/detect/2/choice/{role}"] for role in ("dearest", "cheapest"))
    assert large.n == small.n == len(frames)
    np.testing.assert_allclose(large.xty + small.xty, 0, atol=1e-9)
    assert large.xty[0] > 0
