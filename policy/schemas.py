"""Wire types of the policy's HTTP API that are the policy's own (the router-policy contract, the
spec, the decision and the feedback, lives in :mod:`fmprog.contract`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from policy.algorithms.drift import ModelDrift
from policy.algorithms.evidence import PriorUse


class DecideRequest(BaseModel):
    """A frame to decide, as JSON (the raw bytes with ``?decision_id=`` are the cheaper way)."""

    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(min_length=1, max_length=64, description="The router's id for this decision.")
    image: str = Field(min_length=1, description="The frame: base64 PNG or JPEG.")


class FeedbackAccepted(BaseModel):
    decision_id: str
    repeat: bool


class ExpiredAccepted(BaseModel):
    dropped: int = Field(description="How many of the decisions were pending (the rest were resolved before).")


class SpecAccepted(BaseModel):
    """A policy spec the service can build: the algorithm and its hyper-parameters with defaults filled in."""

    algorithm: str
    hyperparameters: dict[str, Any]


class PolicyInfo(BaseModel):
    program_id: str
    algorithm: str
    sites: int
    observed: int
    pending: int
    trained_steps: int
    train_seconds: float
    last_feedback_seq: int
    prior: list[PriorUse] = Field(
        default_factory=list,
        description="Where each of its models started (algorithms that start from a shipped prior: cascade).",
    )
    drifts: list[ModelDrift] = Field(
        default_factory=list,
        description="What each model's drift watch has seen (algorithms that watch for drift: cascade, "
        "drift_window above 0).",
    )
