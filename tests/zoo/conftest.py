"""Zoo models loaded once per test session (loading is cheap, but shared keeps tests fast)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def zoo_models():
    from fmprog.zoo import ZOO, load_model

    return {name: load_model(name) for name in ZOO}
