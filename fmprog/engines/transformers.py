"""Hugging Face transformers models: zero-shot detectors, vision-language models, language models.

One engine serves one function with the matching auto class:

- detect: ``AutoModelForZeroShotObjectDetection`` (Grounding DINO, OWLv2, OWL-ViT), one forward
  pass per batch, boxes post-processed to pixel ``(x0, y0, x1, y1)`` in each input image;
- vqa: ``AutoModelForImageTextToText`` (Qwen2.5-VL, LLaVA...), the processor's chat template with
  the image and the question, greedy decoding, left-padded batches;
- llm: ``AutoModelForCausalLM`` with the tokenizer's chat template, greedy, left-padded batches.

Weights are only ever read locally (``local_files_only=True``): a Hugging Face model id must
already be in the cache, or the source must be a local directory. ``RandomInitSource`` builds a
deliberately tiny model of a named architecture with seeded random weights, and a tokenizer and
processor constructed in memory, so that the same preprocess -> forward -> post-process path runs
on a CPU without any weights; its answers are meaningless and ``describe()`` says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fmprog.backends.base import Detection
from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.engine_config import HubSource, PathSource, RandomInitSource, TransformersEngineOptions
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
        source = self.options.model
        if isinstance(source, RandomInitSource):
            model, processor = _build_random(self.spec.function, source)
            dtype = torch.float32 if self.options.dtype == "auto" else getattr(torch, _DTYPES[self.options.dtype])
            model = model.to(device=self._device, dtype=dtype)
        else:
            model, processor = self._load_pretrained(source)
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
        if isinstance(source, RandomInitSource):
            facts.update(random_init=True, architecture=source.architecture, seed=source.seed)
        elif isinstance(source, PathSource):
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


# -- random initialisation ------------------------------------------------------------------------
#
# Each supported architecture names the function it serves, a deliberately tiny default config
# (the source's ``config`` overrides it), and how to build a tokenizer/processor in memory. Token
# ids that the config must agree with are filled in from the tokenizer that was built.

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,?!'-"
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class _RandomArchitecture:
    function: Function
    tiny_config: dict[str, Any]
    build: Callable[[dict[str, Any]], tuple[dict[str, Any], Any]]  # tiny config -> (config ids, processor)


def _image_processor(name: str, **kwargs: Any) -> Any:
    """The torchvision-backed image processor when torchvision is installed, else the PIL one."""
    import transformers
    from transformers.utils import is_torchvision_available

    cls_name = name if is_torchvision_available() else f"{name}Pil"
    return getattr(transformers, cls_name)(**kwargs)


def _image_size(config: dict[str, Any]) -> int:
    return int(config["vision_config"]["image_size"])


def _build_grounding_dino(config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    from transformers import BertTokenizer, GroundingDinoProcessor

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for char in _CHARS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(f"##{char}", len(vocab))
    tokenizer = BertTokenizer(vocab=vocab)
    edge = int(config["backbone_config"]["image_size"])
    images = _image_processor("GroundingDinoImageProcessor", size={"shortest_edge": edge, "longest_edge": edge})
    text_config = {**config["text_config"], "vocab_size": len(vocab), "pad_token_id": 0}
    return {"text_config": text_config}, GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer)


def _build_owl(processor_name: str, image_processor_name: str) -> Callable[[dict[str, Any]], tuple[dict, Any]]:
    def build(config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        import transformers
        from transformers import CLIPTokenizer
        from transformers.utils import is_scipy_available, is_torchvision_available

        # As in OWL's own vocabulary, padding is "!" with id 0: the model treats a query whose
        # first token is 0 as padding, so the start token must have another id.
        vocab = {"!": 0}
        for char in _CHARS:
            vocab.setdefault(char, len(vocab))
            vocab.setdefault(f"{char}</w>", len(vocab))
        bos, eos = len(vocab), len(vocab) + 1
        vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
        max_length = int(config["text_config"]["max_position_embeddings"])
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=max_length)
        if image_processor_name == "Owlv2ImageProcessor" and not (is_torchvision_available() or is_scipy_available()):
            raise ImportError("OWLv2's image processor needs torchvision or scipy, and neither is installed")
        side = _image_size(config)
        kwargs: dict[str, Any] = {"size": {"height": side, "width": side}}
        if image_processor_name == "OwlViTImageProcessor":
            kwargs["crop_size"] = {"height": side, "width": side}
        images = _image_processor(image_processor_name, **kwargs)
        text_config = {
            **config["text_config"],
            "vocab_size": len(vocab),
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": 0,
        }
        processor = getattr(transformers, processor_name)(image_processor=images, tokenizer=tokenizer)
        return {"text_config": text_config}, processor

    return build


def _byte_level_tokenizer(extra_special: Sequence[str]) -> Any:
    """A byte-level BPE tokenizer with no merges (every byte is a token), built with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: i for i, char in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra_special]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
        chat_template=_CHAT_TEMPLATE,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tokenizer


