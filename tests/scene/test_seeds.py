"""The scene generator's seed ranges: disjoint, and every consumer draws inside its own."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks.vqa.splits import SCENE_SEEDS, SPLITS, binary_track, open_track
from benchmarks.vqa.tracks import load_binary, load_open
from fmprog.scene.seeds import CASCADE_PRIOR, SEED_RANGES, ZOO_EVALUATION, ZOO_TRAINING, SeedRange
from fmprog.zoo import training
from fmprog.zoo.evaluate import evaluation_set
from router.synthesis.scenes import TARGET_POOL, _scene_pool

ROOT = Path(__file__).resolve().parents[2]


def test_no_two_uses_share_a_seed():
    for a, b in itertools.combinations(SEED_RANGES, 2):
        assert not a.overlaps(b), f"{a.use} and {b.use} overlap"
    assert len({r.use for r in SEED_RANGES}) == len(SEED_RANGES)
    assert SeedRange("a", 0, 10).overlaps(SeedRange("b", 9, 20))  # the check itself can fail
    assert not SeedRange("a", 0, 10).overlaps(SeedRange("b", 10, 20))


def test_a_range_refuses_seeds_past_its_end():
    small = SeedRange("small", 5, 8)
    assert list(small.seeds(3)) == [5, 6, 7] and small.seed(2) == 7
    with pytest.raises(ValueError, match="small"):
        small.seeds(4)
    with pytest.raises(ValueError, match="small"):
        small.seed(3)
    with pytest.raises(ValueError, match="empty"):
        SeedRange("empty", 4, 4)


@pytest.mark.parametrize("split", SPLITS)
def test_every_committed_track_frame_lies_in_its_splits_range(split):
    seeds = SCENE_SEEDS[split]
    tracks = [load_binary(ROOT / binary_track(split)), load_open(ROOT / open_track(split))]
    frames = [ref for track in tracks for query in track.queries for ref in query.frames]
    assert len(frames) == 33 * 2000 + 40 * 500
    for ref in frames:
        _, _, seed = str(ref).split("/")
        assert int(seed) in seeds, f"{split}: {ref} lies outside {seeds}"


def test_the_shipped_prior_was_built_from_its_own_range():
    about = json.loads((ROOT / "policy" / "priors" / "cascade.json").read_text())["about"]
    first = int(re.search(r"seeds from (\d+)", about).group(1))
    assert first == CASCADE_PRIOR.start


def test_training_draws_only_training_seeds(monkeypatch):
    drawn = []
    real = training.generate_scene

    def spy(seed, difficulty):
        drawn.append(seed)
        return real(seed, difficulty)

    monkeypatch.setattr(training, "generate_scene", spy)
    training.training_batch(np.random.default_rng(0), 32)
    assert len(drawn) == 32 and all(seed in ZOO_TRAINING for seed in drawn)


def test_evaluation_sets_lie_in_the_evaluation_range():
    assert evaluation_set("detect", "easy", 2, seed=899)  # the last set that fits
    with pytest.raises(ValueError, match="held-out"):
        evaluation_set("detect", "easy", 1, seed=900)
    assert ZOO_EVALUATION.seed(899 * 100_000 + 99_999) in ZOO_EVALUATION


def test_the_synthesizer_dry_runs_on_held_out_scenes():
    pool = [seed for seed, _ in _scene_pool()]
    assert len(pool) == TARGET_POOL and all(seed in ZOO_EVALUATION for seed in pool)
