"""Durable policy state: an SQLite log in the state directory plus parameter snapshots beside it.

- ``policies``: each program's PolicySpec.
- ``pending``: decisions made and not yet resolved (with the context the policy needs to learn).
- ``feedback``: every feedback event, in arrival order (``seq``), with its decision.
- ``reuse_gates``: each (program, camera)'s reuse gate (``fmprog.streams.reuse``), saved by the trainer.
- ``<program>.pt``: a snapshot of the policy (parameters, optimizer state, buffers, RNG, U), the
  ``seq`` of the last feedback it includes and the training that made it (steps, seconds), written
  atomically (temp file, fsync, rename).

On start a policy is rebuilt from its snapshot (or its spec) and the feedback logged after the
snapshot is replayed into it, so a ``kill -9`` loses at most the requests in flight.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fmprog.contract import Feedback, PolicySpec
from policy.decisions import PendingDecision

SCHEMA = """
CREATE TABLE IF NOT EXISTS policies (program_id TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    decision_id TEXT PRIMARY KEY, program_id TEXT NOT NULL, decision TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS pending_by_age ON pending (created_at);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, decision_id TEXT NOT NULL UNIQUE, program_id TEXT NOT NULL,
    decision TEXT NOT NULL, feedback TEXT NOT NULL, received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS feedback_by_program ON feedback (program_id, seq);
CREATE TABLE IF NOT EXISTS reuse_gates (
    program_id TEXT NOT NULL, camera TEXT NOT NULL, state TEXT NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (program_id, camera));
"""


@dataclass(frozen=True)
class Snapshot:
    """A program's stored snapshot: the policy's bytes, the ``seq`` of the last feedback it
    includes, and the training steps (and their seconds) that went into it."""

    blob: io.BytesIO
    seq: int
    trained_steps: int = 0
    train_seconds: float = 0.0


class PolicyState:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.dir / "policy.sqlite3"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed (kill -9), which is the
        # promise; only an OS crash or power loss may lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    # -- specs ------------------------------------------------------------------------------------

    def put_spec(self, program_id: str, spec: PolicySpec) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO policies (program_id, spec, updated_at) VALUES (?, ?, ?)",
                (program_id, spec.model_dump_json(by_alias=True), time.time()),
            )

    def specs(self) -> dict[str, PolicySpec]:
        with self._lock:
            rows = self._db.execute("SELECT program_id, spec FROM policies").fetchall()
        return {pid: PolicySpec.model_validate_json(spec) for pid, spec in rows}

    def delete(self, program_id: str) -> None:
        with self._lock:
            for table in ("policies", "pending", "feedback", "reuse_gates"):
                self._db.execute(f"DELETE FROM {table} WHERE program_id = ?", (program_id,))
        self.snapshot_path(program_id).unlink(missing_ok=True)

    # -- pending decisions ------------------------------------------------------------------------

    def add_pending(self, program_id: str, decision_id: str, decision: PendingDecision) -> bool:
        """Record a pending decision; False (nothing written) when the id is already pending or resolved."""
        with self._lock:
            taken = self._db.execute(
                "SELECT 1 FROM pending WHERE decision_id = ? UNION ALL SELECT 1 FROM feedback WHERE decision_id = ?",
                (decision_id, decision_id),
            ).fetchone()
            if taken:
                return False
            self._db.execute(
                "INSERT INTO pending (decision_id, program_id, decision, created_at) VALUES (?, ?, ?, ?)",
                (decision_id, program_id, decision.model_dump_json(), time.time()),
            )
            return True

    def pending(self, decision_id: str) -> tuple[str, PendingDecision] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT program_id, decision FROM pending WHERE decision_id = ?", (decision_id,)
            ).fetchone()
        return None if row is None else (row[0], PendingDecision.model_validate_json(row[1]))

    def pending_count(self, program_id: str | None = None) -> int:
        with self._lock:
            if program_id is None:
                return self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM pending WHERE program_id = ?", (program_id,)).fetchone()[0]

    def expired(self, older_than_s: float) -> list[tuple[str, str, PendingDecision]]:
        cutoff = time.time() - older_than_s
        with self._lock:
            rows = self._db.execute(
                "SELECT decision_id, program_id, decision FROM pending WHERE created_at < ? ORDER BY created_at",
                (cutoff,),
            ).fetchall()
        return [(d, p, PendingDecision.model_validate_json(x)) for d, p, x in rows]

    def drop_pending(self, decision_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE decision_id = ?", (decision_id,))

    def drop_pending_of(self, program_id: str, decision_ids: list[str]) -> int:
        """Drop those of ``decision_ids`` pending for ``program_id``; how many there were."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped = sum(
                    self._db.execute(
                        "DELETE FROM pending WHERE decision_id = ? AND program_id = ?", (decision_id, program_id)
                    ).rowcount
                    for decision_id in decision_ids
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return dropped

    # -- feedback log -------------------------------------------------------------------------------

    def logged(self, decision_id: str) -> Feedback | None:
        with self._lock:
            row = self._db.execute("SELECT feedback FROM feedback WHERE decision_id = ?", (decision_id,)).fetchone()
        return None if row is None else Feedback.model_validate_json(row[0])

    def log_feedback(self, program_id: str, decision_id: str, decision: PendingDecision, feedback: Feedback) -> int:
        """Append the feedback and resolve its pending decision, in one transaction; returns its seq."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT INTO feedback (decision_id, program_id, decision, feedback, received_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (decision_id, program_id, decision.model_dump_json(), feedback.model_dump_json(), time.time()),
                )
                self._db.execute("DELETE FROM pending WHERE decision_id = ?", (decision_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(cursor.lastrowid or 0)

    def feedback_after(self, program_id: str, seq: int) -> list[tuple[int, PendingDecision, Feedback]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, decision, feedback FROM feedback WHERE program_id = ? AND seq > ? ORDER BY seq",
                (program_id, seq),
            ).fetchall()
        return [(s, PendingDecision.model_validate_json(d), Feedback.model_validate_json(f)) for s, d, f in rows]

    # -- reuse gates --------------------------------------------------------------------------------

    def put_gates(self, gates: list[tuple[str, str, dict]]) -> None:
        """Store reuse gates' states: (program, camera, state) each."""
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO reuse_gates (program_id, camera, state, updated_at) VALUES (?, ?, ?, ?)",
                [(program_id, camera, json.dumps(state), now) for program_id, camera, state in gates],
            )

    def gates(self) -> list[tuple[str, str, dict]]:
        with self._lock:
            rows = self._db.execute("SELECT program_id, camera, state FROM reuse_gates").fetchall()
        return [(program_id, camera, json.loads(state)) for program_id, camera, state in rows]

    # -- snapshots ----------------------------------------------------------------------------------

    def snapshot_path(self, program_id: str) -> Path:
        return self.dir / f"{program_id}.pt"

    def write_snapshot(
        self, program_id: str, blob: bytes, seq: int, *, trained_steps: int = 0, train_seconds: float = 0.0
    ) -> None:
        """Atomically replace the program's snapshot (``blob`` from ``policy.snapshots``) tagged with
        ``seq`` and the training that made it."""
        path = self.snapshot_path(program_id)
        temporary = path.with_suffix(".tmp")
        tags = {"seq": seq, "trained_steps": trained_steps, "train_seconds": train_seconds}
        header = json.dumps(tags).encode() + b"\n"
        with open(temporary, "wb") as file:
            file.write(header + blob)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def read_snapshot(self, program_id: str) -> Snapshot | None:
        """The program's snapshot, or None; one written before snapshots carried their training
        reads as trained 0 steps."""
        path = self.snapshot_path(program_id)
        if not path.exists():
            return None
        data = path.read_bytes()
        header, _, blob = data.partition(b"\n")
        tags = json.loads(header)
        return Snapshot(
            io.BytesIO(blob),
            int(tags["seq"]),
            trained_steps=int(tags.get("trained_steps", 0)),
            train_seconds=float(tags.get("train_seconds", 0.0)),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
