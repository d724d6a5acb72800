"""The neural functions, described once: every adapter reads this table instead of branching.

A neural function is what a program's routed call needs from a model (``detect``, ``vqa``,
``llm``, ``ocr``). Its record says:

- the single call a model object answers: a method named after the function, taking the image
  (when ``takes_image``) and then the text argument (``text``: noun, question or prompt; ``None``
  when the call has none), and the runtime protocol that method belongs to;
- the wire schemas of a backend deployment's route (``request``, ``reply``), and how a result
  becomes a reply and a reply a result again;
- the engine batch method (``detect_batch``...), which takes parallel lists in the same order;
- ``check``: the program runtime's validation of what a backend returned (``MalformedResult``);
- ``encode`` / ``decode``: a result as JSON, for caches;
- the ``ImagePatch`` methods routed to the function (their call sites' function) and the lines
  the synthesis prompt shows for them.

Adding a function is one record here, its engines, and the ``ImagePatch`` method(s) it routes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.backends.config import Function

MAX_TEXT_CHARS = 20_000


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object: a pixel box ``(x0, y0, x1, y1)`` in the image it was found in, with
    ``y`` growing downward as in array rows, and a confidence score."""

    box: tuple[float, float, float, float]
    score: float


class MalformedResult(ValueError):
    """A backend answered with something that is not a valid result of its function."""


# -- the runtime protocols: one method each, named after the function -------------------------------


@runtime_checkable
class Detector(Protocol):
    def detect(self, image: np.ndarray, noun: str) -> list[Detection]: ...


@runtime_checkable
class VisualQA(Protocol):
    def vqa(self, image: np.ndarray, question: str) -> str: ...


@runtime_checkable
class LanguageModel(Protocol):
    def llm(self, prompt: str) -> str: ...


@runtime_checkable
class TextReader(Protocol):
    def ocr(self, image: np.ndarray) -> str: ...


# -- wire schemas: what goes over HTTP and through a DeploymentHandle --------------------------------


class Wire(BaseModel):
    """A wire type: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


_IMAGE = Field(description="The frame or crop: base64 PNG or JPEG (a data URL is accepted).")


class DetectRequest(Wire):
    image: str = _IMAGE
    noun: str = Field(min_length=1, max_length=200, description="What to find, e.g. 'red triangle'.")


class VQARequest(Wire):
    image: str = _IMAGE
    question: str = Field(min_length=1, max_length=2000)


class LLMRequest(Wire):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class OCRRequest(Wire):
    image: str = _IMAGE


class DetectionOut(Wire):
    box: tuple[float, float, float, float] = Field(description="Pixels (x0, y0, x1, y1), y down.")
    score: float


class Served(Wire):
    """What every reply says about how it was served."""

    backend: str
    batch_size: int = Field(description="How many calls the engine answered together with this one.")
    compute_s: float = Field(description="Engine time of the batch this call was part of.")


class DetectReply(Served):
    detections: list[DetectionOut]


class TextReply(Served):
    text: str


# -- per-kind conversions ----------------------------------------------------------------------------


def _check_detections(result: Any) -> list[Detection]:
    if not isinstance(result, list | tuple) or not all(
        isinstance(d, Detection) and all(math.isfinite(v) for v in (*d.box, d.score)) for d in result
    ):
        raise MalformedResult("returned malformed detections")
    return list(result)


def _check_text(result: Any) -> str:
    if not isinstance(result, str):
        raise MalformedResult(f"returned {type(result).__name__}, not text")
    return result


def _detect_reply(result: list[Detection], served: dict[str, Any]) -> DetectReply:
    return DetectReply(detections=[DetectionOut(box=d.box, score=d.score) for d in result], **served)


def _detect_result(reply: DetectReply) -> list[Detection]:
    return [Detection(box=d.box, score=d.score) for d in reply.detections]


def _text_reply(result: str, served: dict[str, Any]) -> TextReply:
    return TextReply(text=result, **served)


def _text_result(reply: TextReply) -> str:
    return reply.text


def _encode_detections(result: list[Detection]) -> Any:
    return [[*d.box, d.score] for d in result]


def _decode_detections(value: Any) -> list[Detection]:
    return [Detection(box=tuple(v[:4]), score=v[4]) for v in value]  # type: ignore[arg-type]


def _same(value: Any) -> Any:
    return value


# -- the table -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLine:
    """One line of the synthesis prompt's API description: how a program writes the call
    (``patch.find``, or ``llm_query`` for a module function), the name of the program API object
    behind it (an ``ImagePatch`` method, or a module function of the program API), and what it does."""

    written: str
    target: str
    doc: str


@dataclass(frozen=True)
class NeuralFunction:
    """Everything that differs between neural functions (see the module docstring)."""

    name: Function
    takes_image: bool
    text: str | None
    protocol: type
    request: type[BaseModel]
    reply: type[Served]
    batch_method: str
    check: Callable[[Any], Any]
    to_reply: Callable[[Any, dict[str, Any]], Served]
    from_reply: Callable[[Any], Any]
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    routed_methods: tuple[str, ...]
    prompt: tuple[PromptLine, ...]

    @property
    def method(self) -> str:
        """The single-call method a model object answers (``detect``...)."""
        return self.name.value

    @property
    def route(self) -> str:
        """The HTTP route of a backend deployment serving this function."""
        return f"/{self.name.value}"

    def arguments(self, image: np.ndarray | None, text: str | None) -> tuple[Any, ...]:
        """The single call's positional arguments, from its image and text."""
        return (*((image,) if self.takes_image else ()), *((text,) if self.text is not None else ()))

    def inputs(self, arguments: Sequence[Any]) -> tuple[np.ndarray | None, str | None]:
        """``(image, text)`` of a single call's positional arguments (``None`` where it has none)."""
        expected = int(self.takes_image) + int(self.text is not None)
        if len(arguments) != expected:
            raise TypeError(f"{self.method}() takes {expected} arguments, got {len(arguments)}")
        image = arguments[0] if self.takes_image else None
        text = arguments[-1] if self.text is not None else None
        return image, text

    def request_inputs(self, request: BaseModel) -> tuple[str | None, str | None]:
        """``(base64 image, text)`` of a wire request (``None`` where the function has none)."""
        return (
            getattr(request, "image") if self.takes_image else None,  # noqa: B009
            getattr(request, self.text) if self.text is not None else None,
        )

    def batch_columns(self, images: Sequence[Any], texts: Sequence[Any]) -> tuple[list[Any], ...]:
        """The engine batch method's arguments (parallel lists) from a batch's images and texts."""
        return (*((list(images),) if self.takes_image else ()), *((list(texts),) if self.text is not None else ()))


