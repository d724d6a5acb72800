"""Router fixtures: a store in a real SQLite file and in a real PostgreSQL database (the store's
tests run on both), the fake zoo's catalog, and the domain handlers over them; ``feedback_each``
for in-process fake policies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fmprog.backends import BackendCatalog
from fmprog.contract import Feedback, FeedbackList, FeedbackListItem, FeedbackListReply
from fmprog.program import ExecutionLimits
from router.answering import Answerer
from router.feedback import FeedbackHandler
from router.policy_client import PolicyRejected
from router.programs import ProgramRegistry
from router.schemas import ProgramCreate
from router.store import Store
from tests.fakes import Zoo
from tests.postgres import PostgresServer, serving_or_skipped

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "programs"


def example(name: str) -> str:
    return (EXAMPLES / f"{name}.py").read_text()


def feedback_each(
    feedback: Callable[[str, Feedback], object], program_id: str, batch: FeedbackList
) -> FeedbackListReply:
    """A fake policy's ``feedback_batch`` from its ``feedback``: each on its own, in order, as the
    policy service does; one it refuses (PolicyRejected) is answered ``invalid`` with the reason,
    and an unavailable policy (PolicyUnavailable) fails the whole list."""
    results = []
    for item in batch.feedback:
        decision_id = item.decision_id or ""
        try:
            feedback(program_id, item)
        except PolicyRejected as exc:
            results.append(FeedbackListItem(decision_id=decision_id, outcome="invalid", detail=exc.detail))
        else:
            results.append(FeedbackListItem(decision_id=decision_id, outcome="accepted"))
    return FeedbackListReply(results=results)


def create(name: str, kind: str = "binary", **fields: object) -> ProgramCreate:
    return ProgramCreate.model_validate({"source": example(name), "kind": kind, "lambda": 0.01, **fields})


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "router.db"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (skipped, with the reason, where it cannot run)."""
    yield from serving_or_skipped()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, db_path: Path) -> str | Path:
    """Where a store lives: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return db_path
    return request.getfixturevalue("postgres_server").database()


@pytest.fixture
def store(database: str | Path) -> Iterator[Store]:
    with Store(database) as store:
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
