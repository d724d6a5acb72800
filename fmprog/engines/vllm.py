"""vLLM through Ray Serve LLM (``ray.serve.llm``), for GPU clusters: vqa and llm.

The model runs in Ray Serve LLM's own ``LLMServer`` deployment, built from an ``LLMConfig`` by
``serve_dependencies`` and bound beside the backend's deployment by the services layer; the engine
in the backend's deployment is a thin client of that server's ``DeploymentHandle``
(``dependencies["llm_server"]``). Each call becomes one OpenAI-style chat-completion request
(the image as an ``image_url`` data-URL part for vqa); a batch's requests are all sent before any
reply is read, and vLLM batches them continuously on the GPU.

``LLMServer.chat`` is an async generator method, so the handle is used with
``options(stream=True)``; for a non-streaming request the generator yields exactly one
``ChatCompletionResponse`` or ``ErrorResponse``. Batch methods run in a worker thread (no event loop),
where ``DeploymentResponseGenerator`` supports plain blocking iteration.

Nothing here imports Ray Serve LLM at module import: ``ray.serve.llm`` needs vLLM (and pyarrow)
installed, which only GPU images have.
"""

from __future__ import annotations

import base64
import importlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmprog.backends.config import BackendSpec
from fmprog.backends.engine_config import VLLMEngineOptions
from fmprog.engines.base import Engine, EngineError

LLM_SERVER = "llm_server"


def _import(module: str) -> Any:
    """Import part of Ray Serve LLM, or explain why it cannot be used here."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EngineError(
            "the vllm engine needs Ray Serve LLM with vLLM installed (pip install 'ray[serve,llm]', "
            f"CUDA machines only); importing {module} failed: {exc}"
        ) from exc


def _serve_llm() -> Any:
    return _import("ray.serve.llm")


def _chat_request_type() -> Any:
    return _import("ray.serve.llm.openai_api_models").ChatCompletionRequest


def _options(spec: BackendSpec) -> VLLMEngineOptions:
    if not isinstance(spec.engine, VLLMEngineOptions):
        raise EngineError(f"backend {spec.name!r}: VLLMEngine needs vllm engine options")
    return spec.engine


def gpus_per_replica(options: VLLMEngineOptions) -> int:
    """GPUs one LLM server replica reserves: vLLM places one worker per GPU, tensor x pipeline parallel."""
    kwargs = options.engine_kwargs
    return int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))


def llm_config_kwargs(spec: BackendSpec) -> dict[str, Any]:
    """The keyword arguments of ``ray.serve.llm.LLMConfig`` for a backend (plain data, no Ray import).

    GPUs are reserved by the vLLM engine's placement group (one bundle per tensor/pipeline-parallel
    worker), not by ``ray_actor_options``: asking for them there as well would double the count. So
    the backend's ``resources.num_gpus`` must equal the parallelism its engine_kwargs imply.
    """
    options = _options(spec)
    gpus = gpus_per_replica(options)
    if spec.resources.num_gpus != gpus:
        raise EngineError(
            f"backend {spec.name!r}: resources.num_gpus is {spec.resources.num_gpus} but vLLM's "
            f"tensor_parallel_size x pipeline_parallel_size places {gpus} GPU worker(s) per replica"
        )
    engine_kwargs = dict(options.engine_kwargs)
    if options.model.revision is not None:
        engine_kwargs.setdefault("revision", options.model.revision)
    autoscaling = spec.autoscaling_config.model_dump(exclude_none=True)
    return {
        "model_loading_config": {"model_id": options.model.model_id, "model_source": options.model.model_id},
        "accelerator_type": options.accelerator_type,
        "engine_kwargs": engine_kwargs,
        "deployment_config": {
            "autoscaling_config": autoscaling,
            "max_ongoing_requests": spec.max_ongoing_requests,
            "health_check_period_s": spec.health_check_period_s,
            "health_check_timeout_s": spec.health_check_timeout_s,
            "ray_actor_options": {"num_cpus": spec.resources.num_cpus},
        },
    }


def image_data_url(image: np.ndarray) -> str:
    """An ``H x W x 3`` uint8 image as a PNG ``data:`` URL for an OpenAI ``image_url`` content part."""
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EngineError(f"expected an H x W x 3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class VLLMEngine(Engine):
    """A client of a Ray Serve LLM ``LLMServer`` deployment running vLLM."""

    options: VLLMEngineOptions

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        super().__init__(spec, dependencies)
        _options(spec)
        self._handle: Any = None
        self._request_type: Any = None

    @classmethod
    def serve_dependencies(cls, spec: BackendSpec) -> dict[str, Any]:
        """``{"llm_server": <LLMServer application for this backend's model>}``."""
        kwargs = llm_config_kwargs(spec)
        serve_llm = _serve_llm()
        config = serve_llm.LLMConfig(**kwargs)
        return {LLM_SERVER: serve_llm.build_llm_deployment(config, name_prefix=f"{spec.name}:")}

    def load(self) -> None:
        self._request_type = _chat_request_type()
        handle = self.dependencies.get(LLM_SERVER)
        if handle is None:
            raise EngineError(
                f"backend {self.spec.name!r}: the vllm engine needs the {LLM_SERVER!r} deployment handle "
                "(bind VLLMEngine.serve_dependencies(spec) beside the backend)"
            )
        self._handle = handle.options(stream=True)  # LLMServer.chat is an async generator

    def check_health(self) -> None:
        if self._handle is None:
            raise EngineError(f"backend {self.spec.name!r}: engine is not loaded")

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "vllm",
            "loaded": self._handle is not None,
            "model_id": self.options.model.model_id,
            "revision": self.options.model.revision,
            "accelerator_type": self.options.accelerator_type,
            "gpus_per_replica": gpus_per_replica(self.options),
        }

    def close(self) -> None:
        self._handle = None

    def vqa_batch(self, images: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        if len(images) != len(questions):
            raise EngineError(f"batch has {len(images)} images but {len(questions)} questions")
        return self._chat(
            [
                [
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    {"type": "text", "text": question},
                ]
                for image, question in zip(images, questions, strict=True)
            ]
        )

    def llm_batch(self, prompts: Sequence[str]) -> list[str]:
        return self._chat(list(prompts))

    def _chat(self, contents: list[Any]) -> list[str]:
        if self._handle is None:
            raise EngineError(f"backend {self.spec.name!r}: load() has not been called")
        options = self.options
        system = [{"role": "system", "content": options.system_prompt}] if options.system_prompt else []
        requests = [
            self._request_type(
                model=options.model.model_id,
                messages=[*system, {"role": "user", "content": content}],
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                stream=False,
            )
            for content in contents
        ]
        pending = [self._handle.chat.remote(request) for request in requests]  # all in flight at once
        return [self._answer(response) for response in pending]

    def _answer(self, response: Any) -> str:
        try:
            reply = next(iter(response))
        except StopIteration:
            raise EngineError(f"backend {self.spec.name!r}: the LLM server returned no response") from None
        error = getattr(reply, "error", None)
        if error is not None:
            raise EngineError(f"backend {self.spec.name!r}: the LLM server answered an error: {error.message}")
        choices = getattr(reply, "choices", None)
        if not choices:
            raise EngineError(f"backend {self.spec.name!r}: unexpected LLM server reply {type(reply).__name__}")
        return (choices[0].message.content or "").strip()
