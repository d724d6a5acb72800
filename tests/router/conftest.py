"""Router fixtures: a store in a real file, the fake zoo's catalog, and the domain handlers over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fmprog.backends import BackendCatalog
from fmprog.program import ExecutionLimits
from router.answering import Answerer
from router.feedback import FeedbackHandler
from router.programs import ProgramRegistry
from router.schemas import ProgramCreate
from router.store import Store
from tests.fakes import Zoo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "programs"


def example(name: str) -> str:
    return (EXAMPLES / f"{name}.py").read_text()


def create(name: str, kind: str = "binary", **fields: object) -> ProgramCreate:
    return ProgramCreate.model_validate({"source": example(name), "kind": kind, "lambda": 0.01, **fields})


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "router.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as store:
        yield store


@pytest.fixture
def catalog(zoo: Zoo) -> BackendCatalog:
    return BackendCatalog(backends=zoo.specs)


@pytest.fixture
def programs(store: Store, catalog: BackendCatalog) -> ProgramRegistry:
    return ProgramRegistry(store, catalog)


@pytest.fixture
def answerer(programs: ProgramRegistry, zoo: Zoo) -> Answerer:
    return Answerer(programs, zoo.registry(), limits=ExecutionLimits(timeout_s=5))


@pytest.fixture
def feedback(store: Store) -> FeedbackHandler:
    return FeedbackHandler(store)
