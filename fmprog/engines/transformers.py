"""Hugging Face transformers models: zero-shot detectors, vision-language models, language models.

One engine serves one function with the matching auto class:

- detect: ``AutoModelForZeroShotObjectDetection`` (Grounding DINO, OWLv2, OWL-ViT), one forward
  pass per batch, boxes post-processed to pixel ``(x0, y0, x1, y1)`` in each input image;
- vqa: ``AutoModelForImageTextToText`` (Qwen2.5-VL, LLaVA...), the processor's chat template with
  the image and the question, greedy decoding, left-padded batches;
- llm: ``AutoModelForCausalLM`` with the tokenizer's chat template, greedy, left-padded batches.

Weights are only ever read locally (``local_files_only=True``): a Hugging Face model id must
already be in the cache, or the source must be a local directory in the same layout (what
``save_pretrained`` writes: the model with its processor or tokenizer).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from fmprog.backends.base import Detection
from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.engine_config import HubSource, PathSource, TransformersEngineOptions
from fmprog.engines.base import Engine, EngineError

_GROUNDING_DINO = "grounding-dino"
_OWL = frozenset({"owlv2", "owlvit"})
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class TransformersEngine(Engine):
    """A transformers model in this process, on CPU or CUDA, serving detect, vqa or llm."""

    options: TransformersEngineOptions

    def __init__(self, spec: BackendSpec, dependencies: dict[str, Any] | None = None):
        super().__init__(spec, dependencies)
        if not isinstance(self.options, TransformersEngineOptions):
            raise EngineError(f"backend {spec.name!r}: TransformersEngine needs transformers engine options")
        self._model: Any = None
        self._processor: Any = None  # an AutoProcessor (detect, vqa) or a tokenizer (llm)
        self._device: str | None = None
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def load(self) -> None:
        try:
            import torch
            import transformers  # noqa: F401
        except ImportError as exc:
            raise EngineError(
                f"backend {self.spec.name!r}: transformers engine needs torch and transformers: {exc}"
            ) from exc
        self._device = _resolve_device(self.options.device, torch)
        model, processor = self._load_pretrained(self.options.model)
        model.eval()
        if self.spec.function != Function.detect:
            _tokenizer_of(processor).padding_side = "left"  # generation continues at the right edge
        self._model, self._processor = model, processor

    def _load_pretrained(self, source: HubSource | PathSource) -> tuple[Any, Any]:
        import torch
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoModelForZeroShotObjectDetection,
            AutoProcessor,
            AutoTokenizer,
        )

        if isinstance(source, PathSource):
            if not source.path.is_dir():
                raise EngineError(f"backend {self.spec.name!r}: model directory {source.path} does not exist")
            location, revision = str(source.path), None
        else:
            location, revision = source.model_id, source.revision
        model_cls, processor_cls = {
            Function.detect: (AutoModelForZeroShotObjectDetection, AutoProcessor),
            Function.vqa: (AutoModelForImageTextToText, AutoProcessor),
            Function.llm: (AutoModelForCausalLM, AutoTokenizer),
        }[self.spec.function]
        dtype: Any = "auto" if self.options.dtype == "auto" else getattr(torch, _DTYPES[self.options.dtype])
        if self.options.dtype == "auto" and self._device == "cpu":
            dtype = torch.float32  # half precision on CPU is slow or unsupported
        common = {"revision": revision, "local_files_only": True}
        try:
            processor = processor_cls.from_pretrained(location, **common)
            model = model_cls.from_pretrained(location, dtype=dtype, **common)
        except (OSError, ValueError) as exc:
            raise EngineError(
                f"backend {self.spec.name!r}: cannot load {location!r} from local files (local_files_only=True, "
                "offline: fmprog never downloads weights); the model must be present in the Hugging Face cache "
                f"(HF_HOME / HF_HUB_CACHE) or at a local path: {exc}"
            ) from exc
        return model.to(self._device), processor

    def check_health(self) -> None:
        if self._model is None:
            raise EngineError(f"backend {self.spec.name!r}: model is not loaded")

    def describe(self) -> dict[str, Any]:
        if self._model is None:
            return {"engine": "transformers", "loaded": False}
        source = self.options.model
        facts: dict[str, Any] = {
            "engine": "transformers",
            "loaded": True,
            "model_type": self._model.config.model_type,
            "model_class": type(self._model).__name__,
            "device": self._device,
            "dtype": str(self._model.dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in self._model.parameters()),
        }
        if isinstance(source, PathSource):
            facts["path"] = str(source.path)
        else:
            facts.update(model_id=source.model_id, revision=source.revision)
        return facts

    def close(self) -> None:
        self._model = self._processor = None
        if self._device == "cuda":
            import torch

            torch.cuda.empty_cache()

    # -- functions ----------------------------------------------------------------------------

    def detect_batch(self, images: Sequence[np.ndarray], nouns: Sequence[str]) -> list[list[Detection]]:
        _check_parallel(images, nouns)
        if not images:
            return []
        import torch

        model, processor = self._loaded()
        model_type = model.config.model_type
        texts = [[_detection_phrase(noun)] for noun in nouns]
        pil_images = [_to_pil(image) for image in images]
        sizes = [(int(image.shape[0]), int(image.shape[1])) for image in images]
        with self._lock, torch.inference_mode():
            if model_type == _GROUNDING_DINO:
                inputs = processor(images=pil_images, text=texts, padding=True, return_tensors="pt")
                inputs = inputs.to(self._device).to(model.dtype)
                outputs = model(**inputs)
                results = processor.post_process_grounded_object_detection(
                    outputs,
                    inputs["input_ids"],
                    threshold=self.options.box_threshold,
                    text_threshold=self.options.text_threshold,
                    target_sizes=sizes,
                )
            elif model_type in _OWL:
                inputs = processor(images=pil_images, text=texts, return_tensors="pt")
                inputs = inputs.to(self._device).to(model.dtype)
                outputs = model(**inputs)
                # OWLv2 pads each image to a square at the bottom and right before resizing, so its
                # normalized boxes are relative to that square; OWL-ViT resizes without padding.
                targets = [(max(h, w), max(h, w)) for h, w in sizes] if model_type == "owlv2" else sizes
                results = processor.post_process_grounded_object_detection(
                    outputs, threshold=self.options.box_threshold, target_sizes=targets
                )
            else:
                raise EngineError(
                    f"backend {self.spec.name!r}: detection with model type {model_type!r} is not supported "
                    f"(supported: {_GROUNDING_DINO}, {', '.join(sorted(_OWL))})"
                )
        return [_detections(result, size) for result, size in zip(results, sizes, strict=True)]

    def vqa_batch(self, images: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        _check_parallel(images, questions)
        if not images:
            return []
        import torch

        model, processor = self._loaded()
        prompts = [
            processor.apply_chat_template(
                _user_turn([{"type": "image"}, {"type": "text", "text": question}]),
                add_generation_prompt=True,
                tokenize=False,
            )
            for question in questions
        ]
        with self._lock, torch.inference_mode():
            inputs = processor(
                text=prompts, images=[_to_pil(image) for image in images], padding=True, return_tensors="pt"
            )
            inputs = inputs.to(self._device).to(model.dtype)
            return self._generate(model, _tokenizer_of(processor), inputs)

    def llm_batch(self, prompts: Sequence[str]) -> list[str]:
        if not prompts:
            return []
        import torch

        model, tokenizer = self._loaded()
        conversations = [_user_turn(prompt) for prompt in prompts]
        with self._lock, torch.inference_mode():
            inputs = tokenizer.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                padding=True,
            ).to(self._device)
            return self._generate(model, tokenizer, inputs)

    # -- helpers ------------------------------------------------------------------------------

    def _loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            raise EngineError(f"backend {self.spec.name!r}: load() has not been called")
        return self._model, self._processor

    def _generate(self, model: Any, tokenizer: Any, inputs: Any) -> list[str]:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        output = model.generate(
            **inputs, max_new_tokens=self.options.max_new_tokens, do_sample=False, pad_token_id=pad_id
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


# -- module helpers -------------------------------------------------------------------------------


def _resolve_device(device: str, torch: Any) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' was configured but torch sees no CUDA device")
    return device


def _check_parallel(images: Sequence[np.ndarray], texts: Sequence[str]) -> None:
    if len(images) != len(texts):
        raise EngineError(f"batch has {len(images)} images but {len(texts)} texts")


def _to_pil(image: np.ndarray) -> Any:
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EngineError(f"expected an H x W x 3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    return Image.fromarray(np.ascontiguousarray(image))


def _detection_phrase(noun: str) -> str:
    """Grounding DINO separates phrases with '.' and expects lower case; one noun is one phrase."""
    return " ".join(noun.replace(".", " ").lower().split()) or "object"


def _detections(result: dict[str, Any], size: tuple[int, int]) -> list[Detection]:
    height, width = size
    boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
    scores = result["scores"].float().cpu().numpy().reshape(-1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    order = np.argsort(-scores, kind="stable")
    return [Detection(box=tuple(float(v) for v in boxes[i]), score=float(scores[i])) for i in order]  # type: ignore[arg-type]


def _user_turn(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def _tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)