FUNCTIONS: dict[Function, NeuralFunction] = {
    Function.detect: NeuralFunction(
        name=Function.detect,
        takes_image=True,
        text="noun",
        protocol=Detector,
        request=DetectRequest,
        reply=DetectReply,
        batch_method="detect_batch",
        check=_check_detections,
        to_reply=_detect_reply,
        from_reply=_detect_result,
        encode=_encode_detections,
        decode=_decode_detections,
        routed_methods=("find", "exists"),
        prompt=(
            PromptLine(
                "patch.find",
                "ImagePatch.find",
                'the objects matching a noun phrase ("circle", "red triangle", "striped square"), best first.',
            ),
            PromptLine("patch.exists", "ImagePatch.exists", "whether such an object is in the patch."),
        ),
    ),
    Function.vqa: NeuralFunction(
        name=Function.vqa,
        takes_image=True,
        text="question",
        protocol=VisualQA,
        request=VQARequest,
        reply=TextReply,
        batch_method="vqa_batch",
        check=_check_text,
        to_reply=_text_reply,
        from_reply=_text_result,
        encode=_same,
        decode=_same,
        routed_methods=("verify_property", "query", "simple_query", "best_text_match"),
        prompt=(
            PromptLine(
                "patch.verify_property",
                "ImagePatch.verify_property",
                'whether the object has a visual property, e.g. verify_property("circle", "red").',
            ),
            PromptLine(
                "patch.query",
                "ImagePatch.query",
                'a short answer to a question about the patch, e.g. "What color is this?", "What shape is this?".',
            ),
            PromptLine("patch.simple_query", "ImagePatch.simple_query", "the same as query."),
            PromptLine(
                "patch.best_text_match", "ImagePatch.best_text_match", "the option that best describes the patch."
            ),
        ),
    ),
    Function.llm: NeuralFunction(
        name=Function.llm,
        takes_image=False,
        text="prompt",
        protocol=LanguageModel,
        request=LLMRequest,
        reply=TextReply,
        batch_method="llm_batch",
        check=_check_text,
        to_reply=_text_reply,
        from_reply=_text_result,
        encode=_same,
        decode=_same,
        routed_methods=("llm_query",),
        prompt=(
            PromptLine(
                "patch.llm_query",
                "ImagePatch.llm_query",
                "a text-only language model, for knowledge that is not in the image.",
            ),
            PromptLine("llm_query", "llm_query", "the same, as a function."),
        ),
    ),
    Function.ocr: NeuralFunction(
        name=Function.ocr,
        takes_image=True,
        text=None,
        protocol=TextReader,
        request=OCRRequest,
        reply=TextReply,
        batch_method="ocr_batch",
        check=_check_text,
        to_reply=_text_reply,
        from_reply=_text_result,
        encode=_same,
        decode=_same,
        routed_methods=("read_text",),
        prompt=(
            PromptLine(
                "patch.read_text",
                "ImagePatch.read_text",
                'the text written in the patch (a word, a number), "" when there is none.',
            ),
        ),
    ),
}


def routed_methods() -> dict[str, Function]:
    """Each routed ``ImagePatch`` method (and module function) and the function it calls."""
    return {method: record.name for record in FUNCTIONS.values() for method in record.routed_methods}
