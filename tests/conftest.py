"""Shared fixtures: a zoo of fake backends and an executor over it."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.program import ExecutionLimits, Executor
from tests.fakes import Zoo


@pytest.fixture
def zoo() -> Zoo:
    return Zoo()


@pytest.fixture
def executor(zoo: Zoo) -> Executor:
    return Executor(zoo.registry(), ExecutionLimits(timeout_s=5))


@pytest.fixture
def frame() -> np.ndarray:
    """A 100 x 80 (W x H) frame."""
    return np.zeros((80, 100, 3), np.uint8)
