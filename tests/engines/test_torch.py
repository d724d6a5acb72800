"""TorchEngine: the zoo models behind the engine interface, the backend registry and the executor."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from fmprog.backends import BackendRegistry, BackendSpec, Function
from fmprog.backends.engine_config import PathSource, TorchEngineOptions, ZooSource
from fmprog.engines import EngineError, build_engine, local_model
from fmprog.program import ExecutionLimits, Executor, compile_program
from fmprog.scene import generate_scene

torch = pytest.importorskip("torch")
from fmprog.backends.base import box_iou  # noqa: E402
from fmprog.engines.torch import TorchEngine  # noqa: E402
from fmprog.zoo.models import weights_path  # noqa: E402


def spec_for(name: str, model: ZooSource | PathSource | None = None, function: str | None = None) -> BackendSpec:
    return BackendSpec(
        name=name,
        function=Function(function or name.split("-", maxsplit=1)[0]),
        cost=0.1,
        engine=TorchEngineOptions(kind="torch", model=model or ZooSource(zoo=name), device="cpu", threads=1),
    )


@pytest.fixture(scope="module")
def engines() -> dict[str, TorchEngine]:
    loaded = {}
    for name in ("detect-small", "detect-large", "vqa-small", "vqa-large"):
        engine = build_engine(spec_for(name))
        engine.load()
        loaded[name] = engine
    return loaded


def test_build_engine_gives_a_loaded_torch_engine(engines):
    engine = engines["detect-large"]
    assert isinstance(engine, TorchEngine)
    facts = engine.describe()
    assert facts["device"] == "cpu" and facts["model"] == "detect-large" and facts["parameters"] > 0
    engine.check_health()


def test_batches_are_served(engines):
    scene = generate_scene(7, "easy")
    obj = scene.objects[0]
    detections = engines["detect-large"].detect_batch([scene.image, scene.image], [obj.shape, "car"])
    assert detections[1] == []
    assert any(box_iou(d.box, obj.box) >= 0.5 for d in detections[0])
    answers = engines["vqa-large"].vqa_batch([scene.image, scene.image], [f"Is there a {obj.shape}?", "Who are you?"])
    assert answers == ["yes", "unknown"]


def test_wrong_function_raises(engines):
    with pytest.raises(EngineError, match="serves detect, not vqa"):
        engines["detect-small"].vqa_batch([np.zeros((8, 8, 3), np.uint8)], ["What is this?"])
    with pytest.raises(EngineError, match="serves vqa, not detect"):
        engines["vqa-small"].detect_batch([np.zeros((8, 8, 3), np.uint8)], ["circle"])


def test_load_errors_are_engine_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FMPROG_MODEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EngineError, match="unknown zoo model 'detect-huge'"):
        build_engine(spec_for("detect-huge", ZooSource(zoo="detect-huge"), "detect")).load()
    with pytest.raises(EngineError, match="serves vqa but zoo model 'detect-small' serves detect"):
        build_engine(spec_for("vqa-small", ZooSource(zoo="detect-small"))).load()
    with pytest.raises(EngineError):
        build_engine(spec_for("detect-small", PathSource(path=tmp_path / "missing.pt"))).load()
    copy = tmp_path / "detect-small.pt"
    shutil.copyfile(weights_path("detect-small"), copy)
    with pytest.raises(EngineError):
        build_engine(spec_for("detect-small", PathSource(path=copy, sha256="0" * 64))).load()
    with pytest.raises(EngineError, match="network of shape"):  # small weights for a large backend
        build_engine(spec_for("detect-large", PathSource(path=copy))).load()
    with pytest.raises(EngineError, match="not loaded"):
        build_engine(spec_for("detect-small")).detect_batch([np.zeros((8, 8, 3), np.uint8)], ["circle"])


def test_weights_file_with_matching_sha_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("FMPROG_MODEL_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "w.pt"
    shutil.copyfile(weights_path("vqa-small"), copy)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    engine = build_engine(spec_for("vqa-small", PathSource(path=copy, sha256=digest)))
    engine.load()
    assert engine.describe()["model"] == "vqa-small"


PROGRAM = """
def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    shapes = image_patch.find("object")
    if not shapes:
        return "none"
    shapes.sort(key=lambda patch: patch.horizontal_center)
    return shapes[0].query("What color is this?")
"""


def test_a_program_runs_against_the_real_zoo(engines):
    specs = [engine.spec for engine in engines.values()]
    registry = BackendRegistry.from_specs(specs, {name: local_model(engine) for name, engine in engines.items()})
    executor = Executor(registry, ExecutionLimits(timeout_s=30))
    program = compile_program(PROGRAM)
    right = 0
    seeds = range(2_000_000_500, 2_000_000_510)
    for seed in seeds:
        scene = generate_scene(seed, "easy")
        decision = {site.id: f"{site.function.value}-large" for site in program.call_sites}
        trace = executor.run(program, scene.image, decision)
        assert trace.ok, trace.error
        assert [i.backend for i in trace.invocations] == ["detect-large", "vqa-large"]
        leftmost = min(scene.objects, key=lambda o: o.center[0])
        right += trace.answer == leftmost.color
    assert right >= 8
