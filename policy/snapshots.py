"""A policy written to bytes and read back: its spec and its state (``torch.save`` /
``torch.load(weights_only=True)``), for the state directory's snapshots."""

from __future__ import annotations

import io
from typing import IO, Any

from fmprog.contract import PolicySpec
from policy.algorithms import build_policy
from policy.algorithms.base import Policy


def save_policy(policy: Policy, file: IO[bytes], state: dict[str, Any] | None = None) -> None:
    """Write the policy's spec and state (``state`` if given, taken earlier with ``state_dict()``)
    to a binary file object (``torch.save``)."""
    import torch

    state = policy.state_dict() if state is None else state
    torch.save({"spec": policy.spec.model_dump_json(by_alias=True), "state": state}, file)


def load_policy(file: IO[bytes]) -> Policy:
    """Rebuild a policy written by :func:`save_policy` (``torch.load`` with ``weights_only=True``)."""
    import torch

    blob = torch.load(file, weights_only=True)
    policy = build_policy(PolicySpec.model_validate_json(blob["spec"]))
    policy.load_state_dict(blob["state"])
    return policy


def policy_bytes(policy: Policy, state: dict[str, Any] | None = None) -> bytes:
    buffer = io.BytesIO()
    save_policy(policy, buffer, state)
    return buffer.getvalue()
