"""TransformersEngine on CPU with RANDOM WEIGHTS: tiny Grounding DINO and OWL-ViT detectors, a tiny
LLaVA VLM and tiny Qwen2 / Llama LMs, each with a tokenizer and processor built in memory
(tests/engines/random_models.py), saved with ``save_pretrained`` and loaded by the engine from that
directory like any local model. Their answers are meaningless; what is tested is that the real
load -> preprocess -> forward -> post-process path produces well-formed fmprog results, batched and
deterministically. Loading from the Hub is tested only for its offline refusal.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from fmprog.backends.base import Detection
from fmprog.backends.config import BackendSpec
from fmprog.engines import EngineError, build_engine, local_model
from fmprog.engines.transformers import TransformersEngine
from tests.engines.random_models import save_random


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("random-models")


def random_spec(function: str, architecture: str, directory: Path, **options: Any) -> BackendSpec:
    """A backend of a tiny random ``architecture`` model saved (once per module) under ``directory``."""
    path = directory / architecture
    if not path.exists():
        save_random(path, function, architecture)
    engine = {"kind": "transformers", "model": {"path": str(path)}, **options}
    return BackendSpec.model_validate(
        {"name": f"random-{architecture}", "function": function, "cost": 1, "engine": engine}
    )


def loaded(spec: BackendSpec) -> Iterator[TransformersEngine]:
    engine = build_engine(spec)
    assert isinstance(engine, TransformersEngine)
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def grounding_dino(models_dir: Any) -> Iterator[TransformersEngine]:
    spec = random_spec("detect", "grounding-dino", models_dir, device="cpu", box_threshold=0.0, text_threshold=0.0)
    yield from loaded(spec)


@pytest.fixture(scope="module")
def owlvit(models_dir: Any) -> Iterator[TransformersEngine]:
    yield from loaded(random_spec("detect", "owlvit", models_dir, device="cpu", box_threshold=0.0))


@pytest.fixture(scope="module")
def qwen2(models_dir: Any) -> Iterator[TransformersEngine]:
    yield from loaded(random_spec("llm", "qwen2", models_dir, device="cpu", max_new_tokens=4))


@pytest.fixture(scope="module")
def llava(models_dir: Any) -> Iterator[TransformersEngine]:
    yield from loaded(random_spec("vqa", "llava", models_dir, device="cpu", max_new_tokens=4))


def images(*shapes: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def assert_well_formed(detections: list[Detection], image: np.ndarray) -> None:
    height, width = image.shape[:2]
    assert detections, "threshold 0 keeps every query's box"
    for det in detections:
        assert isinstance(det, Detection)
        x0, y0, x1, y1 = det.box
        assert all(isinstance(v, float) for v in det.box)
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
        assert 0.0 <= det.score <= 1.0
    scores = [d.score for d in detections]
    assert scores == sorted(scores, reverse=True)


def same_detections(a: list[Detection], b: list[Detection]) -> bool:
    return len(a) == len(b) and np.allclose([d.box for d in a], [d.box for d in b], atol=1e-3)


@pytest.mark.parametrize("detector", ["grounding_dino", "owlvit"])
def test_random_weights_detect_batch_gives_pixel_boxes_per_image(detector: str, request: pytest.FixtureRequest) -> None:
    engine: TransformersEngine = request.getfixturevalue(detector)
    frames = images((48, 80), (60, 30), (33, 33))
    results = engine.detect_batch(frames, ["car", "traffic light", "Person."])
    assert len(results) == 3
    for detections, frame in zip(results, frames, strict=True):
        assert_well_formed(detections, frame)


@pytest.mark.parametrize("detector", ["grounding_dino", "owlvit"])
def test_random_weights_detect_batch_equals_single_calls(detector: str, request: pytest.FixtureRequest) -> None:
    # Same-size frames: DETR-style detectors pad a batch to its largest image, which changes the
    # backbone's input for smaller ones, so only equal sizes are bit-for-bit comparable.
    engine: TransformersEngine = request.getfixturevalue(detector)
    frames, nouns = images((48, 64), (48, 64), seed=1), ["dog", "red bicycle"]
    batch = engine.detect_batch(frames, nouns)
    singles = [engine.detect_batch([frame], [noun])[0] for frame, noun in zip(frames, nouns, strict=True)]
    assert all(same_detections(a, b) for a, b in zip(batch, singles, strict=True))
    assert all(same_detections(a, b) for a, b in zip(batch, engine.detect_batch(frames, nouns), strict=True))


def test_random_weights_box_threshold_comes_from_options(grounding_dino: TransformersEngine, models_dir: Any) -> None:
    strict = TransformersEngine(random_spec("detect", "grounding-dino", models_dir, device="cpu", box_threshold=1.0))
    strict.load()
    frame = images((40, 40))
    assert strict.detect_batch(frame, ["car"]) == [[]]
    assert grounding_dino.detect_batch(frame, ["car"])[0]


def test_random_weights_llm_batch_is_deterministic_and_matches_singles(qwen2: TransformersEngine) -> None:
    prompts = ["Is there a person riding a bike?", "hi"]
    batch = qwen2.llm_batch(prompts)
    assert len(batch) == 2 and all(isinstance(answer, str) for answer in batch)
    assert batch == [qwen2.llm_batch([prompt])[0] for prompt in prompts]  # left padding changes nothing
    assert batch == qwen2.llm_batch(prompts)


def test_random_weights_llama_llm_loads_and_answers(models_dir: Any) -> None:
    engine = TransformersEngine(random_spec("llm", "llama", models_dir, device="cpu", max_new_tokens=2))
    engine.load()
    assert isinstance(local_model(engine).llm("hello"), str)
    assert engine.describe()["model_class"] == "LlamaForCausalLM"


def test_random_weights_vqa_batch_is_deterministic_and_matches_singles(llava: TransformersEngine) -> None:
    frames, questions = images((48, 80), (60, 30), seed=2), ["What color is the car?", "Is it raining?"]
    batch = llava.vqa_batch(frames, questions)
    assert len(batch) == 2 and all(isinstance(answer, str) for answer in batch)
    singles = [llava.vqa_batch([f], [q])[0] for f, q in zip(frames, questions, strict=True)]
    assert batch == singles
    assert batch == llava.vqa_batch(frames, questions)


def test_describe_names_the_loaded_model(grounding_dino: TransformersEngine, models_dir: Any) -> None:
    facts = grounding_dino.describe()
    assert facts["path"] == str(models_dir / "grounding-dino")
    assert facts["device"] == "cpu" and facts["dtype"] == "float32"
    assert facts["parameters"] > 0 and facts["model_type"] == "grounding-dino"


def test_wrong_function_and_bad_inputs_raise_engine_error(grounding_dino: TransformersEngine) -> None:
    with pytest.raises(EngineError, match="serves detect, not llm"):
        grounding_dino.llm_batch(["hi"])
    with pytest.raises(EngineError, match="serves detect, not vqa"):
        grounding_dino.vqa_batch(images((8, 8)), ["q"])
    with pytest.raises(EngineError, match="2 images but 1 texts"):
        grounding_dino.detect_batch(images((8, 8), (8, 8)), ["car"])
    with pytest.raises(EngineError, match="H x W x 3 uint8"):
        grounding_dino.detect_batch([np.zeros((8, 8), np.uint8)], ["car"])
    assert grounding_dino.detect_batch([], []) == []


def test_random_architecture_must_serve_the_function(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"'qwen2' cannot serve detect.*grounding-dino"):
        save_random(tmp_path, "detect", "qwen2")


def test_a_directory_without_a_model_is_refused(tmp_path: Any) -> None:
    spec = BackendSpec.model_validate(
        {
            "name": "llm-empty",
            "function": "llm",
            "cost": 1,
            "engine": {"kind": "transformers", "model": {"path": str(tmp_path)}},
        }
    )
    with pytest.raises(EngineError, match="cannot load"):
        TransformersEngine(spec).load()


def test_unloaded_engine_refuses_calls(models_dir: Any) -> None:
    engine = TransformersEngine(random_spec("llm", "qwen2", models_dir))
    with pytest.raises(EngineError, match="load"):
        engine.llm_batch(["hi"])
    with pytest.raises(EngineError, match="not loaded"):
        engine.check_health()


def test_uncached_hub_model_is_refused_offline_without_network(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    connections: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        connections.append(address)
        raise OSError("network is not allowed in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    spec = BackendSpec.model_validate(
        {
            "name": "detect-hub",
            "function": "detect",
            "cost": 172,
            "engine": {"kind": "transformers", "model": {"model_id": "IDEA-Research/grounding-dino-tiny"}},
        }
    )
    with pytest.raises(EngineError, match=r"local_files_only=True.*Hugging Face cache"):
        TransformersEngine(spec).load()
    assert connections == []


def test_missing_local_directory_is_refused(tmp_path: Any) -> None:
    spec = BackendSpec.model_validate(
        {
            "name": "llm-path",
            "function": "llm",
            "cost": 1,
            "engine": {"kind": "transformers", "model": {"path": str(tmp_path / "absent")}},
        }
    )
    with pytest.raises(EngineError, match="does not exist"):
        TransformersEngine(spec).load()
