"""Where the router keeps its state (``FMPROG_ROUTER_DATABASE``: a SQLite file or a PostgreSQL URL),
validated before anything starts; the whole app on either database; retention in the background."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from fmprog.backends import BackendCatalog
from fmprog.images import encode_png
from router.app import create_app
from router.settings import RouterSettings
from router.store import Store, StoreUnavailable
from tests.fakes import box
from tests.router.conftest import example


def test_a_path_is_a_sqlite_file_and_a_url_names_its_driver(monkeypatch: pytest.MonkeyPatch):
    assert RouterSettings(database="state/r.sqlite3").database == Path("state/r.sqlite3")
    assert RouterSettings(database=Path("/x/r.db")).database_file() == Path("/x/r.db")
    url = RouterSettings(database="postgresql://fmprog:pw@db:5432/fmprog").database
    assert url == "postgresql+psycopg://fmprog:pw@db:5432/fmprog"  # psycopg, the driver installed
    monkeypatch.setenv("FMPROG_ROUTER_DATABASE", "postgresql+psycopg://fmprog@db/fmprog")
    settings = RouterSettings()
    assert settings.database == "postgresql+psycopg://fmprog@db/fmprog" and settings.database_file() is None


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ("mysql://u@h/db", "driver 'mysql'"),
        ("postgresql+asyncpg://u@h/db", "driver 'postgresql+asyncpg'"),
        ("postgresql+psycopg://u@h:5432", "must name the database"),
        ("postgresql+psycopg://u@h:notaport/db", "not a database URL"),
    ],
)
def test_a_database_the_router_cannot_use_is_refused_before_it_starts(database: str, message: str):
    with pytest.raises(ValidationError, match=re.escape(message)):
        RouterSettings(database=database)


@pytest.mark.parametrize(
    ("field", "value"), [("retention_days", 0), ("prune_interval_s", -1), ("database_pool_size", 0)]
)
def test_retention_and_pool_settings_are_bounded(field: str, value: float):
    with pytest.raises(ValidationError, match=field):
        RouterSettings(**{field: value})


def test_an_unreachable_database_is_named_without_its_password(postgres_server):
    url = f"postgresql+psycopg://fmprog:hunter2-secret@127.0.0.1:{postgres_server.port}/no_such_database"
    with pytest.raises(StoreUnavailable, match="no_such_database") as refused:
        Store(url)
    assert "hunter2-secret" not in str(refused.value)


def test_the_router_serves_from_its_database_and_prunes_old_decisions_in_the_background(database, zoo):
    """Register, answer and label through the app on SQLite and PostgreSQL; with a retention of
    about a tenth of a millisecond, the background pass deletes the decision and its label and
    keeps the label counts."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    settings = RouterSettings(
        database=str(database), synthesis_backend=None, retention_days=1e-9, prune_interval_s=0.05
    )
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    image = base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()
    with TestClient(app) as client:
        program = client.post("/programs", json={"source": example("person_on_bike"), "kind": "binary", "lambda": 0.1})
        assert program.status_code == 201, program.text
        program_id = program.json()["id"]
        answer = client.post("/answer", json={"program_id": program_id, "image": image}).json()
        label = client.post("/feedback", json={"decision_id": answer["decision_id"], "label": "yes"})
        # labelled at once, or already pruned (the pass runs every 50 ms): either way not lost silently
        assert label.status_code in {200, 404}, label.text
        store: Store = client.app.state.service.store
        deadline = time.monotonic() + 60
        pruned = 'fmprog_pruned_total{table="decisions"} 1.0'
        while pruned not in client.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)  # counted once the pass's transactions have committed
        assert store.count_frames() == 0 and store.count_feedback() == 0
        metrics = client.get("/metrics").text
        assert pruned in metrics
        if label.status_code == 200:  # the count outlives the decision
            assert f'fmprog_program_labels_total{{outcome="right",program="{program_id}"}} 1.0' in metrics
        assert client.get(f"/programs/{program_id}").status_code == 200  # programs are kept
