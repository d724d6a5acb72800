"""VLLMEngine without vLLM: importable, refuses to load with a clear reason, builds its Ray Serve
LLM configuration from a backend spec, and talks to the LLMServer handle through the API it has
(``options(stream=True).chat.remote(ChatCompletionRequest)`` yielding one response), exercised
here with small fakes of ``ray.serve.llm`` and of the handle. Also checks fmprog/configs/gpu.yaml.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmprog.backends.config import BackendSpec, Function, load_catalog
from fmprog.backends.engine_config import HubSource, TransformersEngineOptions, VLLMEngineOptions
from fmprog.engines import EngineError, build_engine
from fmprog.engines.vllm import LLM_SERVER, VLLMEngine, gpus_per_replica, llm_config_kwargs

# Importing ray.serve (to find out whether ray.serve.llm works) trips Ray's own pydantic deprecations.
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")

GPU_YAML = Path(__file__).resolve().parents[2] / "fmprog" / "configs" / "gpu.yaml"


def serve_llm_importable() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None and importlib.import_module("ray.serve.llm") is not None
    except ImportError:
        return False


HAVE_SERVE_LLM = serve_llm_importable()


def vllm_spec(function: str = "vqa", *, num_gpus: float = 1, **engine: Any) -> BackendSpec:
    options = {"kind": "vllm", "model": {"model_id": "Qwen/Qwen2.5-VL-3B-Instruct"}, **engine}
    return BackendSpec.model_validate(
        {
            "name": f"{function}-small",
            "function": function,
            "cost": 3750,
            "engine": options,
            "resources": {"num_cpus": 1, "num_gpus": num_gpus},
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8},
        }
    )


# -- fakes of Ray Serve LLM -------------------------------------------------------------------------


class FakeChatRequest:
    """Stands in for ray.serve.llm.openai_api_models.ChatCompletionRequest (vLLM's pydantic model)."""

    def __init__(self, **fields: Any):
        self.__dict__.update(fields)


def reply(content: str) -> Any:
    message = types.SimpleNamespace(content=content)
    return types.SimpleNamespace(choices=[types.SimpleNamespace(message=message)])


class FakeLLMServerHandle:
    """A DeploymentHandle to LLMServer: ``options(stream=True).chat.remote(request)`` returns an
    iterator (a DeploymentResponseGenerator) yielding one response for a non-streaming request."""

    def __init__(self, answer: Any):
        self.answer = answer
        self.events: list[str] = []
        self.requests: list[Any] = []
        self.stream = False
        self.chat = types.SimpleNamespace(remote=self._remote)

    def options(self, *, stream: bool = False) -> FakeLLMServerHandle:
        self.stream = stream
        return self

    def _remote(self, request: Any) -> Any:
        assert self.stream, "LLMServer.chat is a generator method: the handle needs stream=True"
        self.requests.append(request)
        index = len(self.requests) - 1
        self.events.append(f"sent {index}")

        def generator() -> Any:
            self.events.append(f"read {index}")
            yield self.answer(request) if callable(self.answer) else self.answer

        return generator()


@pytest.fixture
def fake_serve_llm(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Installs fake ``ray.serve.llm`` modules that record what the engine builds."""
    built: dict[str, Any] = {}

    class LLMConfig:
        def __init__(self, **kwargs: Any):
            self.kwargs = kwargs

    def build_llm_deployment(config: LLMConfig, *, name_prefix: str | None = None) -> Any:
        built.update(config=config, name_prefix=name_prefix)
        return ("application", config)

    serve_llm = types.ModuleType("ray.serve.llm")
    serve_llm.LLMConfig = LLMConfig  # type: ignore[attr-defined]
    serve_llm.build_llm_deployment = build_llm_deployment  # type: ignore[attr-defined]
    models = types.ModuleType("ray.serve.llm.openai_api_models")
    models.ChatCompletionRequest = FakeChatRequest  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray.serve.llm", serve_llm)
    monkeypatch.setitem(sys.modules, "ray.serve.llm.openai_api_models", models)
    return types.SimpleNamespace(built=built)


# -- without vLLM --------------------------------------------------------------------------------


def test_module_imports_neither_vllm_nor_ray_serve_llm() -> None:
    code = (
        "import sys, fmprog.engines.vllm as m; from fmprog.engines import engine_class; "
        "assert engine_class('vllm') is m.VLLMEngine; "
        "print(sorted(n for n in sys.modules if n == 'vllm' or n.startswith(('vllm.', 'ray.serve.llm'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(HAVE_SERVE_LLM, reason="vLLM and Ray Serve LLM are installed here")
def test_load_without_vllm_is_a_clear_engine_error() -> None:
    engine = build_engine(vllm_spec(), {LLM_SERVER: FakeLLMServerHandle(reply("x"))})
    with pytest.raises(EngineError, match=r"needs Ray Serve LLM with vLLM installed.*ray\.serve\.llm"):
        engine.load()


@pytest.mark.skipif(HAVE_SERVE_LLM, reason="vLLM and Ray Serve LLM are installed here")
def test_serve_dependencies_without_vllm_is_a_clear_engine_error() -> None:
    with pytest.raises(EngineError, match=r"ray\.serve\.llm.*vLLM installed|vLLM installed.*ray\.serve\.llm"):
        VLLMEngine.serve_dependencies(vllm_spec())


@pytest.mark.skipif(not HAVE_SERVE_LLM, reason="needs vLLM and Ray Serve LLM (GPU images)")
def test_serve_dependencies_builds_a_real_llm_server_application() -> None:
    from ray.serve import Application

    app = VLLMEngine.serve_dependencies(vllm_spec())[LLM_SERVER]
    assert isinstance(app, Application)


# -- the LLMConfig it builds ---------------------------------------------------------------------


def test_llm_config_kwargs_carry_model_autoscaling_and_engine_kwargs() -> None:
    spec = vllm_spec(
        accelerator_type="H100", engine_kwargs={"max_model_len": 4096}, model={"model_id": "a/b", "revision": "r1"}
    )
    kwargs = llm_config_kwargs(spec)
    assert kwargs["model_loading_config"] == {"model_id": "a/b", "model_source": "a/b"}
    assert kwargs["accelerator_type"] == "H100"
    assert kwargs["engine_kwargs"] == {"max_model_len": 4096, "revision": "r1"}
    deployment = kwargs["deployment_config"]
    assert deployment["autoscaling_config"]["max_replicas"] == 3
    assert deployment["autoscaling_config"]["target_ongoing_requests"] == 8
    assert deployment["max_ongoing_requests"] == spec.max_ongoing_requests
    assert "num_gpus" not in deployment["ray_actor_options"]  # vLLM's placement group reserves the GPUs


def test_gpu_count_must_match_tensor_parallelism() -> None:
    with pytest.raises(EngineError, match=r"num_gpus is 1\.0 but .* places 2 GPU"):
        llm_config_kwargs(vllm_spec(engine_kwargs={"tensor_parallel_size": 2}))
    assert gpus_per_replica(vllm_spec(num_gpus=2, engine_kwargs={"tensor_parallel_size": 2}).engine) == 2  # type: ignore[arg-type]


def test_serve_dependencies_builds_llm_server_from_llm_config(fake_serve_llm: types.SimpleNamespace) -> None:
    spec = vllm_spec()
    dependencies = VLLMEngine.serve_dependencies(spec)
    assert set(dependencies) == {LLM_SERVER}
    config = fake_serve_llm.built["config"]
    assert dependencies[LLM_SERVER] == ("application", config)
    assert config.kwargs == llm_config_kwargs(spec)
    assert fake_serve_llm.built["name_prefix"] == "vqa-small:"


# -- talking to the LLM server -------------------------------------------------------------------


def test_vqa_batch_sends_image_data_urls_and_parses_replies(fake_serve_llm: types.SimpleNamespace) -> None:
    handle = FakeLLMServerHandle(lambda request: reply(f" answer to {request.messages[-1]['content'][1]['text']} "))
    engine = build_engine(vllm_spec(system_prompt="Answer briefly."), {LLM_SERVER: handle})
    engine.load()
    frames = [np.full((4, 6, 3), 7, np.uint8), np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)]
    assert engine.vqa_batch(frames, ["q1", "q2"]) == ["answer to q1", "answer to q2"]
    assert handle.events == ["sent 0", "sent 1", "read 0", "read 1"]  # the whole batch is in flight at once
    request = handle.requests[1]
    assert (request.model, request.max_tokens, request.temperature, request.stream) == (
        "Qwen/Qwen2.5-VL-3B-Instruct",
        64,
        0.0,
        False,
    )
    assert request.messages[0] == {"role": "system", "content": "Answer briefly."}
    image_part, text_part = request.messages[1]["content"]
    assert text_part == {"type": "text", "text": "q2"}
    header, _, payload = image_part["image_url"]["url"].partition(",")
    assert header == "data:image/png;base64"
    from PIL import Image

    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))))
    assert np.array_equal(decoded, frames[1])


def test_llm_batch_sends_plain_text(fake_serve_llm: types.SimpleNamespace) -> None:
    handle = FakeLLMServerHandle(lambda request: reply(request.messages[-1]["content"].upper()))
    engine = build_engine(vllm_spec("llm"), {LLM_SERVER: handle})
    engine.load()
    assert engine.llm_batch(["yes", "no"]) == ["YES", "NO"]
    assert handle.requests[0].messages == [{"role": "user", "content": "yes"}]
    with pytest.raises(EngineError, match="serves llm, not vqa"):
        engine.vqa_batch([np.zeros((2, 2, 3), np.uint8)], ["q"])


def test_error_reply_and_missing_handle_are_engine_errors(fake_serve_llm: types.SimpleNamespace) -> None:
    error = types.SimpleNamespace(error=types.SimpleNamespace(message="prompt too long"))
    engine = build_engine(vllm_spec("llm"), {LLM_SERVER: FakeLLMServerHandle(error)})
    engine.load()
    with pytest.raises(EngineError, match="prompt too long"):
        engine.llm_batch(["hi"])
    with pytest.raises(EngineError, match="llm_server"):
        build_engine(vllm_spec("llm")).load()


# -- fmprog/configs/gpu.yaml ----------------------------------------------------------------------


def test_gpu_config_validates_with_one_gpu_per_replica_and_hub_sources() -> None:
    catalog = load_catalog(GPU_YAML)
    assert {f: len(catalog.for_function(f)) for f in Function} == {
        Function.detect: 2,
        Function.vqa: 2,
        Function.llm: 2,
        Function.ocr: 2,
    }
    for spec in catalog.backends:
        if spec.function == Function.ocr:  # the text readers' small models run on CPU
            assert spec.resources.num_gpus == 0 and spec.engine is not None, spec.name
            assert spec.engine.kind in ("tesseract", "rapidocr"), spec.name
            continue
        assert spec.resources.num_gpus == 1, spec.name
        assert spec.engine is not None and isinstance(spec.engine, TransformersEngineOptions | VLLMEngineOptions)
        assert isinstance(spec.engine.model, HubSource), spec.name
        owner, _, name = spec.engine.model.model_id.partition("/")
        assert owner and name and "/" not in name and not owner.startswith((".", "~")), spec.engine.model.model_id
        if isinstance(spec.engine, VLLMEngineOptions):
            assert llm_config_kwargs(spec)["model_loading_config"]["model_source"] == spec.engine.model.model_id
        else:
            assert spec.engine.device == "cuda"
