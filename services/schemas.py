"""Wire types of a backend deployment: what goes over HTTP and through a DeploymentHandle."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fmprog.backends.config import Function
from fmprog.backends.functions import (
    MAX_TEXT_CHARS,
    DetectionOut,
    DetectReply,
    DetectRequest,
    LLMRequest,
    Served,
    TextReply,
    VQARequest,
    Wire,
)

# The wire types of each function's route are described with the function, in the runtime's table
# of neural functions; they are re-exported here beside the health reply.
__all__ = [
    "MAX_TEXT_CHARS",
    "BackendHealth",
    "DetectReply",
    "DetectRequest",
    "DetectionOut",
    "LLMRequest",
    "Served",
    "TextReply",
    "VQARequest",
]


class BackendHealth(Wire):
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
