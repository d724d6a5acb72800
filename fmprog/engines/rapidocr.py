"""Text reading with RapidOCR, for ``function: ocr``: PP-OCR's text detector, direction classifier
and recogniser (PP-OCRv4 det and rec, mobile v2.0 cls; about 4.0M parameters in all) as ONNX
models, run by ONNX Runtime. The models ship inside the ``rapidocr-onnxruntime`` wheel, so nothing
is downloaded.

A call's answer is every text line found with at least ``min_score`` confidence, in reading order
(top to bottom, then left to right), joined by spaces; ``""`` when there is none. A batch is
answered one image after another: the detector's input size depends on the image.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmprog.backends.config import BackendSpec
from fmprog.backends.engine_config import RapidOCREngineOptions
from fmprog.engines.base import Engine, EngineError

INSTALL_HINT = "pip install 'rapidocr-onnxruntime==1.4.4' (or fmprog's 'ocr' extra)"


def reading_order(lines: Sequence[tuple[Sequence[Sequence[float]], str]]) -> str:
    """Text lines (a box's corner points, its text) joined in reading order: rows top to bottom
    (a line starting within half a line's height of the row's first line belongs to that row),
    each row left to right."""
    placed = sorted(
        ((min(p[1] for p in box), max(p[1] for p in box), min(p[0] for p in box), text) for box, text in lines),
        key=lambda line: line[0],
    )
    rows: list[list[tuple[float, float, float, str]]] = []
    for line in placed:
        top, bottom = line[0], line[1]
        if rows and top - rows[-1][0][0] < (bottom - top) / 2:
            rows[-1].append(line)
        else:
            rows.append([line])
    return " ".join(text.strip() for row in rows for *_, text in sorted(row, key=lambda line: line[2]) if text.strip())


class RapidOCREngine(Engine):
    """RapidOCR's PP-OCR pipeline in this process."""

    options: RapidOCREngineOptions

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        super().__init__(spec, dependencies)
        if not isinstance(self.options, RapidOCREngineOptions):
            raise EngineError(f"backend {spec.name!r}: RapidOCREngine needs rapidocr options, got {self.options.kind}")
        self._ocr: Any = None
        self._lock = threading.Lock()  # one ONNX Runtime session set, not shared across threads

    def load(self) -> None:
        if self._ocr is not None:
            return
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise EngineError(
                f"backend {self.spec.name!r} needs rapidocr-onnxruntime, which is not installed ({exc}); "
                f"install it with `{INSTALL_HINT}`"
            ) from exc
        try:
            self._ocr = RapidOCR(
                intra_op_num_threads=self.options.threads,
                inter_op_num_threads=1,
                text_score=self.options.min_score,
            )
        except Exception as exc:  # the package raises its own error types for missing models
            raise EngineError(f"backend {self.spec.name!r}: RapidOCR cannot load its models: {exc}") from exc

    def _loaded(self) -> Any:
        if self._ocr is None:
            raise EngineError(f"backend {self.spec.name!r}: the engine is not loaded")
        return self._ocr

    def ocr_batch(self, images: Sequence[np.ndarray]) -> list[str]:
        ocr = self._loaded()
        with self._lock:
            return [self._read(ocr, image) for image in images]

    def _read(self, ocr: Any, image: np.ndarray) -> str:
        try:
            # RapidOCR takes arrays in OpenCV's channel order (BGR).
            found, _ = ocr(np.ascontiguousarray(image[:, :, ::-1]))
        except Exception as exc:
            raise EngineError(f"backend {self.spec.name!r}: RapidOCR failed on an image: {exc}") from exc
        lines = [(box, str(text)) for box, text, score in found or () if float(score) >= self.options.min_score]
        return reading_order(lines)

    def check_health(self) -> None:
        self._loaded()

    def describe(self) -> dict[str, Any]:
        if self._ocr is None:
            return {"engine": "rapidocr", "loaded": False}
        from importlib.metadata import version

        return {
            "engine": "rapidocr",
            "loaded": True,
            "models": "PP-OCRv4 det + mobile v2.0 cls + PP-OCRv4 rec (ONNX)",
            "parameters": 3_995_791,
            "rapidocr_onnxruntime": version("rapidocr-onnxruntime"),
            "threads": self.options.threads,
        }
