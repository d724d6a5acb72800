"""``fmprog bench``: run the streaming benchmark and write its report under ``--out``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_command(commands: Any) -> None:
    """``fmprog bench`` on the command line's subcommands (the ``fmprog.commands`` entry point)."""
    bench = commands.add_parser(
        "bench",
        help="the streaming VQA benchmark: every policy and baseline on both tracks; report under --out",
    )
    add_arguments(bench)
    bench.set_defaults(handler=_started)


def _started(args: argparse.Namespace) -> int:
    print(f"fmprog bench: reading the tracks, then every policy and baseline on them; report under {args.out}",
          file=sys.stderr, flush=True)  # fmt: skip
    return run(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/vqa"), help="report folder (default: %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="one query per type, 400 frames, one lambda: minutes")
    parser.add_argument(
        "--split",
        choices=("validation", "test"),
        help="validation: tune here; test: what docs/benchmarks.md reports (default: test)",
    )
    parser.add_argument(
        "--binary", type=Path, help="binary track, authors' JSON (default: benchmarks/tracks/<split>/binary.json)"
    )
    parser.add_argument(
        "--open", type=Path, help="open-form track, authors' layout (default: benchmarks/tracks/<split>/open)"
    )
    parser.add_argument(
        "--video",
        type=Path,
        help="real-video track, open-form layout, the split's half of it runs (default: benchmarks/tracks/video)",
    )
    parser.add_argument("--only", help="run these tracks only: binary, open, video, comma-separated")
    parser.add_argument(
        "--config", type=Path, help="backends that answer the synthetic tracks (default: fmprog/configs/synthetic.yaml)"
    )
    parser.add_argument(
        "--video-config", type=Path, help="backends that answer the video track (default: fmprog/configs/real.yaml)"
    )
    parser.add_argument(
        "--videos-root", type=Path, help="folder of the video track's videos (default: Debian opencv-doc's samples)"
    )
    parser.add_argument(
        "--costs",
        help="price backends as the same names in this configuration, or 'own' (default: fmprog/configs/gpu.yaml)",
    )
    parser.add_argument("--lambdas", help="comma-separated lambdas to sweep (default: 0.0001,0.001,0.01)")
    parser.add_argument("--policies", help="learned policies on the program (default: structured,fast,cascade)")
    parser.add_argument("--no-whole-query", action="store_true", help="leave out whole-query routing")
    parser.add_argument(
        "--drift-backend",
        help="binary track: this backend degrades halfway through (default vqa-small; 'none': no drift runs)",
    )
    parser.add_argument("--drift-rate", type=float, help="share of its answers corrupted after the drift (default 0.3)")
    parser.add_argument(
        "--label-fractions",
        help="gated policies: also learn from labels on these shares of frames only (default 0.1,0.01; 'none')",
    )
    parser.add_argument(
        "--label-picks", help="how the runs on fewer labels pick their frames: doubt, random or both (default doubt)"
    )
    parser.add_argument(
        "--teacher-fraction",
        help="gated policies: also learn from a teacher on this share of frames (default 0.1; 'none')",
    )
    parser.add_argument(
        "--no-off-policy", action="store_true", help="leave out the off-policy estimates from the gated run's logs"
    )
    parser.add_argument("--seed", type=int, help="every learned policy's seed (default 42)")
    parser.add_argument(
        "--hyperparameters",
        help="JSON, per algorithm, hyper-parameters over the benchmark's, e.g. "
        '\'{"cascade": {"nu": 0.5}}\' (tune on --split validation)',
    )
    parser.add_argument("--queries-per-type", type=int)
    parser.add_argument("--queries", type=int, help="at most this many queries per track (after --queries-per-type)")
    parser.add_argument("--frames", type=int, help="cut every stream to its first N frames")
    parser.add_argument("--workers", type=int, help="worker processes (default: CPUs, at most 8)")
    parser.add_argument("--cache", type=Path, help="output cache file (default: <out>/cache.sqlite3)")
    parser.add_argument("--coco-root", type=Path, help="COCO root (train2017/...), for the authors' tracks")
    parser.add_argument("--images-root", type=Path, help="folder that image paths in a track are relative to")


def settings_from(args: argparse.Namespace) -> Any:
    from benchmarks.vqa.runner import BenchSettings

    values: dict[str, Any] = {"out": args.out}
    for name in (
        "split",
        "binary",
        "open",
        "video",
        "config",
        "video_config",
        "videos_root",
        "queries_per_type",
        "queries",
        "frames",
        "workers",
        "cache",
        "coco_root",
        "images_root",
        "seed",
    ):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.only:
        only = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = sorted(only - {"binary", "open", "video"})
        if unknown or not only:
            raise ValueError(f"--only takes binary, open and video, not {', '.join(unknown) or 'nothing'}")
        for track in ("binary", "open", "video"):
            if track not in only:
                values[track] = None
    if args.hyperparameters is not None:
        values["hyperparameters"] = json.loads(args.hyperparameters)
    if args.costs is not None:
        values["costs"] = None if args.costs == "own" else Path(args.costs)
    if args.lambdas:
        values["lambdas"] = tuple(float(v) for v in args.lambdas.split(","))
    if args.policies:
        values["policies"] = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    if args.no_whole_query:
        values["whole_query"] = False
    if args.no_off_policy:
        values["off_policy"] = False
    if args.drift_backend is not None:
        values["drift_backend"] = None if args.drift_backend == "none" else args.drift_backend
    if args.drift_rate is not None:
        values["drift_rate"] = args.drift_rate
    if args.label_fractions is not None:
        none = args.label_fractions == "none"
        values["label_fractions"] = () if none else tuple(float(v) for v in args.label_fractions.split(","))
    if args.label_picks is not None:
        values["label_picks"] = tuple(p.strip() for p in args.label_picks.split(",") if p.strip())
    if args.teacher_fraction is not None:
        values["teacher_fraction"] = None if args.teacher_fraction == "none" else float(args.teacher_fraction)
    return BenchSettings.quick(**values) if args.quick else BenchSettings(**values)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from tqdm import tqdm

    from benchmarks.vqa.report import write_report
    from benchmarks.vqa.runner import load_tracks, run_benchmark

    try:
        settings = settings_from(args)
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else [{"loc": (), "msg": str(exc)}]
        for error in errors:
            where = ".".join(str(p) for p in error["loc"])
            print(
                f"error: {where + ': ' if where else ''}{error['msg'].removeprefix('Value error, ')}", file=sys.stderr
            )
        return 2
    total = sum(len(t.queries) for t in load_tracks(settings))
    bar = tqdm(total=total, unit="query", desc="fmprog bench", file=sys.stderr)
    done: dict[str, int] = {}

    def progress(track: str, finished: int) -> None:
        done[track] = finished
        bar.n = sum(done.values())
        bar.set_postfix_str(f"{track} {finished}")

    results = run_benchmark(settings, progress)
    bar.close()
    for path in write_report(results, settings.out):
        print(path)
    return 0
