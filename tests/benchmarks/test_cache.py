"""The output cache in front of real zoo backends: a repeated call runs no model, what a cache file
holds serves a new process's cache (real SQLite), and a retrained model or a changed parser gets a
key of its own."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.vqa import cache as cache_module
from benchmarks.vqa.cache import OutputCache, backend_key, cached_registry, parsers_version, weights_digests
from benchmarks.vqa.harness import load_backends
from fmprog.backends.base import Backend, FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.engines.sources import sha256_file
from fmprog.scene.generator import generate_scene
from fmprog.zoo import WEIGHTS_DIR

CONFIG = Path(__file__).resolve().parents[2] / "fmprog" / "configs" / "synthetic.yaml"


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


def _torch_backend(weights: Path) -> Backend:
    spec = BackendSpec.model_validate(
        {
            "name": "detect-small",
            "function": "detect",
            "cost": 1,
            "engine": {"kind": "torch", "model": {"path": str(weights)}},
        }
    )
    return Backend(spec, FunctionModel(Function.detect, lambda *a: [], "unused"))


def test_the_key_changes_with_the_weights_bytes_and_the_parsers_code(tmp_path, monkeypatch):
    weights = tmp_path / "perception-small.pt"
    shutil.copyfile(WEIGHTS_DIR / "perception-small.pt", weights)
    monkeypatch.setenv("FMPROG_MODEL_CACHE", str(tmp_path / "models"))
    before = backend_key(_torch_backend(weights))
    assert backend_key(_torch_backend(weights)) == before
    with weights.open("r+b") as f:  # retrained in place: same path, same size, other bytes
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    retrained = backend_key(_torch_backend(weights))
    assert retrained != before and retrained.startswith("detect-small@")

    parsers_version.cache_clear()
    monkeypatch.setattr(cache_module, "PARSER_PACKAGES", ("engines", "vision"))  # as if the zoo's code changed
    try:
        assert backend_key(_torch_backend(weights)) != retrained
    finally:
        parsers_version.cache_clear()


def test_a_zoo_backend_is_keyed_by_its_committed_weights():
    small = load_backends(CONFIG, None, functions={"detect"})["detect-small"]
    assert weights_digests(small.spec) == [sha256_file(WEIGHTS_DIR / "perception-small.pt")]
