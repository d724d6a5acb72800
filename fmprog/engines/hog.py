"""People detection with OpenCV's HOG descriptor and its built-in linear SVM (Dalal and Triggs,
2005): no weights to install, people only.

Options (``HogEngineOptions``): ``resize`` scales the frame first (the detector's window is 64x128
pixels, so people shorter than about 128 px are found only in an enlarged frame, and a smaller
frame is cheaper), ``scale`` and ``win_stride`` set the image pyramid and the window step, and a
box is kept when the sigmoid of its SVM margin reaches ``confidence``. Any noun outside the
person class finds nothing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmprog.backends.base import Detection
from fmprog.backends.config import BackendSpec
from fmprog.backends.engine_config import HogEngineOptions
from fmprog.engines.base import Engine, EngineError
from fmprog.engines.darknet import declared_vocabulary, require_opencv
from fmprog.vision.scope import read_noun


class HogEngine(Engine):
    """Serves ``detect`` for people with OpenCV's HOG people detector."""

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        super().__init__(spec, dependencies)
        if not isinstance(self.options, HogEngineOptions):
            raise EngineError(f"backend {spec.name!r}: HogEngine needs hog options, got {self.options.kind!r}")
        self.hog_options: HogEngineOptions = self.options
        self.vocabulary = declared_vocabulary(spec)
        self._hog: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        cv2 = require_opencv(f"backend {self.spec.name!r}", "HOGDescriptor")
        cv2.setNumThreads(self.hog_options.threads)
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self._hog = hog

    def detect_batch(self, images: Sequence[np.ndarray], nouns: Sequence[str]) -> list[list[Detection]]:
        if self._hog is None:
            raise EngineError(f"backend {self.spec.name!r}: the engine is not loaded")
        return [
            self._people(image) if "person" in read_noun(self.vocabulary, noun).classes else []
            for image, noun in zip(images, nouns, strict=True)
        ]

    def _people(self, image: np.ndarray) -> list[Detection]:
        import cv2

        options = self.hog_options
        frame = np.ascontiguousarray(image)
        if options.resize != 1.0:
            size = (max(1, round(frame.shape[1] * options.resize)), max(1, round(frame.shape[0] * options.resize)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        if frame.shape[0] < 128 or frame.shape[1] < 64:  # smaller than one detection window
            return []
        stride = (options.win_stride, options.win_stride)
        with self._lock:
            if self._hog is None:
                raise EngineError(f"backend {self.spec.name!r}: the engine is closed")
            rects, margins = self._hog.detectMultiScale(frame, winStride=stride, padding=(8, 8), scale=options.scale)
        if len(rects) == 0:
            return []
        scores = [1 / (1 + math.exp(-float(m))) for m in np.asarray(margins).reshape(-1)]
        keep = np.asarray(
            cv2.dnn.NMSBoxes([[float(v) for v in r] for r in rects], scores, options.confidence, options.nms)
        ).reshape(-1)
        height, width = image.shape[:2]
        found = []
        for i in keep:
            x, y, w, h = (float(v) / options.resize for v in rects[i])
            box = (max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h))
            found.append(Detection(box=box, score=scores[i]))
        return sorted(found, key=lambda d: -d.score)

    def check_health(self) -> None:
        if self._hog is None:
            raise EngineError(f"backend {self.spec.name!r}: the engine is not loaded")

    def describe(self) -> dict[str, Any]:
        return {"engine": "hog", "loaded": self._hog is not None, "resize": self.hog_options.resize, "classes": 1}

    def close(self) -> None:
        with self._lock:
            self._hog = None
