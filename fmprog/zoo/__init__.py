"""The default model zoo: detect-small, detect-large, vqa-small, vqa-large, trained on the scene
domain by ``scripts/train_zoo.py`` with weights shipped in ``fmprog/zoo/weights``.

Importing this package imports neither torch nor the networks: ``load_model`` does, when called.

    from fmprog.zoo import load_model
    detector = load_model("detect-large")          # a ZooDetector on CPU
    detector.detect_batch([frame], ["red circles"])  # -> [[Detection(...), ...]]
    vqa = load_model("vqa-small", device="cuda")
    vqa.vqa_batch([crop], ["What color is this?"])   # -> ["red"]

How the models work (neuro-symbolic, as in NS-VQA): a learned CenterNet-style network
(``fmprog.zoo.network``) perceives each image's objects (box, objectness, shape, colour and
texture; size follows from the box); a fixed parser and executor (``fmprog.zoo.language``) turns
the noun or question into constraints and answers them over the perceived objects. Small and
large models run the same language code, so their difference in quality is the perception's. The
detect and VQA models of one size share one perception network (``catalog.NETWORKS``); cost is
its parameter count. Images of any size (frames or crops) are placed at native scale on a
128 x 128 canvas; the small network sees that canvas at 64 x 64.

See ``fmprog.zoo.evaluate`` for how the models are scored, and ``weights/manifest.json`` for
the measured numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmprog.zoo.catalog import NETWORKS, ZOO, ZooEntry, zoo_entry

if TYPE_CHECKING:
    from fmprog.zoo.models import ZooModel

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST_PATH = WEIGHTS_DIR / "manifest.json"


def load_model(name: str, device: str = "cpu", weights: str | Path | None = None) -> ZooModel:
    """Load zoo model ``name`` on ``device`` (weights from the package unless ``weights`` names a file)."""
    from fmprog.zoo.models import load_model as _load

    return _load(name, device=device, weights=weights)


def read_manifest() -> dict[str, Any]:
    """The training and evaluation facts of the shipped weights (``weights/manifest.json``)."""
    return json.loads(MANIFEST_PATH.read_text())


__all__ = ["MANIFEST_PATH", "NETWORKS", "WEIGHTS_DIR", "ZOO", "ZooEntry", "load_model", "read_manifest", "zoo_entry"]
