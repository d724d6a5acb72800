"""The benchmark's two splits: validation, where every policy change and hand rule is tuned, and
test, which docs/benchmarks.md reports.

- The synthetic tracks: the same queries (types, templates, programs) on other frames. Each split's
  scenes come from its own seed range (``fmprog.scene.seeds``), disjoint from the zoo's training and
  evaluation frames and from the cascade prior's; ``make tracks`` writes both, in
  ``benchmarks/tracks/<split>/``.
- The real-video track: one clip (``vtest.avi``, 795 frames), split in time. Validation is its first
  397 frames, test the last 398. Both halves come from one fixed camera, and people who cross the
  frame around frame 397 are in both: the split separates frames, not places or people.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from benchmarks.vqa.tracks import Track, TrackQuery, parse_video_ref
from fmprog.scene.seeds import TEST_TRACKS, VALIDATION_TRACKS, SeedRange

Split = Literal["validation", "test"]
SPLITS: tuple[Split, ...] = ("validation", "test")
TRACKS_ROOT = Path("benchmarks/tracks")
SCENE_SEEDS: dict[Split, SeedRange] = {"validation": VALIDATION_TRACKS, "test": TEST_TRACKS}
VIDEO_FRAMES: dict[Split, range] = {"validation": range(0, 397), "test": range(397, 795)}


def binary_track(split: Split, root: Path = TRACKS_ROOT) -> Path:
    """The binary track's file of ``split``."""
    return root / split / "binary.json"


def open_track(split: Split, root: Path = TRACKS_ROOT) -> Path:
    """The open-form track's folder of ``split``."""
    return root / split / "open"


def video_split(track: Track, split: Split) -> Track:
    """``track`` (a video track, frames as ``video/<file>/<index>``) kept to ``split``'s frames."""
    frames = VIDEO_FRAMES[split]
    queries = []
    for query in track.queries:
        kept = [i for i, ref in enumerate(query.frames) if parse_video_ref(str(ref))[1] in frames]
        queries.append(
            TrackQuery(
                query.query, query.type, query.program, [query.frames[i] for i in kept], [query.labels[i] for i in kept]
            )
        )
    return Track(track.name, track.kind, queries)
