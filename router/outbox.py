"""Messages for the policy that could not be delivered yet, kept in the store until they are.

Registration and feedback must reach the policy eventually and in order. A request that queues a
message does not send it: it wakes the outbox's delivery thread (``Courier``) and returns, so a
client never waits for the policy; the thread delivers (``deliver``) oldest first, stopping at the
first failure so that order per program is kept, and retries every ``retry_s`` while the policy
is down. A program's consecutive feedback messages go to the policy in one request (at most
``BATCH``; ``POST /policies/{id}/feedback/batch``), each answered on its own. A message the policy
refuses (a 4xx: resending cannot help) is moved, in one transaction, to the store's
``policy_dead_letters`` table, logged and counted, never silently dropped; of a batch, only the
feedback it refuses. Payloads are the contract's messages as JSON: a ``PolicySpec`` to register, a
``Feedback``, an ``ExpiredDecisions`` to forget, a ``ReuseOutcome`` (a label for a reused frame,
for the camera's reuse gate); a registration queued by an older router (the whole
``ProgramPublic``) is still delivered.

Several routers on one PostgreSQL database share the outbox: each message is claimed with
``SELECT ... FOR UPDATE SKIP LOCKED`` in a transaction that lasts until it is delivered and deleted
(or moved to the dead letters), so no two routers send the same message, and a router killed
mid-delivery leaves its message to the others (its transaction rolls back; the policy takes a
feedback sent again as a repeat). A program's message is claimable only once every older message
of that program is gone, so a feedback never overtakes the registration it needs; a batch is the
oldest claimable message, a feedback, with the feedback of its program queued after it up to the
program's next other message, all claimed in the one transaction. On SQLite (one router per file)
the batch is read, sent and deleted under the outbox's own lock.
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

from fmprog.contract import ExpiredDecisions, Feedback, FeedbackList, PolicySpec, ReuseOutcome
from router.errors import PolicyInvalid
from router.policy_client import PolicyPort, PolicyRejected, PolicyUnavailable
from router.programs import policy_spec
from router.schemas import ProgramPublic
from router.store import QueuedMessage, Store, queue
from router.tables import policy_dead_letters, policy_outbox

logger = logging.getLogger(__name__)

BATCH = 64
"""The most feedback messages sent to the policy in one request."""
BATCH_BYTES = 4 * 1024 * 1024
"""The most bytes of feedback in one request (a batch ends before the message that would pass
it), well under the policy's request limit even for feedback carrying many invocation records."""


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
        """Send waiting messages oldest first, a program's consecutive feedback in one request;
        stop at the first failure. A message the policy refuses (``PolicyRejected``, or a refused
        item of a batch) is moved to the dead letters, logged at WARNING and reported to
        ``on_dead_letter(kind)``, since resending cannot help. Returns how many went."""
        delivered = 0
        while True:
            if self.store.claims_rows:
                with self.store.transaction() as db:
                    rows = _claim(db, claim=True)
                    if not rows:
                        return delivered
                    sent = self._send(db, rows, policy, on_dead_letter)
            else:
                with self._lock:
                    with self.store.reading() as db:
                        rows = _claim(db, claim=False)
                    if not rows:
                        return delivered
                    sent = self._send(None, rows, policy, on_dead_letter)
            if sent is None:
                return delivered
            delivered += sent

    def _send(
        self,
        db: Connection | None,
        rows: list[Any],
        policy: PolicyPort,
        on_dead_letter: Callable[[str], None] | None,
    ) -> int | None:
        """Send one claimed message, or a batch of feedback; delete what went and move what was
        refused to the dead letters, in ``db`` (the claim's transaction) or in a transaction of its
        own. Returns how many went, or None when the policy is unavailable (each counted an attempt)."""
        feedback = rows[0].kind == "feedback"
        outcome = self._send_feedback(rows, policy) if feedback else self._send_one(rows[0], policy)
        if outcome is None:
            ids = [row.id for row in rows]
            increment = policy_outbox.update().where(policy_outbox.c.id.in_(ids))
            self._in(db, lambda tx: tx.execute(increment.values(attempts=policy_outbox.c.attempts + 1)))
            return None
        sent, refused = outcome

        def settle(tx: Connection) -> None:
            if sent:
                tx.execute(policy_outbox.delete().where(policy_outbox.c.id.in_([row.id for row in sent])))
            for row, reason in refused:
                _dead_letter(tx, row.id, row.kind, row.program_id, row.payload, row.attempts, reason)

        self._in(db, settle)
        for row, reason in refused:
            logger.warning(
                "the policy refused a %s message for program %s (kept as a dead letter): %s",
                row.kind,
                row.program_id,
                reason,
            )
            if on_dead_letter is not None:
                on_dead_letter(row.kind)
        return len(sent)

    def _send_one(self, row: Any, policy: PolicyPort) -> tuple[list[Any], list[tuple[Any, str]]] | None:
        """Send a message that is not a feedback: ([row], []) when it went, ([], [(row, reason)])
        when it was refused, None when the policy is unavailable."""
        kind, program_id, payload = row.kind, row.program_id, row.payload
        try:
            if kind == "register":
                policy.register(program_id, _spec(payload))
            elif kind == "expire":
                policy.expire(program_id, ExpiredDecisions.model_validate_json(payload))
            elif kind == "delete":
                policy.delete(program_id)
            elif kind == "reuse":
                policy.reuse_outcome(program_id, ReuseOutcome.model_validate_json(payload))
        except (PolicyRejected, PolicyInvalid, ValidationError) as exc:
            return [], [(row, _reason(exc))]
        except PolicyUnavailable:
            return None
        return [row], []

    def _send_feedback(self, rows: list[Any], policy: PolicyPort) -> tuple[list[Any], list[tuple[Any, str]]] | None:
        """Send a program's feedback messages in one request: (those that went, those refused with
        why), or None when the policy is unavailable. The policy answers each on its own. A list it
        refuses as a whole (its program unknown, a list over its request limit, a policy older than
        the list route) is sent one message at a time instead, the first now on the single route,
        so that each message gets its own answer; the rest wait for the next rounds."""
        refused: list[tuple[Any, str]] = []
        readable: list[tuple[Any, Feedback]] = []
        for row in rows:
            try:
                feedback = Feedback.model_validate_json(row.payload)
            except ValidationError as exc:
                refused.append((row, _reason(exc)))
                continue
            if feedback.decision_id is None:
                refused.append((row, "the message cannot be sent: a feedback without its decision_id"))
            else:
                readable.append((row, feedback))
        if not readable:
            return [], refused
        try:
            reply = policy.feedback_batch(rows[0].program_id, FeedbackList(feedback=[f for _, f in readable]))
        except PolicyRejected:
            row, first = readable[0]
            try:
                policy.feedback(row.program_id, first)
            except PolicyRejected as exc:
                return [], sorted([*refused, (row, exc.detail)], key=lambda r: r[0].id)
            except PolicyUnavailable:
                return None
            return [row], refused
        except PolicyUnavailable:
            return None
        sent = []
        for (row, _), item in zip(readable, reply.results, strict=True):
            if item.outcome in ("accepted", "repeat"):
                sent.append(row)
            else:
                refused.append((row, item.detail or item.outcome))
        return sent, sorted(refused, key=lambda r: r[0].id)

    def _in(self, db: Connection | None, change: Callable[[Connection], object]) -> None:
        if db is not None:
            change(db)
            return
        with self.store.transaction() as tx:
            change(tx)

    def close(self) -> None:
        """Nothing of its own to release: the store owns the connections."""


