"""Text reading with the Tesseract OCR binary, for ``function: ocr``: Tesseract 4/5's LSTM
recogniser with its ``eng`` model (Debian ``tesseract-ocr`` and ``tesseract-ocr-eng``; the model's
LSTM holds about 0.4M parameters, stored as 8-bit integers).

Each call runs the binary once on the image (grey levels, enlarged when small; a PNG through its
standard input) and answers with the text it prints, its lines joined by spaces; ``""`` when it
finds none. Tesseract reads clean printed text well and often misses text on a cluttered patch
(a sign on a striped object), where RapidOCR's text detector finds it: it is the cheap backend. Nothing is downloaded:
the binary reads its model from the installed tessdata.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmprog.backends.config import BackendSpec
from fmprog.backends.engine_config import TesseractEngineOptions
from fmprog.engines.base import Engine, EngineError

INSTALL_HINT = "apt-get install tesseract-ocr tesseract-ocr-eng"

# Tesseract reads small text poorly: images are enlarged until their shorter side has this many
# pixels (on the scene generator's signs this doubled what it reads, against 96 pixels).
MIN_SIDE = 200


class TesseractEngine(Engine):
    """The ``tesseract`` binary, one process per call."""

    options: TesseractEngineOptions

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        super().__init__(spec, dependencies)
        if not isinstance(self.options, TesseractEngineOptions):
            raise EngineError(
                f"backend {spec.name!r}: TesseractEngine needs tesseract options, got {self.options.kind}"
            )
        self._binary: str | None = None
        self._version = ""

    def _run(self, binary: str, arguments: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        environment = {**os.environ, "OMP_THREAD_LIMIT": str(self.options.threads)}
        try:
            return subprocess.run(
                [binary, *arguments],
                input=stdin,
                capture_output=True,
                timeout=self.options.timeout_s,
                env=environment,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EngineError(f"backend {self.spec.name!r}: tesseract did not run: {exc}") from exc

    def load(self) -> None:
        if self._binary is not None:
            return
        binary = shutil.which(self.options.binary)
        if binary is None:
            raise EngineError(
                f"backend {self.spec.name!r}: the tesseract binary {self.options.binary!r} is not installed; "
                f"install it with `{INSTALL_HINT}`"
            )
        languages = self._run(binary, ["--list-langs"])
        installed = set(languages.stdout.decode(errors="replace").split()[1:])  # first line is a heading
        wanted = set(self.options.language.split("+"))
        if languages.returncode != 0 or not wanted <= installed:
            raise EngineError(
                f"backend {self.spec.name!r}: tesseract has no model for {sorted(wanted - installed)} "
                f"(installed: {sorted(installed)}); install tesseract-ocr-<language>"
            )
        version = self._run(binary, ["--version"])
        self._version = (version.stdout or version.stderr).decode(errors="replace").splitlines()[0].strip()
        self._binary = binary

    def _loaded(self) -> str:
        if self._binary is None:
            raise EngineError(f"backend {self.spec.name!r}: the engine is not loaded")
        return self._binary

    def ocr_batch(self, images: Sequence[np.ndarray]) -> list[str]:
        binary = self._loaded()
        return [self._read(binary, image) for image in images]

    def _read(self, binary: str, image: np.ndarray) -> str:
        from PIL import Image

        picture = Image.fromarray(np.ascontiguousarray(image[:, :, :3]), "RGB").convert("L")
        shorter = min(picture.size)
        if shorter < MIN_SIDE:
            scale = MIN_SIDE / shorter
            picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.BICUBIC)
        png = io.BytesIO()
        picture.save(png, format="PNG")
        arguments = ["stdin", "stdout", "-l", self.options.language, "--psm", str(self.options.page_segmentation)]
        done = self._run(binary, arguments, png.getvalue())
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip().splitlines()
            raise EngineError(
                f"backend {self.spec.name!r}: tesseract failed: {reason[-1] if reason else done.returncode}"
            )
        return re.sub(r"\s+", " ", done.stdout.decode(errors="replace")).strip()

    def check_health(self) -> None:
        self._loaded()

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "tesseract",
            "loaded": self._binary is not None,
            "binary": self._binary,
            "version": self._version,
            "language": self.options.language,
            "page_segmentation": self.options.page_segmentation,
        }
