"""Training smoke tests: a handful of steps, never the full run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fmprog.zoo.catalog import NETWORKS  # noqa: E402
from fmprog.zoo.models import load_model  # noqa: E402
from fmprog.zoo.network import build_targets, placement_of  # noqa: E402
from fmprog.zoo.training import train, training_batch  # noqa: E402


def test_training_batches_hold_frames_and_crops_with_targets_inside_the_canvas():
    images, targets = training_batch(np.random.default_rng(0), 24, crop_fraction=0.5)
    assert any(im.shape[:2] == (128, 128) for im in images) and any(im.shape[0] < 128 for im in images)
    for image, objects in zip(images, targets, strict=True):
        place = placement_of(*image.shape[:2])
        for obj in objects:
            x0, y0, x1, y1 = obj.box
            assert place.offset_x <= x0 < x1 <= place.offset_x + place.width
            assert place.offset_y <= y0 < y1 <= place.offset_y + place.height
    built = build_targets(targets, 64)
    assert built["heat"].shape == (24, 16, 16) and float(built["heat"].max()) == 1.0


def test_a_few_steps_lower_the_loss():
    _, result = train(NETWORKS["perception-small"], steps=40, batch_size=8)
    assert result.last_loss < result.first_loss


def test_script_quick_run_writes_weights_and_manifest(tmp_path: Path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "train_zoo.py"
    command = [sys.executable, str(script), "detect-small", "--steps", "2", "--eval-frames", "3", "--threads", "1"]
    subprocess.run([*command, "--out-dir", str(tmp_path)], check=True, capture_output=True, timeout=120)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    record = manifest["detect-small"]
    assert record["training"]["steps"] == 2 and record["training"]["device"] in ("cpu", "cuda")
    assert set(record["accuracy"]) == {"easy", "medium", "hard"}
    model = load_model("detect-small", weights=tmp_path / "perception-small.pt")
    assert model.parameters == record["parameters"]
