"""The scene generator's seed ranges, one per use, disjoint by construction.

A generated frame is its seed (and difficulty), so keeping uses apart is keeping seeds apart. Every
consumer draws from its range here: the zoo's training; held-out scenes, which only measure or check
(the zoo's evaluation sets, and the scenes the router dry-runs a synthesized program on); the
shipped cascade prior; and the benchmark's two splits (validation: what policies and hand rules are
tuned on; test: what docs/benchmarks.md reports). ``tests/scene/test_seeds.py`` checks that no two overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SeedRange:
    """Seeds ``start <= seed < stop`` reserved for one use."""

    use: str
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"{self.use}: an empty or negative seed range [{self.start}, {self.stop})")

    def __len__(self) -> int:
        return self.stop - self.start

    def __contains__(self, seed: object) -> bool:
        return isinstance(seed, int) and self.start <= seed < self.stop

    def seed(self, offset: int) -> int:
        """The ``offset``-th seed of the range; raises ValueError past its end."""
        if not 0 <= offset < len(self):
            raise ValueError(f"{self.use}: offset {offset} lies outside its {len(self)} seeds")
        return self.start + offset

    def seeds(self, count: int) -> range:
        """The first ``count`` seeds of the range; raises ValueError if it holds fewer."""
        if not 0 <= count <= len(self):
            raise ValueError(f"{self.use}: {count} seeds asked of a range of {len(self)}")
        return range(self.start, self.start + count)

    def draw(self, rng: np.random.Generator) -> int:
        """A seed of the range drawn uniformly by ``rng``."""
        return int(rng.integers(self.start, self.stop))

    def overlaps(self, other: SeedRange) -> bool:
        return self.start < other.stop and other.start < self.stop


ZOO_TRAINING = SeedRange("zoo training", 0, 1_000_000_000)
ZOO_EVALUATION = SeedRange("held-out scenes (zoo evaluation sets, synthesis dry runs)", 1_000_000_000, 1_090_000_000)
CASCADE_PRIOR = SeedRange("cascade prior", 1_090_000_000, 1_100_000_000)
VALIDATION_TRACKS = SeedRange("benchmark validation split", 2_000_000_000, 2_100_000_000)
TEST_TRACKS = SeedRange("benchmark test split", 3_000_000_000, 3_100_000_000)

SEED_RANGES: tuple[SeedRange, ...] = (ZOO_TRAINING, ZOO_EVALUATION, CASCADE_PRIOR, VALIDATION_TRACKS, TEST_TRACKS)
