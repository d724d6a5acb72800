"""Running the whole benchmark: settings, worker processes, and the numbers of every run.

``run_benchmark(settings)`` loads the tracks, replays every query in worker processes (each with
the backends loaded in process behind the shared output cache), and returns a JSON-ready dict:
one entry per (track, policy, lambda) with cost, accuracy or F1, regret to the oracle and the
backend mix, plus per-type breakdowns, curves along the stream and each backend's standalone
accuracy.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from benchmarks.provenance import provenance
from benchmarks.vqa.harness import (
    LEARNED_ON_PROGRAM,
    Drift,
    LabelPlan,
    QueryResult,
    RunStats,
    worker_init,
    worker_replay,
)
from benchmarks.vqa.queries import FRENCH_COLORS, POLYGON_SIDES
from benchmarks.vqa.splits import SPLITS, Split, binary_track, open_track, video_split
from benchmarks.vqa.tracks import ImageResolver, Track, load_binary, load_open
from benchmarks.vqa.video import TRACK_NAME as VIDEO_TRACK
from fmprog.vision.video import SAMPLE_VIDEOS

RunKey = tuple[str, float | None]
Pick = Literal["doubt", "random"]
CURVE_POINTS = 100
DRIFT_WINDOW = 250  # frames per window of the drift's recovery measure
DRIFT_TOLERANCE = 0.02  # back within 2 F1 points of the frames before the drift


class BenchSettings(BaseModel):
    """What ``fmprog bench`` runs; validated before anything loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path = Path("benchmarks/results/vqa")
    split: Split = Field(
        default="test",
        description="Which split the default tracks are (benchmarks/tracks/<split>) and which half of the video "
        "track runs: validation to tune on, test to report (benchmarks/vqa/splits.py).",
    )
    binary: Path | None = Field(
        default=binary_track("test"), description="Binary track (authors' JSON); default: the split's."
    )
    open: Path | None = Field(
        default=open_track("test"), description="Open-form track (authors' layout); default: the split's."
    )
    video: Path | None = Field(
        default=Path("benchmarks/tracks/video"),
        description="Real-video track (open-form layout, frames in the camera's order; answered by video_config).",
    )
    config: Path = Field(
        default=Path("fmprog/configs/synthetic.yaml"), description="The backends that answer the synthetic tracks."
    )
    costs: Path | None = Field(
        default=Path("fmprog/configs/gpu.yaml"),
        description="Synthetic tracks: price each backend as the backend of the same name in this configuration; "
        "None: its own cost.",
    )
    video_config: Path = Field(
        default=Path("fmprog/configs/real.yaml"),
        description="The backends that answer the video track, priced by their own costs (multiply-adds).",
    )
    videos_root: Path = Field(default=SAMPLE_VIDEOS, description="The folder the video track's videos are in.")
    lambdas: tuple[float, ...] = Field(default=(1e-4, 1e-3, 1e-2), min_length=1)
    policies: tuple[str, ...] = LEARNED_ON_PROGRAM
    whole_query: bool = True
    queries_per_type: int | None = Field(default=None, ge=1)
    queries: int | None = Field(
        default=None, ge=1, description="At most this many queries per track (after the per-type cut)."
    )
    frames: int | None = Field(default=None, ge=10, description="Cut every stream to its first N frames.")
    workers: int = Field(default_factory=lambda: max(1, min(os.cpu_count() or 1, 8)), ge=1, le=64)
    cache: Path | None = Field(default=None, description="Output cache (SQLite); default <out>/cache.sqlite3.")
    coco_root: Path | None = None
    images_root: Path | None = None
    seed: int = Field(default=42, ge=0, description="Every learned policy's seed (and the drift's corruption).")
    hyperparameters: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per algorithm, hyper-parameters over the benchmark's own (tune them on the validation split).",
    )
    drift_backend: str | None = Field(
        default="vqa-small",
        description="Binary track, gated policies: this backend degrades halfway (None: no drift run).",
    )
    drift_rate: float = Field(default=0.3, gt=0, le=1, description="Share of the degraded backend's answers corrupted.")
    label_fractions: tuple[float, ...] = Field(
        default=(0.1, 0.01), description="Gated policies: runs that learn from labels on these shares of frames only."
    )
    teacher_fraction: float | None = Field(
        default=0.1, gt=0, le=1, description="Gated policies: a run whose labels come from a teacher on this share."
    )
    label_picks: tuple[Pick, ...] = Field(
        default=("doubt",), min_length=1, description="How the runs on fewer labels pick their frames."
    )
    cold_label_runs: bool = Field(
        default=True, description="The runs on fewer labels also from the base prior alone (no shipped prior)."
    )
    off_policy: bool = Field(
        default=True,
        description="Gated policies at the middle lambda: estimate the other runs from their logged decisions.",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_tracks(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("split") in SPLITS:
            split = values["split"]
            return {"binary": binary_track(split), "open": open_track(split), **values}
        return values

    @model_validator(mode="after")
    def _check(self) -> BenchSettings:
        if self.binary is None and self.open is None and self.video is None:
            raise ValueError("give at least one track (binary, open or video)")
        for lam in self.lambdas:
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"lambda must be finite and >= 0, got {lam}")
        for fraction in self.label_fractions:
            if not 0 < fraction < 1:
                raise ValueError(f"a label fraction is a share of frames in (0, 1), got {fraction}")
        from policy.algorithms import ALGORITHMS, algorithm_class

        unknown = sorted(set(self.policies) - set(ALGORITHMS))
        if unknown:
            raise ValueError(f"unknown policy {unknown[0]!r} (known: {', '.join(sorted(ALGORITHMS))})")
        for algorithm, hyperparameters in self.hyperparameters.items():
            if algorithm not in ALGORITHMS:
                raise ValueError(f"hyper-parameters for unknown policy {algorithm!r}")
            try:  # before any worker starts: a bad name or value fails here, not in every replay
                algorithm_class(algorithm).Params.model_validate(hyperparameters)
            except ValidationError as exc:
                raise ValueError(f"hyper-parameters of {algorithm}: {exc.errors()[0]['msg']} "
                                 f"({'.'.join(map(str, exc.errors()[0]['loc']))})") from None  # fmt: skip
        for path in (self.binary, self.open, self.video, self.config, self.costs, self.video_config):
            if path is not None and not path.exists():
                raise ValueError(f"{path} does not exist")
        if self.video is not None and not self.videos_root.is_dir():
            raise ValueError(f"the videos' folder {self.videos_root} does not exist (install Debian's opencv-doc)")
        if self.drift_backend is not None:
            from fmprog.backends import load_catalog

            served = {b.name for b in load_catalog(self.config).backends}
            if self.drift_backend not in served:
                raise ValueError(f"drift backend {self.drift_backend!r} is not a backend of {self.config}")
        return self

    @staticmethod
    def quick(**overrides: Any) -> BenchSettings:
        """A few minutes on 2 cores: one query per type, short streams, one lambda."""
        values: dict[str, Any] = {"queries_per_type": 1, "frames": 400, "lambdas": (1e-3,)}
        return BenchSettings(**{**values, **overrides})

    def cache_path(self) -> Path:
        return self.cache or self.out / "cache.sqlite3"

    def label_plans(self) -> tuple[LabelPlan, ...]:
        """The runs on fewer labels than every frame's (each fraction, then the teacher's), from
        the shipped prior and, with ``cold_label_runs``, from the base prior (with its run on every
        label)."""
        teacher = (
            ()
            if self.teacher_fraction is None
            else tuple(LabelPlan(self.teacher_fraction, teacher=True, pick=pick) for pick in ("random", "doubt"))
        )
        warm = (*(LabelPlan(f, pick=pick) for pick in self.label_picks for f in self.label_fractions), *teacher)
        if not warm or not self.cold_label_runs:
            return warm
        return (*warm, LabelPlan(warm=False), *(replace(plan, warm=False) for plan in warm))

    def label_lambda(self) -> float:
        """The lambda of the runs on fewer labels (and of the curves): the middle one."""
        return sorted(self.lambdas)[len(self.lambdas) // 2]


def load_tracks(settings: BenchSettings) -> list[Track]:
    tracks = []
    if settings.binary is not None:
        tracks.append(load_binary(settings.binary))
    if settings.open is not None:
        tracks.append(load_open(settings.open))
    if settings.video is not None:
        tracks.append(video_split(load_open(settings.video, VIDEO_TRACK, shuffle=False), settings.split))
    return [t.subset(settings.queries_per_type, settings.frames, settings.queries) for t in tracks]


def track_backends(settings: BenchSettings, track: Track) -> tuple[Path, Path | None]:
    """The configuration that answers a track and the one that prices it (None: its own costs)."""
    if track.name == VIDEO_TRACK:
        return settings.video_config, None
    return settings.config, settings.costs


def reference_run(track: Track) -> str:
    """The run a track's savings and metric deltas are measured against: the monolithic large VQA
    model on the synthetic tracks (the paper's reference), the all-dearest program on the video track
    (its ground truth: the NoScope protocol)."""
    return "static-large" if track.name == VIDEO_TRACK else "monolithic-large"


def run_benchmark(settings: BenchSettings, progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Replay every track; ``progress(track, queries_done)`` is called as queries finish."""
    started = time.perf_counter()
    tracks = load_tracks(settings)
    images = ImageResolver(settings.coco_root, settings.images_root, settings.videos_root)
    setup = {
        "lambdas": settings.lambdas,
        "policies": settings.policies,
        "whole_query": settings.whole_query,
        "seed": settings.seed,
        "hyperparameters": settings.hyperparameters,
        "drift": None if settings.drift_backend is None else Drift(settings.drift_backend, settings.drift_rate),
        "label_plans": settings.label_plans(),
        "label_lambda": settings.label_lambda(),
        "off_policy": settings.off_policy,
    }
    calls: dict[str, Counter] = {}
    results: dict[str, list[QueryResult]] = {}
    standalone: dict[str, Any] = {}
    context = get_context("spawn")  # torch and llama.cpp do not survive fork
    groups: dict[tuple[Path, Path | None], list[Track]] = {}
    for track in tracks:
        groups.setdefault(track_backends(settings, track), []).append(track)
    for (config, costs), members in groups.items():
        synthetic = any(track.name != VIDEO_TRACK for track in members)
        drift = setup["drift"] if synthetic else None  # the drift's backend is one of the synthetic configuration's
        initargs = (config, costs, settings.cache_path(), images)
        with ProcessPoolExecutor(
            settings.workers, mp_context=context, initializer=_init, initargs=(initargs, {**setup, "drift": drift})
        ) as pool:
            for track in members:
                futures = [pool.submit(worker_replay, q, track.kind) for q in track.queries]
                done = []
                for i, future in enumerate(futures):
                    result, stats = future.result()
                    done.append(result)
                    for name, (hits, misses, seconds) in stats.items():
                        key = name if synthetic else f"{name} ({config.name})"
                        calls.setdefault(key, Counter()).update({"hits": hits, "misses": misses, "model_s": seconds})
                    if progress:
                        progress(track.name, i + 1)
                results[track.name] = done
            if synthetic:  # the zoo's evaluation sets are the synthetic zoo's
                standalone = pool.submit(_standalone).result()
    summaries_ = summaries(tracks, results, settings.lambdas, setup["drift"])
    for track in tracks:
        config, costs = track_backends(settings, track)
        summaries_[track.name]["config"] = str(config)
        summaries_[track.name]["costs"] = str(costs or config)
        if track.name == VIDEO_TRACK:
            summaries_[track.name]["verified"] = _verified(settings.video)
    return {
        "settings": settings.model_dump(mode="json"),
        "split": settings.split,
        "provenance": provenance(),
        "seconds": round(time.perf_counter() - started, 1),
        "tracks": summaries_,
        "backend_calls": {name: dict(c) for name, c in sorted(calls.items())},
        "standalone": standalone,
    }


def drift_recovery(
    results: Sequence[QueryResult], key: RunKey, at: float, window: int = DRIFT_WINDOW, step: int = 25
) -> dict[str, Any]:
    """How a run under drift recovers, on a binary track: F1 pooled over every query's frames in a
    window (a window holds too few positives of one query for a per-query F1) before the drift
    (the ``window`` frames before it), right after it, and the first window after it that is back
    within ``DRIFT_TOLERANCE`` of the frames before, as frames after the drift (``None``: never
    within the stream)."""
    predicted = [q.runs[key].predicted_positive for q in results]
    actual = [np.array([y == "yes" for y in q.labels]) for q in results]
    length = min(len(q.runs[key].cost) for q in results)
    start = int(length * at)
    before = pooled_f1(predicted, actual, max(0, start - window), start)
    after = pooled_f1(predicted, actual, start, start + window)
    recovered = next(
        (
            k
            for k in range(0, length - start - window + 1, step)
            if pooled_f1(predicted, actual, start + k, start + k + window) >= before - DRIFT_TOLERANCE
        ),
        None,
    )
    return {
        "policy": key[0],
        "lambda": key[1],
        "drift_frame": start,
        "window": window,
        "f1_before": before,
        "f1_first_window_after": after,
        "frames_to_recover": recovered,
    }


def summaries(
    tracks: Sequence[Track], results: dict[str, list[QueryResult]], lambdas: Sequence[float], drift: Drift | None = None
) -> dict[str, dict[str, Any]]:
    """Each track's summary; an open-form track also without its knowledge queries, where the
    zoo's VQA scores 0 (the monolithic baselines cannot answer them; programs ask an LLM), which
    flatters every program against them."""
    out = {}
    for track in tracks:
        out[track.name] = summarize_track(track, results[track.name], lambdas, reference_run(track))
        drifted = [k for k in results[track.name][0].runs if k[0].endswith("-drift")] if results[track.name] else []
        if drift is not None and drifted:
            out[track.name]["drift"] = {
                "backend": drift.backend,
                "rate": drift.rate,
                "runs": [drift_recovery(results[track.name], key, drift.at) for key in drifted],
            }
        rest = [q for q in results[track.name] if q.type != "knowledge"]
        if track.kind == "open" and 0 < len(rest) < len(results[track.name]):
            name = f"{track.name}-without-knowledge"
            out[name] = summarize_track(replace(track, name=name), rest, lambdas)
    return out


def _verified(track: Path | None) -> dict[str, Any] | None:
    """The video track's hand-verified check of its reference (``verified_report.json``, written
    with the track by ``benchmarks.make_video_track``), without the per-frame answers."""
    path = None if track is None else track / "verified_report.json"
    if path is None or not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {key: value for key, value in report.items() if key != "hand_answers"}


def _init(initargs: tuple, setup: dict[str, Any]) -> None:
    worker_init(*initargs, **setup)


# -- numbers -------------------------------------------------------------------------------------------


def pooled_f1(predicted: Sequence[np.ndarray], actual: Sequence[np.ndarray], begin: int, end: int) -> float:
    """F1 over frames ``begin:end`` of every stream together (a window holds too few positives of
    one stream for its own F1): ``predicted`` and ``actual`` hold a boolean array per stream."""
    return f1_score(np.concatenate([p[begin:end] for p in predicted]), np.concatenate([y[begin:end] for y in actual]))


def f1_score(predicted: np.ndarray, actual: np.ndarray) -> float:
    tp = int(np.sum(predicted & actual))
    fp = int(np.sum(predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _metric(kind: str, runs: Sequence[tuple[RunStats, Sequence[str]]]) -> float:
    """F1 on the positives averaged over queries (binary), or accuracy over all frames (open)."""
    if kind == "binary":
        return float(
            np.mean([f1_score(r.predicted_positive, np.array([y == "yes" for y in labels])) for r, labels in runs])
        )
    return float(np.sum([r.correct.sum() for r, _ in runs]) / np.sum([len(r.correct) for r, _ in runs]))


def _numbers(kind: str, key: RunKey, results: Sequence[QueryResult]) -> dict[str, Any]:
    runs = [(q.runs[key], q.labels) for q in results]
    frames = sum(len(r.cost) for r, _ in runs)
    cost = math.fsum(math.fsum(r.cost) for r, _ in runs)
    invocations: Counter = Counter()
    for r, _ in runs:
        invocations.update(r.invocations)
    numbers: dict[str, Any] = {
        "metric": _metric(kind, runs),
        "accuracy": float(sum(int(r.correct.sum()) for r, _ in runs) / frames),
        "cost_per_frame": cost / frames,
        "frames": frames,
        "backend_mix": {name: n / frames for name, n in sorted(invocations.items())},
    }
    taught = [r.teacher_cost for r, _ in runs if r.teacher_cost is not None]
    if taught:
        numbers["teacher_cost_per_frame"] = math.fsum(math.fsum(t) for t in taught) / frames
    lam = key[1]
    if lam is not None:
        reward = sum(math.fsum(r.task) - lam * math.fsum(r.cost) for r, _ in runs)
        best = math.fsum(q.best_reward[lam] for q in results)
        numbers["regret_per_frame"] = (best - reward) / frames
    return numbers


def summarize_track(
    track: Track, results: list[QueryResult], lambdas: Sequence[float], reference_name: str = "monolithic-large"
) -> dict[str, Any]:
    """Every run's numbers on a track (with its saving and metric change against the monolithic
    large model and against the track's reference run), its per-type breakdown, and curves along
    the stream."""
    keys = list(dict.fromkeys(key for q in results for key in q.runs))
    entries = []
    monolithic = _numbers(track.kind, ("monolithic-large", None), results)
    reference = _numbers(track.kind, (reference_name, None), results)
    plans = results[0].plans if results else {}
    for key in keys:
        numbers = _numbers(track.kind, key, results)
        algorithm, plan = plans.get(key, (key[0], None))
        learned = key[1] is not None
        types = {}
        for type_ in dict.fromkeys(q.type for q in results):
            members = [q for q in results if q.type == type_]
            part = _numbers(track.kind, key, members)
            types[type_] = {"metric": part["metric"], "cost_per_frame": part["cost_per_frame"]}
        entries.append(
            {
                "track": track.name,
                "policy": key[0],
                "lambda": key[1],
                # the share of frames whose label the run learned from (none for what does not learn)
                "label_fraction": (plan.fraction if plan else 1.0) if learned else None,
                "teacher": bool(plan and plan.teacher),
                "teacher_pick": ("doubt" if plan.by_doubt else "random") if plan and plan.teacher else None,
                "label_pick": ("doubt" if plan.by_doubt else "random") if plan and not plan.teacher else None,
                "algorithm": plan.baseline(algorithm) if plan else key[0],
                **numbers,
                "saving_vs_monolithic_large": 1 - numbers["cost_per_frame"] / monolithic["cost_per_frame"],
                "metric_delta_vs_monolithic_large": numbers["metric"] - monolithic["metric"],
                "saving_vs_reference": 1 - numbers["cost_per_frame"] / reference["cost_per_frame"],
                "metric_delta_vs_reference": numbers["metric"] - reference["metric"],
                "by_type": types,
            }
        )
    curve_lambda = sorted(lambdas)[len(lambdas) // 2]
    curves = {
        _label(key): _curve(
            [q.runs[key] for q in results],
            None if key[1] is None else ([q.best_frames[key[1]] for q in results], key[1]),
        )
        for key in keys
        if key[1] is None or key[1] == curve_lambda
    }
    fewer = sorted(key[0] for key in plans)
    algorithms = sorted({algorithm for algorithm, _ in plans.values()})
    return {
        "kind": track.kind,
        "metric": "f1" if track.kind == "binary" else "accuracy",
        "reference": reference_name,
        # at the curves' lambda: the runs on fewer labels, and those with their algorithm on every label
        "label_runs": [_label((name, curve_lambda)) for name in fewer],
        "label_curves": [_label((name, curve_lambda)) for name in algorithms + fewer],
        "queries": [
            {
                "query": q.query,
                "type": q.type,
                "frames": len(q.labels),
                "sites": q.sites,
                "configurations": q.configurations,
            }
            for q in results
        ],
        "entries": entries,
        "off_policy": off_policy_summary(track.kind, results),
        "curve_lambda": curve_lambda,
        "curves": curves,
    }


def off_policy_summary(kind: str, results: Sequence[QueryResult]) -> list[dict[str, Any]]:
    """Per policy estimated off-policy: its live numbers on the track beside each estimator's (the
    metric of an estimate as the live one's: F1 averaged over queries, or accuracy over frames; cost
    per frame over frames), and how much the estimates are worth (``mean_weight``, 1 under full
    coverage, and ``effective_runs``, summed over queries)."""
    pairs: dict[tuple, list[tuple[QueryResult, Any]]] = {}
    for q in results:
        for estimate in q.off_policy:
            pairs.setdefault((estimate.logged, estimate.live, estimate.evaluation.target), []).append((q, estimate))
    summary = []
    for (logged, live, target), members in pairs.items():
        queries = [q for q, _ in members]
        evaluations = [e.evaluation for _, e in members]
        frames = np.array([e.runs for e in evaluations], float)
        row: dict[str, Any] = {
            "logged": _label(logged),
            "target": target,
            "live": {
                k: v for k, v in _numbers(kind, live, queries).items() if k in ("metric", "accuracy", "cost_per_frame")
            },
            "runs": int(frames.sum()),
            "effective_runs": float(sum(e.effective_runs for e in evaluations)),
            "mean_weight": float(np.average([e.mean_weight for e in evaluations], weights=frames)),
            "unresolved": sum(e.unresolved for e in evaluations),
            "uncovered": sorted({gap for e in evaluations for gap in e.uncovered}),
            "live_run": _label(live),
        }
        for name in ("ips", "snips", "dr"):
            estimates = [getattr(e, name) for e in evaluations]
            if any(x.cost_per_frame is None for x in estimates):
                row[name] = None
                continue
            metric = [x.f1 if kind == "binary" else x.accuracy for x in estimates]
            row[name] = {
                "metric": float(np.mean(metric)) if kind == "binary" else float(np.average(metric, weights=frames)),
                "accuracy": float(np.average([x.accuracy for x in estimates], weights=frames)),
                "cost_per_frame": float(np.average([x.cost_per_frame for x in estimates], weights=frames)),
            }
        summary.append(row)
    return summary


def _label(key: RunKey) -> str:
    return key[0] if key[1] is None else f"{key[0]} (lambda {key[1]:g})"


def _curve(runs: Sequence[RunStats], best: tuple[Sequence[np.ndarray], float] | None = None) -> dict[str, list[float]]:
    """Mean over queries, by stream position: cumulative cost per query, running accuracy and,
    for a learned policy (``best``: each query's hindsight-best reward per frame, and the lambda),
    the regret per frame so far (the hindsight-best reward less the policy's ``task - lambda * cost``)."""
    length = min(len(r.cost) for r in runs)
    cost = np.mean([r.cost[:length] for r in runs], axis=0)
    correct = np.mean([r.correct[:length] for r in runs], axis=0)
    positions = np.unique(np.linspace(0, length - 1, min(CURVE_POINTS, length)).round().astype(int))
    cumulative = np.cumsum(cost)
    so_far = np.arange(1, length + 1)
    running = np.cumsum(correct) / so_far
    curve = {
        "frame": [int(p) + 1 for p in positions],
        "cumulative_cost": [float(cumulative[p]) for p in positions],
        "running_accuracy": [float(running[p]) for p in positions],
    }
    if best is not None:
        frames, lam = best
        regret = np.zeros(length)
        for r, b in zip(runs, frames, strict=True):
            regret += b[:length] - (r.task[:length] - lam * r.cost[:length])
        curve["regret_per_frame"] = [float(v) for v in (np.cumsum(regret / len(runs)) / so_far)[positions]]
    return curve


# -- standalone accuracy of each backend -------------------------------------------------------------------


def _standalone() -> dict[str, Any]:
    """Each backend alone: detect and VQA on the zoo's held-out evaluation sets (per difficulty),
    LLMs on the knowledge the open-form track asks for (polygon sides, French colour names)."""
    from benchmarks.vqa.harness import _WORKER
    from fmprog.zoo.evaluate import evaluate

    backends = _WORKER["setup"].backends  # type: ignore[attr-defined]
    report: dict[str, Any] = {}
    knowledge = [(f"How many sides does a {s} have? Answer with a number.", str(n)) for s, n in POLYGON_SIDES.items()]
    knowledge += [
        (f"What is the French word for the color {c}? Answer with one word.", f) for c, f in FRENCH_COLORS.items()
    ]
    for backend in backends.values():
        function = backend.function.value
        call = getattr(backend.model, function)
        if function == "llm":
            right = sum(expected in str(call(prompt)).lower() for prompt, expected in knowledge)
            report[backend.name] = {
                "function": function,
                "cost": backend.cost,
                "knowledge_accuracy": right / len(knowledge),
            }
            continue
        if function not in ("detect", "vqa"):  # the zoo has evaluation sets for these two only
            continue
        runner = lambda images, texts, _call=call: [_call(i, t) for i, t in zip(images, texts, strict=True)]  # noqa: E731
        scores = {d: evaluate(runner, function, d, n=150).score for d in ("easy", "medium", "hard")}
        report[backend.name] = {"function": function, "cost": backend.cost, "accuracy": scores}
    return report
