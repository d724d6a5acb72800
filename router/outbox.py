"""Messages for the policy that could not be delivered yet, kept in SQLite until they are.

Registration and feedback must reach the policy eventually and in order; when the policy is down
they wait here and a background thread retries them (``deliver``), oldest first, stopping at the
first failure so that order per program is kept. A message the policy refuses (a 4xx: resending
cannot help) is moved, in one transaction, to the store's ``policy_dead_letters`` table (the
store's schema; the ``Store`` opens the file first), logged and counted, never silently dropped.
Payloads are the contract's messages as JSON: a ``PolicySpec`` to register, a ``Feedback``; a
registration queued by an older router (the whole ``ProgramPublic``) is still delivered.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from fmprog.contract import Feedback, PolicySpec
from router.errors import PolicyInvalid
from router.policy_client import PolicyPort, PolicyRejected, PolicyUnavailable
from router.programs import policy_spec
from router.schemas import ProgramPublic

logger = logging.getLogger(__name__)


class Outbox:
    def __init__(self, path: str | Path):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS policy_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "kind TEXT NOT NULL, program_id TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0)"
        )
        self._lock = threading.Lock()

    def put(self, kind: str, program_id: str, payload: BaseModel | None = None) -> None:
        """Queue a message: ``register`` (a PolicySpec), ``feedback`` (a Feedback) or ``delete``."""
        body = "{}" if payload is None else payload.model_dump_json(by_alias=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO policy_outbox (kind, program_id, payload) VALUES (?, ?, ?)", (kind, program_id, body)
            )

    def pending(self, program_id: str | None = None) -> int:
        with self._lock:
            if program_id is None:
                return self._db.execute("SELECT COUNT(*) FROM policy_outbox").fetchone()[0]
            query = "SELECT COUNT(*) FROM policy_outbox WHERE program_id = ?"
            return self._db.execute(query, (program_id,)).fetchone()[0]

    def deliver(self, policy: PolicyPort, on_dead_letter: Callable[[str], None] | None = None) -> int:
        """Send waiting messages oldest first; stop at the first failure. A message the policy
        refuses (``PolicyRejected``) is moved to the dead letters, logged at WARNING and reported to
        ``on_dead_letter(kind)``, since resending cannot help. Returns how many went."""
        delivered = 0
        while True:
            with self._lock:
                row = self._db.execute(
                    "SELECT id, kind, program_id, payload, attempts FROM policy_outbox ORDER BY id LIMIT 1"
                ).fetchone()
            if row is None:
                return delivered
            message_id, kind, program_id, payload, attempts = row
            try:
                if kind == "register":
                    policy.register(program_id, _spec(payload))
                elif kind == "feedback":
                    policy.feedback(program_id, Feedback.model_validate_json(payload))
                elif kind == "delete":
                    policy.delete(program_id)
            except (PolicyRejected, PolicyInvalid, ValidationError) as exc:
                reason = exc.detail if isinstance(exc, PolicyRejected) else f"the message cannot be sent: {exc}"
                self._dead_letter(message_id, kind, program_id, payload, attempts, reason)
                logger.warning(
                    "the policy refused a %s message for program %s (kept as a dead letter): %s",
                    kind,
                    program_id,
                    reason,
                )
                if on_dead_letter is not None:
                    on_dead_letter(kind)
                continue
            except PolicyUnavailable:
                with self._lock:
                    self._db.execute("UPDATE policy_outbox SET attempts = attempts + 1 WHERE id = ?", (message_id,))
                return delivered
            else:
                delivered += 1
            with self._lock:
                self._db.execute("DELETE FROM policy_outbox WHERE id = ?", (message_id,))

    def _dead_letter(
        self, message_id: int, kind: str, program_id: str, payload: str, attempts: int, reason: str
    ) -> None:
        """Move a refused message to ``policy_dead_letters`` in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO policy_dead_letters (kind, program_id, payload, reason, attempts, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (kind, program_id, payload, reason, attempts, datetime.now(UTC).isoformat()),
                )
                self._db.execute("DELETE FROM policy_outbox WHERE id = ?", (message_id,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _spec(payload: str) -> PolicySpec:
    """The spec of a queued registration (a whole program, as older routers queued it, or the spec)."""
    data = json.loads(payload)
    if "source" in data:
        return policy_spec(ProgramPublic.model_validate(data))
    return PolicySpec.model_validate(data)
