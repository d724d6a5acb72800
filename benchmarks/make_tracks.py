"""Build the benchmark's synthetic tracks from the scene generator and write them in the authors' formats.

    python -m benchmarks.make_tracks [--split validation|test|all] [--root benchmarks/tracks]

Deterministic: the same code gives the same files (the committed ones in benchmarks/tracks/<split>).
Each split writes ``binary.json`` (33 queries x 2,000 frames, 20 positives each) and
``open/<type>/...`` (40 queries x 500 frames, 200 of them "N/A"), from scenes of its own seed range
(``benchmarks/vqa/splits.py``). Takes about three minutes a split on one core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.vqa.queries import binary_queries, open_queries
from benchmarks.vqa.splits import SCENE_SEEDS, SPLITS, TRACKS_ROOT, Split, binary_track, open_track
from benchmarks.vqa.tracks import build_streams, save_binary, save_open


def write_split(split: Split, root: Path) -> str:
    """Build and write ``split``'s two tracks under ``root``; returns a line saying what it wrote."""
    start = time.perf_counter()
    binary = build_streams(binary_queries(), seeds=SCENE_SEEDS[split])
    save_binary(binary, binary_track(split, root))
    open_form = build_streams(open_queries(), seeds=SCENE_SEEDS[split])
    save_open(open_form, open_track(split, root))
    seconds = time.perf_counter() - start
    return f"{split}: {len(binary)} binary and {len(open_form)} open-form queries in {root / split} ({seconds:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all")
    parser.add_argument("--root", type=Path, default=TRACKS_ROOT)
    args = parser.parse_args()
    for split in SPLITS if args.split == "all" else (args.split,):
        print(write_split(split, args.root), flush=True)


if __name__ == "__main__":
    main()
