"""Build the benchmark's two tracks from the scene generator and write them in the authors' formats.

    python -m benchmarks.make_tracks [--out benchmarks/tracks]

Deterministic: the same code gives the same files (the committed ones in benchmarks/tracks). Writes
``binary.json`` (33 queries x 2,000 frames, 20 positives each) and ``open/<type>/...`` (40 queries
x 500 frames, 200 of them "N/A"). Takes about two minutes on one core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.vqa.queries import binary_queries, open_queries
from benchmarks.vqa.tracks import build_streams, save_binary, save_open


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/tracks"))
    args = parser.parse_args()
    start = time.perf_counter()
    binary = build_streams(binary_queries())
    save_binary(binary, args.out / "binary.json")
    open_form = build_streams(open_queries())
    save_open(open_form, args.out / "open")
    seconds = time.perf_counter() - start
    print(f"{len(binary)} binary and {len(open_form)} open-form queries in {args.out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
