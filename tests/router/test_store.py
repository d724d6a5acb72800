from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fmprog.backends import BackendCatalog
from router.answering import Answerer
from router.feedback import FeedbackHandler
from router.programs import ProgramRegistry
from router.schemas import FeedbackIn
from router.store import SCHEMA_VERSION, Store, StoreVersionError
from tests.fakes import Zoo
from tests.router.conftest import create


def test_a_reopened_store_sees_programs_decisions_and_feedback(db_path: Path, catalog: BackendCatalog, zoo: Zoo, frame):
    with Store(db_path) as store:
        programs = ProgramRegistry(store, catalog)
        public = programs.register(create("person_on_bike"))
        deleted = programs.register(create("leftmost_color", kind="open"))
        programs.delete(deleted.id)
        answered = Answerer(programs, zoo.registry()).answer(public.id, frame, None, frame_id="f1")
        first = FeedbackHandler(store).feedback(FeedbackIn(decision_id=answered.decision_id, label="no")).result

    with Store(db_path) as store:
        assert store.list_programs() == [public]
        decision = store.get_answer(answered.decision_id)
        assert decision.status == "resolved" and decision.frame_id == "f1" and decision.trace == answered.trace
        assert store.get_feedback(answered.decision_id).reward == first.reward
        again = FeedbackHandler(store).feedback(FeedbackIn(decision_id=answered.decision_id, label="no")).result
        assert again.repeat and again.reward == first.reward


def test_the_store_uses_wal_and_records_its_schema_version(store: Store, db_path: Path):
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_store_is_migrated_and_keeps_its_programs(programs: ProgramRegistry, db_path: Path, version: int):
    public = programs.register(create("person_on_bike"))
    programs.store.close()
    columns = ["id", "source", "digest", "kind", "lambda", "algorithm", "call_sites", "created_at"]
    if version >= 2:  # version 2 added hyperparameters, version 3 query and synthesis, 4 the dead letters
        columns.append("hyperparameters")
    if version >= 3:
        columns += ["query", "synthesis"]
    with sqlite3.connect(db_path) as db:  # back to the older layout
        db.execute("DROP TABLE policy_dead_letters")
        db.execute(f"CREATE TABLE old AS SELECT {', '.join(columns)} FROM programs")
        db.execute("DROP TABLE programs")
        db.execute("ALTER TABLE old RENAME TO programs")
        db.execute("UPDATE schema_version SET version = ?", (version,))
    with Store(db_path) as migrated:
        assert migrated.get_program(public.id) == public
        assert migrated.count_dead_letters() == 0
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_store_of_another_schema_version_is_refused(db_path: Path):
    Store(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreVersionError, match="version 99"):
        Store(db_path)


def test_other_connections_and_processes_see_committed_rows(programs: ProgramRegistry, db_path: Path):
    public = programs.register(create("person_on_bike"))
    with Store(db_path) as other:
        assert other.get_program(public.id) == public
    script = f"import sqlite3; print(sqlite3.connect({str(db_path)!r}).execute('SELECT id FROM programs').fetchall())"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=20)
    assert out.stdout.strip() == str([(public.id,)])


def test_a_failed_write_leaves_nothing_behind(programs: ProgramRegistry, store: Store):
    public = programs.register(create("person_on_bike"))
    with pytest.raises(sqlite3.IntegrityError):
        store.add_program(public)  # the same id twice
    assert store.list_programs() == [public]
    second = programs.register(create("leftmost_color", kind="open"))  # the store still writes
    assert [p.id for p in store.list_programs()] == [public.id, second.id]
