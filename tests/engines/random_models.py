"""Tiny transformers models with random weights, for testing the transformers engine's code path
on machines without real weights (no model hub is reachable here).

Each supported architecture names the function it serves, a deliberately tiny default config (the
``config`` argument overrides it) and how to build its tokenizer or processor in memory. Token ids
that the config must agree with are filled in from the tokenizer that was built. ``save_random``
writes the model and its processor to a directory with ``save_pretrained``, where the engine loads
them like any local model (``{path: ...}``). The answers of such a model are meaningless; shapes and
plumbing are real.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmprog.backends.config import Function

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


def build_random(
    function: Function | str, architecture: str, config: dict[str, Any] | None = None, seed: int = 0
) -> tuple[Any, Any]:
    """A tiny randomly initialised model of ``architecture`` and its in-memory processor."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForZeroShotObjectDetection,
    )

    function = Function(function)
    found = RANDOM_ARCHITECTURES.get(architecture)
    if found is None or found.function != function:
        usable = sorted(name for name, arch in RANDOM_ARCHITECTURES.items() if arch.function == function)
        raise ValueError(
            f"random architecture {architecture!r} cannot serve {function.value} "
            f"(random {function.value} architectures: {', '.join(usable)})"
        )
    config_dict = _merge(found.tiny_config, config or {})
    token_settings, processor = found.build(config_dict)
    model_config = AutoConfig.for_model(architecture, **_merge(config_dict, token_settings))
    model_cls = {
        Function.detect: AutoModelForZeroShotObjectDetection,
        Function.vqa: AutoModelForImageTextToText,
        Function.llm: AutoModelForCausalLM,
    }[function]
    torch.manual_seed(seed)
    return model_cls.from_config(model_config), processor


def save_random(
    directory: Path, function: Function | str, architecture: str, config: dict[str, Any] | None = None, seed: int = 0
) -> Path:
    """Build a tiny random model (``build_random``) and save it with its processor to ``directory``."""
    model, processor = build_random(function, architecture, config, seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
