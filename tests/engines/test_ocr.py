"""The two text reading engines with their real models: Tesseract (the Debian binary and its eng
LSTM model) and RapidOCR (PP-OCR's ONNX models inside its wheel), reading signs the scene
generator draws on objects."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fmprog.backends.config import BackendSpec
from fmprog.engines import build_engine, local_model
from fmprog.engines.base import Engine, EngineError
from fmprog.engines.rapidocr import reading_order
from tests.signs import signs


def ocr_spec(kind: str, **options: object) -> BackendSpec:
    return BackendSpec(name=f"ocr-{kind}", function="ocr", cost=1, engine={"kind": kind, **options})


@pytest.fixture(scope="module", params=["tesseract", "rapidocr"])
def engine(request) -> Engine:
    engine = build_engine(ocr_spec(request.param))
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def rapidocr() -> Engine:
    engine = build_engine(ocr_spec("rapidocr"))
    engine.load()
    return engine


# Signs read exactly, of 12. Tesseract, the cheap backend, confuses digits of this small font
# (5 read as 9 or 0); PP-OCR reads them.
SIGNS_READ = {"tesseract": 8, "rapidocr": 11}


def test_each_engine_reads_the_words_and_numbers_on_signs(engine: Engine) -> None:
    found = signs(12)
    assert {s.text.isdigit() for s in found} == {True, False}, "both words and numbers"
    read = engine.ocr_batch([s.plate for s in found])
    right = sum(answer == s.text for answer, s in zip(read, found, strict=True))
    pairs = [(s.text, answer) for answer, s in zip(read, found, strict=True)]
    assert right >= SIGNS_READ[engine.options.kind], f"{engine.options.kind} read {right} of 12: {pairs}"


def test_rapidocr_finds_the_sign_on_the_whole_object(rapidocr: Engine) -> None:
    found = signs(12, start=100)
    read = rapidocr.ocr_batch([s.crop for s in found])
    right = sum(answer == s.text for answer, s in zip(read, found, strict=True))
    assert right >= 11, (
        f"read {right} of {len(found)}: {[(s.text, answer) for answer, s in zip(read, found, strict=True)]}"
    )


def test_an_image_without_text_reads_as_empty(engine: Engine) -> None:
    assert engine.ocr_batch([np.full((64, 96, 3), 200, np.uint8)]) == [""]
    assert engine.ocr_batch([]) == []


def test_the_single_call_model_and_the_batch_agree(engine: Engine) -> None:
    sign = signs(1, start=7)[0]
    model = local_model(engine)
    assert model.ocr(sign.plate) == engine.ocr_batch([sign.plate])[0]
    assert engine.batch([sign.plate]) == engine.ocr_batch([sign.plate])


def test_an_ocr_engine_serves_no_other_function(engine: Engine) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(EngineError, match="serves ocr, not vqa"):
        engine.vqa_batch([image], ["What is this?"])
    with pytest.raises(EngineError, match="serves ocr, not detect"):
        engine.detect_batch([image], ["sign"])
    assert engine.describe()["loaded"] is True


def test_a_missing_tesseract_binary_or_language_is_a_clear_load_error() -> None:
    with pytest.raises(EngineError, match="'no-such-tesseract' is not installed"):
        build_engine(ocr_spec("tesseract", binary="no-such-tesseract")).load()
    with pytest.raises(EngineError, match=r"no model for \['klingon'\]"):
        build_engine(ocr_spec("tesseract", language="klingon")).load()
    with pytest.raises(EngineError, match="not loaded"):
        build_engine(ocr_spec("rapidocr")).ocr_batch([np.zeros((8, 8, 3), np.uint8)])


def test_lines_are_joined_in_reading_order() -> None:
    def box(x: float, y: float, w: float = 40, h: float = 10) -> list[list[float]]:
        return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]

    lines = [(box(60, 31), "world"), (box(0, 30), "hello"), (box(0, 60), "again"), (box(5, 80), " ")]
    assert reading_order(lines) == "hello world again"
    assert reading_order([]) == ""


def test_latency_on_this_machine(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    """Warm latency per call (printed with ``-s``); a loose bound keeps it honest."""
    sign = signs(1, start=3)[0]
    engine.ocr_batch([sign.crop])
    times = []
    for _ in range(5):
        start = time.perf_counter()
        engine.ocr_batch([sign.crop])
        times.append(time.perf_counter() - start)
    median = sorted(times)[2]
    with capsys.disabled():
        print(f"\n{engine.options.kind}: {median * 1000:.0f} ms per {sign.crop.shape[1]}x{sign.crop.shape[0]} crop")
    assert median < 5.0
