"""Build the real-video track: each query's reference answer on every frame of ``vtest.avi``, and
how far the reference is from the hand-verified sample.

    python -m benchmarks.make_video_track [--out benchmarks/tracks/video] [--config fmprog/configs/real.yaml]

Runs every query's program with the configuration's dearest backend at each call site (the NoScope
protocol: the reference is the ground truth) on all 795 frames, in this process, and writes the
open-form layout (``<type>/meta_annotation.json``, ``<type>/<i>/annotation.json``, frames in the
camera's order). Then runs each program on the hand-verified frames of ``verified.json`` with the
people marked there as its detections, and writes ``verified_report.json``: per query, the share
of those frames on which the reference agrees with the hand-verified answer. About 5 minutes on
2 cores (the backends' outputs go through the benchmark's output cache, ``--cache``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.harness import load_backends
from benchmarks.vqa.tracks import TrackQuery, save_open, video_ref
from benchmarks.vqa.video import (
    VIDEO,
    VIDEO_QUERIES,
    hand_answers,
    load_verified,
    reference_labels,
    verified_report,
)
from fmprog.backends.config import DEFAULT_CONFIG
from fmprog.vision.video import SAMPLE_VIDEOS, VideoFrames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/tracks/video"))
    parser.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG))
    parser.add_argument("--videos-root", type=Path, default=SAMPLE_VIDEOS)
    parser.add_argument("--verified", type=Path, help="the hand-verified frames (default: <out>/verified.json)")
    parser.add_argument("--cache", type=Path, help="output cache (default: none)")
    parser.add_argument("--frames", type=int, help="only the first N frames (a quick look; not the track)")
    args = parser.parse_args()
    start = time.perf_counter()
    video = VideoFrames(args.videos_root / VIDEO)
    count = len(video) if args.frames is None else min(args.frames, len(video))
    frames = [video[i] for i in range(count)]
    cache = OutputCache(args.cache)
    backends = cached_registry(load_backends(args.config, None, {"detect", "vqa"}), cache)
    labels = reference_labels(VIDEO_QUERIES, frames, backends)
    cache.flush()
    queries = [
        TrackQuery(q.query, q.type, q.program, [video_ref(VIDEO, i) for i in range(count)], answers)
        for q, answers in zip(VIDEO_QUERIES, labels, strict=True)
    ]
    save_open(queries, args.out)

    marked = [m for m in load_verified(args.verified or args.out / "verified.json") if m.index < count]
    hand = hand_answers(VIDEO_QUERIES, [video[m.index] for m in marked], marked)
    reference = [[answers[m.index] for m in marked] for answers in labels]
    report = verified_report(VIDEO_QUERIES, reference, hand, [m.index for m in marked])
    report["hand_answers"] = {q.query: answers for q, answers in zip(VIDEO_QUERIES, hand, strict=True)}
    (args.out / "verified_report.json").write_text(json.dumps(report, indent=1) + "\n")
    seconds = time.perf_counter() - start
    print(f"{len(queries)} queries x {count} frames in {args.out} ({seconds:.0f} s)")
    for row in report["queries"]:
        print(f"  reference vs hand {row['agreement']:.3f}  {row['query']}")
    print(f"  mean {report['agreement']:.3f} over {len(marked)} hand-verified frames")


if __name__ == "__main__":
    main()
