"""Messages for the policy that could not be delivered yet, kept in the store until they are.

Registration and feedback must reach the policy eventually and in order; when the policy is down
they wait here and a background thread retries them (``deliver``), oldest first, stopping at the
first failure so that order per program is kept. A message the policy refuses (a 4xx: resending
cannot help) is moved, in one transaction, to the store's ``policy_dead_letters`` table, logged and
counted, never silently dropped. Payloads are the contract's messages as JSON: a ``PolicySpec`` to
register, a ``Feedback``, an ``ExpiredDecisions`` to forget, a ``ReuseOutcome`` (a label for a
reused frame, for the camera's reuse gate); a registration queued by an older
router (the whole ``ProgramPublic``) is still delivered.

Several routers on one PostgreSQL database share the outbox: each message is claimed with
``SELECT ... FOR UPDATE SKIP LOCKED`` in a transaction that lasts until it is delivered and deleted
(or moved to the dead letters), so no two routers send the same message, and a router killed
mid-delivery leaves its message to the others (its transaction rolls back). A program's message is
claimable only once every older message of that program is gone, so a feedback never overtakes
the registration it needs. On SQLite (one router per file) the message is read, sent and deleted
under the outbox's own lock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Connection

from fmprog.contract import ExpiredDecisions, Feedback, PolicySpec, ReuseOutcome
from router.errors import PolicyInvalid
from router.policy_client import PolicyPort, PolicyRejected, PolicyUnavailable
from router.programs import policy_spec
from router.schemas import ProgramPublic
from router.store import QueuedMessage, Store, queue
from router.tables import policy_dead_letters, policy_outbox

logger = logging.getLogger(__name__)


class Outbox:
    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()

    def put(self, kind: str, program_id: str, payload: BaseModel | None = None) -> None:
        """Queue a message: ``register`` (a PolicySpec), ``feedback`` (a Feedback) or ``delete``."""
        body = "{}" if payload is None else payload.model_dump_json(by_alias=True)
        with self.store.transaction() as db:
            queue(db, QueuedMessage(kind, program_id, body))

    def pending(self, program_id: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(policy_outbox)
        if program_id is not None:
            query = query.where(policy_outbox.c.program_id == program_id)
        with self.store.reading() as db:
            return db.execute(query).scalar_one()

    def deliver(self, policy: PolicyPort, on_dead_letter: Callable[[str], None] | None = None) -> int:
        """Send waiting messages oldest first; stop at the first failure. A message the policy
        refuses (``PolicyRejected``) is moved to the dead letters, logged at WARNING and reported to
        ``on_dead_letter(kind)``, since resending cannot help. Returns how many went."""
        delivered = 0
        while True:
            if self.store.claims_rows:
                with self.store.transaction() as db:
                    row = db.execute(_oldest(claim=True)).first()
                    if row is None:
                        return delivered
                    outcome = self._send(db, row, policy, on_dead_letter)
            else:
                with self._lock:
                    with self.store.reading() as db:
                        row = db.execute(_oldest(claim=False)).first()
                    if row is None:
                        return delivered
                    outcome = self._send(None, row, policy, on_dead_letter)
            if outcome == "unavailable":
                return delivered
            delivered += outcome == "delivered"

    def _send(
        self,
        db: Connection | None,
        row: Any,
        policy: PolicyPort,
        on_dead_letter: Callable[[str], None] | None,
    ) -> str:
        """Send one message; delete it, or move it to the dead letters, in ``db`` (the claim's
        transaction) or in a transaction of its own. Returns delivered, dead_letter or unavailable."""
        message_id, kind, program_id, payload, attempts = row
        try:
            if kind == "register":
                policy.register(program_id, _spec(payload))
            elif kind == "feedback":
                policy.feedback(program_id, Feedback.model_validate_json(payload))
            elif kind == "expire":
                policy.expire(program_id, ExpiredDecisions.model_validate_json(payload))
            elif kind == "delete":
                policy.delete(program_id)
            elif kind == "reuse":
                policy.reuse_outcome(program_id, ReuseOutcome.model_validate_json(payload))
        except (PolicyRejected, PolicyInvalid, ValidationError) as exc:
            reason = exc.detail if isinstance(exc, PolicyRejected) else f"the message cannot be sent: {exc}"
            self._in(db, lambda tx: _dead_letter(tx, message_id, kind, program_id, payload, attempts, reason))
            logger.warning(
                "the policy refused a %s message for program %s (kept as a dead letter): %s", kind, program_id, reason
            )
            if on_dead_letter is not None:
                on_dead_letter(kind)
            return "dead_letter"
        except PolicyUnavailable:
            increment = policy_outbox.update().where(policy_outbox.c.id == message_id)
            self._in(db, lambda tx: tx.execute(increment.values(attempts=policy_outbox.c.attempts + 1)))
            return "unavailable"
        self._in(db, lambda tx: tx.execute(policy_outbox.delete().where(policy_outbox.c.id == message_id)))
        return "delivered"

    def _in(self, db: Connection | None, change: Callable[[Connection], object]) -> None:
        if db is not None:
            change(db)
            return
        with self.store.transaction() as tx:
            change(tx)

    def close(self) -> None:
        """Nothing of its own to release: the store owns the connections."""


def _oldest(*, claim: bool) -> sa.Select[Any]:
    """The oldest message whose program has no older message waiting; with ``claim``, locked for
    this transaction, skipping messages other routers hold."""
    older = policy_outbox.alias("older")
    query = (
        sa.select(
            policy_outbox.c.id,
            policy_outbox.c.kind,
            policy_outbox.c.program_id,
            policy_outbox.c.payload,
            policy_outbox.c.attempts,
        )
        .where(~sa.exists().where(older.c.program_id == policy_outbox.c.program_id, older.c.id < policy_outbox.c.id))
        .order_by(policy_outbox.c.id)
        .limit(1)
    )
    return query.with_for_update(skip_locked=True, of=policy_outbox) if claim else query


def _dead_letter(
    db: Connection, message_id: int, kind: str, program_id: str, payload: str, attempts: int, reason: str
) -> None:
    """Move a refused message to ``policy_dead_letters`` (in the caller's transaction)."""
    db.execute(
        policy_dead_letters.insert().values(
            kind=kind,
            program_id=program_id,
            payload=payload,
            reason=reason,
            attempts=attempts,
            created_at=datetime.now(UTC).isoformat(),
        )
    )
    db.execute(policy_outbox.delete().where(policy_outbox.c.id == message_id))


def _spec(payload: str) -> PolicySpec:
    """The spec of a queued registration (a whole program, as older routers queued it, or the spec)."""
    data = json.loads(payload)
    if "source" in data:
        return policy_spec(ProgramPublic.model_validate(data))
    return PolicySpec.model_validate(data)
