"""SQLite persistence of programs, answers (one per decision) and feedback.

One database file (``":memory:"`` for a throwaway store) in WAL mode, so readers in other
connections and processes never block the writer. One connection per ``Store``, shared by the
server's threads under a lock; every change is committed before a method returns, and the
changes that must be atomic (a label for a decision) run in one ``BEGIN IMMEDIATE`` transaction,
so two stores over the same file cannot both resolve a decision. The schema is created on open;
``schema_version`` records its version and a file of another version is refused.

A cache of synthesised programs (``synthesized_programs``) is keyed by the normalised task, its
kind, the synthesis prompt's version and the model, so registering a task again costs no model call.

Policy messages the policy refused (``policy_dead_letters``) are kept for an operator rather than
dropped; the outbox (``router.outbox``) moves them there.

A deleted program's row is removed; its decisions stay (each keeps the task kind it needs to be
rewarded), so feedback for frames answered before the delete is still accepted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.errors import Conflict, NotFound, RouterError
from router.schemas import (
    AnswerRecord,
    CachedProgram,
    CallSitePublic,
    DeadLetter,
    FeedbackRecord,
    ProgramPublic,
    SynthesisPublic,
)

SCHEMA_VERSION = 4

DEAD_LETTERS = """
CREATE TABLE IF NOT EXISTS policy_dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,  -- register, feedback or delete (the outbox's kinds)
    program_id  TEXT NOT NULL,
    payload     TEXT NOT NULL,  -- JSON: the message as it was queued
    reason      TEXT NOT NULL,  -- the policy's reply
    attempts    INTEGER NOT NULL,
    created_at  TEXT NOT NULL   -- when the policy refused it
)
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS programs (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('binary', 'open')),
    lambda      REAL NOT NULL CHECK (lambda >= 0),
    algorithm   TEXT NOT NULL,
    hyperparameters TEXT NOT NULL DEFAULT '{}',  -- JSON: the algorithm's hyper-parameters
    call_sites  TEXT NOT NULL,  -- JSON: [CallSitePublic], each with its candidate backends and costs
    created_at  TEXT NOT NULL,  -- ISO 8601, UTC
    query       TEXT,           -- the natural-language task the program was synthesised from, or NULL
    synthesis   TEXT            -- JSON: SynthesisPublic, or NULL for a program sent as source
);
CREATE TABLE IF NOT EXISTS decisions (
    id              TEXT PRIMARY KEY,
    program_id      TEXT NOT NULL,  -- no foreign key: decisions outlive a deleted program
    kind            TEXT NOT NULL CHECK (kind IN ('binary', 'open')),
    frame_id        TEXT,
    decision        TEXT NOT NULL,  -- JSON: {site id: backend}
    fallback        INTEGER NOT NULL CHECK (fallback IN (0, 1)),
    answer          TEXT NOT NULL,  -- JSON
    error           TEXT,           -- JSON: ProgramStopped, or NULL when the program answered
    trace           TEXT NOT NULL,  -- JSON: [InvocationPublic]
    executed_sites  TEXT NOT NULL,  -- JSON: [site id], in order of first execution
    site_costs      TEXT NOT NULL,  -- JSON: {site id: cost charged}
    cost            REAL NOT NULL,
    latency_s       REAL NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'answered', 'resolved', 'expired')),
    created_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_program ON decisions (program_id, created_at);
