"""The output cache in front of real zoo backends: a repeated call runs no model, and what a
cache file holds serves a new process's cache (real SQLite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.harness import load_backends
from fmprog.scene.generator import generate_scene

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config" / "synthetic.yaml"


def test_cached_backends_answer_like_the_models_and_call_each_once(tmp_path):
    backends = load_backends(CONFIG, None, functions={"detect", "vqa"})
    cache = OutputCache(tmp_path / "cache.sqlite3")
    cached = cached_registry(backends, cache)
    frame = generate_scene(3, "medium").image
    detect = cached["detect-small"].model.detect
    direct = backends["detect-small"].model.detect(frame, "circle")
    assert detect(frame, "circle") == direct
    assert detect(frame, "circle") == direct
    crop = np.ascontiguousarray(frame[10:40, 10:40])
    answer = cached["vqa-large"].model.vqa(crop, "What color is this?")
    assert answer == backends["vqa-large"].model.vqa(crop, "What color is this?")
    cached["vqa-large"].model.vqa(crop, "What color is this?")
    assert (cache.stats["detect-small"].hits, cache.stats["detect-small"].misses) == (1, 1)
    assert (cache.stats["vqa-large"].hits, cache.stats["vqa-large"].misses) == (1, 1)
    cached["vqa-large"].model.vqa(frame, "What color is this?")  # other pixels: another entry
    assert cache.flush() == 3 and cache.flush() == 0

    reopened = OutputCache(tmp_path / "cache.sqlite3")
    assert len(reopened) == 3
    again = cached_registry(backends, reopened)
    assert again["detect-small"].model.detect(frame, "circle") == direct
    assert (reopened.stats["detect-small"].hits, reopened.stats["detect-small"].misses) == (1, 0)