class Courier:
    """The outbox's delivery thread: it runs ``deliver`` as soon as it is woken (a request queued a
    message and returned without waiting for the policy) and every ``retry_s`` otherwise, which
    retries what the policy could not take. Wakes that come while it delivers make one more round,
    so what a request queued is never left waiting for ``retry_s``."""

    def __init__(self, deliver: Callable[[], object], *, retry_s: float, name: str = "policy-outbox"):
        self.retry_s = retry_s
        self._deliver = deliver
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Deliver soon, in the courier's thread (never the caller's)."""
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.retry_s)
            self._wake.clear()
            try:
                self._deliver()
            except Exception:
                logger.exception("delivery to the policy failed; the outbox retries it")
            if self._stopping:
                return

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop after one last round (what was queued just before is offered to the policy once
        more), waiting up to ``timeout_s`` for it."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)


def _claim(db: Connection, *, claim: bool) -> list[Any]:
    """The next batch to send, oldest first: the oldest message whose program has no older message
    waiting and, when it is a feedback, the feedback of its program queued after it up to the
    program's next other message (``BATCH`` and ``BATCH_BYTES`` at most); with ``claim``, locked for
    this transaction."""
    head = db.execute(_oldest(claim=claim)).first()
    if head is None:
        return []
    batch = [head]
    if head.kind != "feedback":
        return batch
    size = len(head.payload)
    for row in db.execute(_following(head.id, head.program_id, claim=claim)).all():
        size += len(row.payload)
        if size > BATCH_BYTES:
            break
        batch.append(row)
    return batch


_COLUMNS = (
    policy_outbox.c.id,
    policy_outbox.c.kind,
    policy_outbox.c.program_id,
    policy_outbox.c.payload,
    policy_outbox.c.attempts,
)


def _oldest(*, claim: bool) -> sa.Select[Any]:
    """The oldest message whose program has no older message waiting; with ``claim``, locked for
    this transaction, skipping messages other routers hold."""
    older = policy_outbox.alias("older")
    query = (
        sa.select(*_COLUMNS)
        .where(~sa.exists().where(older.c.program_id == policy_outbox.c.program_id, older.c.id < policy_outbox.c.id))
        .order_by(policy_outbox.c.id)
        .limit(1)
    )
    return query.with_for_update(skip_locked=True, of=policy_outbox) if claim else query


def _following(head_id: int, program_id: str, *, claim: bool) -> sa.Select[Any]:
    """The feedback of ``program_id`` queued after message ``head_id`` (held by this transaction)
    with no other kind of message of the program between: they may go with it, since every older
    message of theirs is gone or goes with them. Another router cannot hold them (it would need
    the head); with ``claim`` they are locked all the same, skipping any that is held."""
    between = policy_outbox.alias("between")
    query = (
        sa.select(*_COLUMNS)
        .where(
            policy_outbox.c.program_id == program_id,
            policy_outbox.c.kind == "feedback",
            policy_outbox.c.id > head_id,
            ~sa.exists().where(
                between.c.program_id == program_id,
                between.c.id > head_id,
                between.c.id < policy_outbox.c.id,
                between.c.kind != "feedback",
            ),
        )
        .order_by(policy_outbox.c.id)
        .limit(BATCH - 1)
    )
    return query.with_for_update(skip_locked=True, of=policy_outbox) if claim else query


def _reason(exc: Exception) -> str:
    """Why a message was refused: the policy's own reason, or why it cannot be sent at all."""
    return exc.detail if isinstance(exc, PolicyRejected) else f"the message cannot be sent: {exc}"


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