def _token_ids(tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
    }


def _build_causal_lm(config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    tokenizer = _byte_level_tokenizer([])
    return _token_ids(tokenizer), tokenizer


def _build_llava(config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    from transformers import LlavaProcessor

    tokenizer = _byte_level_tokenizer(["<image>"])
    side = _image_size(config)
    images = _image_processor(
        "CLIPImageProcessor", size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        chat_template=_CHAT_TEMPLATE,
        patch_size=int(config["vision_config"]["patch_size"]),
        vision_feature_select_strategy=config["vision_feature_select_strategy"],
        num_additional_image_tokens=1,  # the CLIP vision tower's class token
    )
    text_config = {**config["text_config"], **_token_ids(tokenizer)}
    return {"text_config": text_config, "image_token_id": tokenizer.convert_tokens_to_ids("<image>")}, processor


_TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
}
_TINY_CLIP_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 16,
}
_TINY_VIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}

RANDOM_ARCHITECTURES: dict[str, _RandomArchitecture] = {
    "grounding-dino": _RandomArchitecture(
        Function.detect,
        {
            "backbone_config": {
                "model_type": "swin",
                "embed_dim": 16,
                "depths": [1, 1, 1, 1],
                "num_heads": [1, 1, 1, 1],
                "window_size": 4,
                "image_size": 128,  # the processor's shortest edge; 4 feature levels need >= 2x2 at /64
                "out_features": ["stage2", "stage3", "stage4"],
            },
            "text_config": {"model_type": "bert", **_TINY_CLIP_TEXT, "max_position_embeddings": 64},
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 2,  # the box heads of decoder layers 1.. are tied to layer 0's
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_n_points": 2,
            "decoder_n_points": 2,
            "num_queries": 20,
            "max_text_len": 32,
        },
        _build_grounding_dino,
    ),
    "owlvit": _RandomArchitecture(
        Function.detect,
        {
            "text_config": _TINY_CLIP_TEXT,
            "vision_config": {**_TINY_VIT, "image_size": 64, "patch_size": 16},
            "projection_dim": 32,
        },
        _build_owl("OwlViTProcessor", "OwlViTImageProcessor"),
    ),
    "owlv2": _RandomArchitecture(
        Function.detect,
        {
            "text_config": _TINY_CLIP_TEXT,
            "vision_config": {**_TINY_VIT, "image_size": 64, "patch_size": 16},
            "projection_dim": 32,
        },
        _build_owl("Owlv2Processor", "Owlv2ImageProcessor"),
    ),
    "qwen2": _RandomArchitecture(Function.llm, dict(_TINY_TEXT), _build_causal_lm),
    "llama": _RandomArchitecture(Function.llm, dict(_TINY_TEXT), _build_causal_lm),
    "llava": _RandomArchitecture(
        Function.vqa,
        {
            "text_config": {"model_type": "qwen2", **_TINY_TEXT},
            "vision_config": {
                "model_type": "clip_vision_model",
                **_TINY_VIT,
                "num_hidden_layers": 2,
                "image_size": 28,
                "patch_size": 14,
                "projection_dim": 32,
            },
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
        },
        _build_llava,
    ),
}


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build_random(function: Function, source: RandomInitSource) -> tuple[Any, Any]:
    """A tiny randomly initialised model of ``source.architecture`` and its in-memory processor."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForZeroShotObjectDetection,
    )

    architecture = RANDOM_ARCHITECTURES.get(source.architecture)
    if architecture is None or architecture.function != function:
        usable = sorted(name for name, arch in RANDOM_ARCHITECTURES.items() if arch.function == function)
        raise EngineError(
            f"random_init architecture {source.architecture!r} cannot serve {function.value} "
            f"(random_init {function.value} architectures: {', '.join(usable)})"
        )
    config_dict = _merge(architecture.tiny_config, source.config)
    try:
        token_settings, processor = architecture.build(config_dict)
        config = AutoConfig.for_model(source.architecture, **_merge(config_dict, token_settings))
        model_cls = {
            Function.detect: AutoModelForZeroShotObjectDetection,
            Function.vqa: AutoModelForImageTextToText,
            Function.llm: AutoModelForCausalLM,
        }[function]
        torch.manual_seed(source.seed)
        model = model_cls.from_config(config)
    except (ImportError, ValueError, TypeError, KeyError) as exc:
        raise EngineError(f"cannot build a random {source.architecture!r} model: {exc}") from exc
    return model, processor
