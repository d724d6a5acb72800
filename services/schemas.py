"""Wire types of a backend deployment: what goes over HTTP and through a DeploymentHandle."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmprog.backends.config import Function

MAX_TEXT_CHARS = 20_000


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectRequest(_Wire):
    image: str = Field(description="The frame or crop: base64 PNG or JPEG (a data URL is accepted).")
    noun: str = Field(min_length=1, max_length=200, description="What to find, e.g. 'red triangle'.")


class VQARequest(_Wire):
    image: str = Field(description="The frame or crop: base64 PNG or JPEG (a data URL is accepted).")
    question: str = Field(min_length=1, max_length=2000)


class LLMRequest(_Wire):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class DetectionOut(_Wire):
    box: tuple[float, float, float, float] = Field(description="Pixels (x0, y0, x1, y1), y down.")
    score: float


class Served(_Wire):
    """What every reply says about how it was served."""

    backend: str
    batch_size: int = Field(description="How many calls the engine answered together with this one.")
    compute_s: float = Field(description="Engine time of the batch this call was part of.")


class DetectReply(Served):
    detections: list[DetectionOut]


class TextReply(Served):
    text: str


class BackendHealth(_Wire):
    backend: str
    function: Function
    cost: float
    engine: str
    healthy: bool
    detail: str = ""
    model: dict[str, Any] = Field(default_factory=dict, description="What the engine reports about its model.")
    batches: int = Field(description="Batches answered by this replica.")
    calls: int = Field(description="Calls answered by this replica.")
    replica_pid: int
    peak_rss_mb: float = Field(description="Peak resident memory of this replica's process.")