CREATE INDEX IF NOT EXISTS decisions_by_status ON decisions (status, created_at);
CREATE TABLE IF NOT EXISTS synthesized_programs (
    query        TEXT NOT NULL,  -- normalised: lower case, single spaces, no trailing punctuation
    kind         TEXT NOT NULL CHECK (kind IN ('binary', 'open')),
    api_version  TEXT NOT NULL,  -- hash of the synthesis prompt (the program API it documents)
    synthesizer  TEXT NOT NULL,  -- the model that wrote it
    source       TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    latency_s    REAL NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (query, kind, api_version, synthesizer)
);
CREATE TABLE IF NOT EXISTS feedback (
    decision_id  TEXT PRIMARY KEY REFERENCES decisions (id),
    label        TEXT NOT NULL,
    reward       REAL NOT NULL,
    created_at   TEXT NOT NULL
);
"""
    + DEAD_LETTERS
)


# Statements that take a store of version N (the key) to version N + 1.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE programs ADD COLUMN hyperparameters TEXT NOT NULL DEFAULT '{}'",),
    2: ("ALTER TABLE programs ADD COLUMN query TEXT", "ALTER TABLE programs ADD COLUMN synthesis TEXT"),
    3: (DEAD_LETTERS,),
}


class StoreVersionError(RouterError):
    """The database file was written by a different schema version."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class Store:
    """Programs, decisions and feedback in one SQLite file; safe to share between threads."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0):
        self.path = str(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._create_schema()

    def _create_schema(self) -> None:
        with self._transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            version = row["version"]
            if version not in _MIGRATIONS and version != SCHEMA_VERSION:
                raise StoreVersionError(
                    f"{self.path}: store schema version {version}, this router reads version {SCHEMA_VERSION}"
                )
            while version in _MIGRATIONS:
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                version += 1
            db.execute("UPDATE schema_version SET version = ?", (version,))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Programs

    def add_program(self, program: ProgramPublic) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO programs (id, source, digest, kind, lambda, algorithm, hyperparameters, call_sites,"
                " created_at, query, synthesis) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    program.id,
                    program.source,
                    program.digest,
                    program.kind,
                    program.lambda_,
                    program.algorithm,
                    json.dumps(program.hyperparameters),
                    json.dumps([site.model_dump(mode="json") for site in program.call_sites]),
                    program.created_at.isoformat(),
                    program.query,
                    program.synthesis.model_dump_json() if program.synthesis else None,
                ),
            )

    def get_program(self, program_id: str) -> ProgramPublic:
        with self._lock:
            row = self._db.execute("SELECT * FROM programs WHERE id = ?", (program_id,)).fetchone()
        if row is None:
            raise NotFound(f"no program with id {program_id!r}")
        return _program(row)

    def program_digest(self, program_id: str) -> str:
        """The stored program's digest (a cheap check that it still exists and has not changed)."""
        with self._lock:
            row = self._db.execute("SELECT digest FROM programs WHERE id = ?", (program_id,)).fetchone()
        if row is None:
            raise NotFound(f"no program with id {program_id!r}")
        return row["digest"]

    def list_programs(self, *, limit: int = 100, offset: int = 0) -> list[ProgramPublic]:
        """Programs, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM programs ORDER BY created_at, id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [_program(row) for row in rows]

    def delete_program(self, program_id: str) -> None:
        with self._transaction() as db:
            if db.execute("DELETE FROM programs WHERE id = ?", (program_id,)).rowcount == 0:
                raise NotFound(f"no program with id {program_id!r}")

    # Synthesised programs, by task (the synthesis cache)

    def get_synthesized(self, query: str, kind: str, api_version: str, synthesizer: str) -> CachedProgram | None:
        """The program synthesised before for this normalised query, task kind, prompt and model."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM synthesized_programs"
                " WHERE query = ? AND kind = ? AND api_version = ? AND synthesizer = ?",
                (query, kind, api_version, synthesizer),
            ).fetchone()
        if row is None:
            return None
        return CachedProgram(
            source=row["source"],
            attempts=row["attempts"],
            latency_s=row["latency_s"],
            created_at=datetime.fromisoformat(row["created_at"]),
        )

    def put_synthesized(
        self, query: str, kind: str, api_version: str, synthesizer: str, *, source: str, attempts: int, latency_s: float
    ) -> None:
        """Remember a validated synthesised program (replacing an older one for the same key)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO synthesized_programs"
                " (query, kind, api_version, synthesizer, source, attempts, latency_s, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (query, kind, api_version, synthesizer, source, attempts, latency_s, utc_now().isoformat()),
            )

    def count_synthesized(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM synthesized_programs").fetchone()[0]

    # Answers: one row per decision (the ``decisions`` table), keyed by the decision id

    def add_answer(self, decision: AnswerRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO decisions (id, program_id, kind, frame_id, decision, fallback, answer, error, trace,"
                " executed_sites, site_costs, cost, latency_s, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.id,
                    decision.program_id,
                    decision.kind,
                    decision.frame_id,
                    json.dumps(decision.decision),
                    int(decision.fallback),
                    json.dumps(decision.answer),
                    decision.error.model_dump_json() if decision.error else None,
                    json.dumps([i.model_dump(mode="json") for i in decision.trace]),
                    json.dumps(decision.executed_sites),
                    json.dumps(decision.site_costs),
                    decision.cost,
                    decision.latency_s,
                    decision.status,
                    decision.created_at.isoformat(),
                ),
            )

    def get_answer(self, decision_id: str) -> AnswerRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone()
        if row is None:
            raise NotFound(f"no decision with id {decision_id!r}")
        return _answer(row)

    def list_answers(self, program_id: str | None = None, *, limit: int = 100, offset: int = 0) -> list[AnswerRecord]:
        """Answers, oldest first; those of one program when ``program_id`` is given."""
        where, args = ("WHERE program_id = ?", (program_id,)) if program_id else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM decisions {where} ORDER BY created_at, id LIMIT ? OFFSET ?", (*args, limit, offset)
            ).fetchall()
        return [_answer(row) for row in rows]

    def expire_answers(self, answered_before: datetime) -> int:
        """Mark answers given before ``answered_before`` and never labelled as expired; how many."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE decisions SET status = 'expired' WHERE status IN ('pending', 'answered') AND created_at < ?",
                (answered_before.isoformat(),),
            ).rowcount

    # Feedback

    def get_feedback(self, decision_id: str) -> FeedbackRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM feedback WHERE decision_id = ?", (decision_id,)).fetchone()
        return _feedback(row) if row else None

    def record_feedback(self, decision_id: str, label: str, reward: float) -> tuple[FeedbackRecord, bool]:
        """Store the label for a decision and resolve it, once.

        Returns the stored feedback and whether it is a repeat (the same label was already stored;
        the first reward stands). Raises NotFound for an unknown decision, Conflict for a
        different label than the stored one or for an expired decision.
        """
        with self._transaction() as db:
            row = db.execute("SELECT status FROM decisions WHERE id = ?", (decision_id,)).fetchone()
            if row is None:
                raise NotFound(f"no decision with id {decision_id!r}")
            existing = db.execute("SELECT * FROM feedback WHERE decision_id = ?", (decision_id,)).fetchone()
            if existing is not None:
                if existing["label"] != label:
                    raise Conflict(f"decision {decision_id!r} already has label {existing['label']!r}; got {label!r}")
                return _feedback(existing), True
            if row["status"] == "expired":
                raise Conflict(f"decision {decision_id!r} expired without feedback")
            record = FeedbackRecord(decision_id=decision_id, label=label, reward=reward, created_at=utc_now())
            db.execute(
                "INSERT INTO feedback (decision_id, label, reward, created_at) VALUES (?, ?, ?, ?)",
                (decision_id, label, reward, record.created_at.isoformat()),
            )
            db.execute("UPDATE decisions SET status = 'resolved' WHERE id = ?", (decision_id,))
            return record, False

    # Policy messages the policy refused (moved here from the outbox by ``Outbox.deliver``)

    def list_dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Refused policy messages, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM policy_dead_letters ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [
            DeadLetter(
                id=row["id"],
                kind=row["kind"],
                program_id=row["program_id"],
                payload=json.loads(row["payload"]),
                reason=row["reason"],
                attempts=row["attempts"],
                created_at=datetime.fromisoformat(row["created_at"]),
            )
            for row in rows
        ]

    def count_dead_letters(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM policy_dead_letters").fetchone()[0]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) under the store's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self._db = db
        self._lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


def _program(row: sqlite3.Row) -> ProgramPublic:
    return ProgramPublic(
        id=row["id"],
        source=row["source"],
        kind=row["kind"],
        lambda_=row["lambda"],
        algorithm=row["algorithm"],
        hyperparameters=json.loads(row["hyperparameters"]),
        call_sites=[CallSitePublic.model_validate(site) for site in json.loads(row["call_sites"])],
        created_at=datetime.fromisoformat(row["created_at"]),
        digest=row["digest"],
        query=row["query"],
        synthesis=SynthesisPublic.model_validate_json(row["synthesis"]) if row["synthesis"] else None,
    )


def _answer(row: sqlite3.Row) -> AnswerRecord:
    return AnswerRecord(
        id=row["id"],
        program_id=row["program_id"],
        kind=row["kind"],
        frame_id=row["frame_id"],
        decision=json.loads(row["decision"]),
        fallback=bool(row["fallback"]),
        answer=json.loads(row["answer"]),
        error=json.loads(row["error"]) if row["error"] else None,
        trace=json.loads(row["trace"]),
        executed_sites=json.loads(row["executed_sites"]),
        site_costs=json.loads(row["site_costs"]),
        cost=row["cost"],
        latency_s=row["latency_s"],
        status=row["status"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def _feedback(row: sqlite3.Row) -> FeedbackRecord:
    return FeedbackRecord(
        decision_id=row["decision_id"],
        label=row["label"],
        reward=row["reward"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )
