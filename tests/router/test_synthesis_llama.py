"""The default synthesizer for real: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF through llama.cpp,
the ``llm-large`` backend of fmprog/configs/synthetic.yaml) writing a program end to end through
``POST /programs {query, kind}``, dry-run and then answered by the zoo's vision models in process.

About 15 s on this 2-core machine when it is otherwise idle: loading the model (1 s), evaluating the
fixed prompt (about 1,100 tokens, 8 s), the program (1 s), the dry run and the answers."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog, BackendRegistry, load_catalog
from fmprog.images import encode_png
from fmprog.scene import generate_scene
from router.app import create_app
from router.settings import RouterSettings
from router.synthesis.scenes import TARGETED_FRAMES

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
pytest.importorskip("torch", reason="the zoo's vision models need torch")
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "fmprog" / "configs" / "synthetic.yaml"
QUERY = "Is there a purple hexagon?"


@pytest.fixture(scope="module")
def vision() -> Iterator[tuple[BackendCatalog, BackendRegistry]]:
    from fmprog.engines import build_engine, local_model

    specs = [spec for spec in load_catalog(CONFIG).backends if spec.function != "llm"]
    engines = {spec.name: build_engine(spec) for spec in specs}
    for engine in engines.values():
        engine.load()
    models = {name: local_model(engine) for name, engine in engines.items()}
    yield BackendCatalog(backends=specs), BackendRegistry.from_specs(specs, models)
    for engine in engines.values():
        engine.close()


def _truth(scene) -> str:
    return "yes" if any(o.shape == "hexagon" and o.color == "purple" for o in scene.objects) else "no"


def test_the_default_synthesizer_registers_a_query_end_to_end(tmp_path, vision):
    catalog, backends = vision
    settings = RouterSettings(database=tmp_path / "router.db", backends_config=CONFIG, fallback="largest")
    with TestClient(create_app(settings, catalog=catalog, backends=backends)) as client:
        started = time.perf_counter()
        response = client.post("/programs", json={"query": QUERY, "kind": "binary", "lambda": 0.001})
        elapsed = time.perf_counter() - started
        assert response.status_code == 201, response.text
        program = response.json()
        synthesis = program["synthesis"]
        print(f"\nsynthesised in {elapsed:.1f} s, {synthesis['attempts']} attempt(s):\n{program['source']}")
        assert synthesis["synthesizer"] == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        assert 1 <= synthesis["attempts"] <= settings.synthesis_attempts and synthesis["cached"] is False
        # the scenes that hold a purple hexagon, then the ordinary ones
        assert synthesis["dry_run_frames"] == TARGETED_FRAMES + settings.synthesis_dry_run_frames
        assert "purple hexagon" in program["source"]  # the task's object, as the task names it
        assert {site["function"] for site in program["call_sites"]} <= {"detect", "vqa"}

        scenes = [generate_scene(seed, "easy") for seed in range(120)]  # seeds 80, 95 and 103 show one
        positives = [s for s in scenes if _truth(s) == "yes"][:2]
        negatives = [s for s in scenes if _truth(s) == "no"][:2]
        assert positives and negatives
        for scene in positives + negatives:
            image = base64.b64encode(encode_png(scene.image)).decode()
            answer = client.post("/answer", json={"program_id": program["id"], "image": image})
            assert answer.status_code == 200, answer.text
            assert answer.json()["error"] is None
            assert answer.json()["answer"] == _truth(scene), (scene.seed, [o.noun for o in scene.objects])

        started = time.perf_counter()
        again = client.post("/programs", json={"query": QUERY.lower(), "kind": "binary", "lambda": 0.001}).json()
        assert again["synthesis"]["cached"] is True and again["source"] == program["source"]
        assert time.perf_counter() - started < 1.0  # no model call
