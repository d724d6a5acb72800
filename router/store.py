"""Persistence of programs, answers (one per decision), feedback, the policy outbox and the
synthesis cache: SQLAlchemy Core over SQLite (the embedded default) or PostgreSQL (several routers
on one database).

``Store(target)`` takes a file path (SQLite; ``":memory:"`` for a throwaway store) or a database
URL (``sqlite:///...``, ``postgresql+psycopg://user:password@host/db``) and brings the schema to the
newest Alembic revision on open (``router/migrations``; a SQLite file written before Alembic, schema
version 1 to 4, is migrated forward, one of another version refused). Every change is committed
before a method returns.

SQLite: one connection in WAL mode, shared by the server's threads under a lock; writes run in
``BEGIN IMMEDIATE`` transactions, so two stores over the same file (two processes) cannot both
resolve a decision. PostgreSQL: a connection pool; the decision being labelled is locked
(``SELECT ... FOR UPDATE``) in the transaction that stores its label, so the same label sent to two
routers at once is one event and a different one a Conflict, whichever router it reaches.

A cache of synthesised programs (``synthesized_programs``) is keyed by the normalised task, its
kind, the synthesis prompt's version and the model, so registering a task again costs no model call.
Policy messages the policy refused (``policy_dead_letters``) are kept for an operator rather than
dropped; the outbox (``router.outbox``) moves them there. ``program_quality`` counts labels per
program (right and wrong; TP, FP, FN, TN for binary tasks) in the transaction that stores each new
label: exact across routers, and kept when old decisions and feedback are pruned (``prune``).
``program_spend`` adds up what each program with a cost budget spent per window, in the transaction
that stores each answer. A label records who gave it (``source``: a client or the program's
teacher, with the teacher's run); unlabelled decisions past their label window are marked expired
(``expire_frames``) and refuse labels from then on.

A program may have a name for people (``programs.name``). Each program belongs to a tenant
(``programs.tenant``); tenants' API keys are kept as digests (``api_keys``), and ``tenant_usage``
adds up the bytes each tenant's stored decisions hold, in the transactions that store and prune
them (the stored-bytes quota).

A deleted program's row is removed; its decisions stay (each keeps the task kind it needs to be
rewarded), so feedback for frames answered before the delete is still accepted.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from fmprog.contract import PolicyDecision
from router.errors import Conflict, Expired, NotFound, RouterError
from router.schemas import (
    CachedProgram,
    CallSitePublic,
    CostBudget,
    DeadLetter,
    FeedbackRecord,
    FrameRecord,
    LabelBudget,
    LabelSource,
    ProgramPublic,
    ReuseRecord,
    SynthesisPublic,
    Teacher,
    TeacherRun,
    program_warnings,
)
from router.tables import (
    api_keys,
    decisions,
    feedback,
    policy_dead_letters,
    policy_outbox,
    program_quality,
    program_spend,
    programs,
    synthesized_programs,
    tenant_usage,
)
from router.tenants import DEFAULT_TENANT, ApiKey, new_key

# ``schema_version`` as the newest migration leaves it; routers from before Alembic read up to 4.
SCHEMA_VERSION = 5
LEGACY_VERSIONS = (1, 2, 3, 4)
MIGRATION_LOCK = 0x666D70726F67  # PostgreSQL advisory lock held while a router migrates ("fmprog")

BinaryOutcome = Literal["tp", "fp", "fn", "tn"]

# The statements of the frequent calls, built once (binding values to a prebuilt statement costs a
# fraction of building it anew, and the compiled form is cached by the engine).
_ADD_ANSWER = decisions.insert()
_ADD_FEEDBACK = feedback.insert()
_QUEUE = policy_outbox.insert()
_ANSWER = sa.select(decisions).where(decisions.c.id == sa.bindparam("id"))
_DIGEST = sa.select(programs.c.digest).where(programs.c.id == sa.bindparam("id"))
_PROGRAM = sa.select(programs).where(programs.c.id == sa.bindparam("id"))
_DECISION_TO_LABEL = (
    sa.select(decisions.c.status, decisions.c.program_id, decisions.c.created_at)
    .where(decisions.c.id == sa.bindparam("id"))
    .with_for_update()  # PostgreSQL: one label at a time per decision, across routers
)
_FEEDBACK = sa.select(feedback).where(feedback.c.decision_id == sa.bindparam("id"))
_RESOLVE = decisions.update().where(decisions.c.id == sa.bindparam("label_of")).values(status="resolved")


class StoreVersionError(RouterError):
    """The database was written by a different schema version."""


class StoreUnavailable(RouterError):
    """The database cannot be reached or opened."""


@dataclass(frozen=True)
class LabelOutcome:
    """How one label judged its answer: right or wrong, and for a binary task which of TP, FP, FN, TN."""

    right: bool
    binary: BinaryOutcome | None = None


@dataclass(frozen=True)
class QualityCounts:
    """Labels counted for one program since its first (kept through retention)."""

    right: int = 0
    wrong: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0


@dataclass(frozen=True)
class ProgramInfo:
    """What the metrics label a program with: its id, its name (None: it has none) and its tenant."""

    id: str
    name: str | None
    tenant: str


@dataclass(frozen=True)
class QueuedMessage:
    """A message for the policy, for the outbox (``router.outbox``): its kind, program and JSON."""

    kind: str
    program_id: str
    payload: str


@dataclass(frozen=True)
class Pruned:
    decisions: int
    feedback: int


def utc_now() -> datetime:
    return datetime.now(UTC)


def database_url(target: str | Path) -> URL:
    """The SQLAlchemy URL of a store: a URL as given, a path (or ":memory:") as a SQLite file."""
    text = str(target)
    if "://" in text:
        return make_url(text)
    if text == ":memory:":
        return make_url("sqlite://")
    return URL.create("sqlite", database=str(Path(text).resolve()))


class Store:
    """Programs, decisions, feedback and the outbox in one database; safe to share between threads."""

    def __init__(self, target: str | Path, *, timeout_s: float = 30.0, pool_size: int = 10):
        self.url = database_url(target)
        self.path = str(target)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            self._writing = False  # read by the engine's "begin" hook, under the lock
            self.engine = _sqlite_engine(self.url, timeout_s, lambda: self._writing)
            self._lock: contextlib.AbstractContextManager[Any] = threading.RLock()
        elif self.dialect == "postgresql":
            self.engine = sa.create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=2 * pool_size,
                pool_pre_ping=True,
                pool_timeout=timeout_s,
            )
            self._lock = contextlib.nullcontext()
        else:
            raise StoreVersionError(f"unsupported database {self.url.drivername!r}: use SQLite or PostgreSQL")
        try:
            self._migrate()
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            where = self.url.render_as_string(hide_password=True)
            raise StoreUnavailable(f"cannot open the router's store at {where}: {exc.orig}") from None
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def claims_rows(self) -> bool:
        """Whether several routers may share this database (``SELECT ... FOR UPDATE SKIP LOCKED``)."""
        return self.dialect == "postgresql"

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config
        from alembic.util import CommandError

        config = Config()
        config.set_main_option("script_location", str(resources.files("router") / "migrations"))
        with self.transaction() as db:
            if self.dialect == "postgresql":
                db.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            tables = set(sa.inspect(db).get_table_names())
            if "alembic_version" not in tables and "schema_version" in tables:
                version = db.execute(sa.text("SELECT version FROM schema_version")).scalar()
                if version not in LEGACY_VERSIONS:
                    where = self.url.render_as_string(hide_password=True)
                    raise StoreVersionError(
                        f"{where}: store schema version {version}, this router reads "
                        f"versions {LEGACY_VERSIONS[0]} to {LEGACY_VERSIONS[-1]} and {SCHEMA_VERSION}"
                    )
            config.attributes["connection"] = db
            try:
                command.upgrade(config, "head")
            except CommandError as exc:  # e.g. a revision this router does not know: a newer router's
                raise StoreVersionError(f"{self.url.render_as_string(hide_password=True)}: {exc}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in a transaction, committed when the block ends (rolled back on error); on
        SQLite it begins with ``BEGIN IMMEDIATE`` (the write lock, taken at once)."""
        with self._lock:
            self._writing = True
            try:
                with self.engine.begin() as db:
                    yield db
            finally:
                self._writing = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads (on SQLite each statement reads a committed snapshot, no lock taken)."""
        with self._lock, self.engine.connect() as db:
            yield db

    def close(self) -> None:
        with self._lock:
            self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _insert(self, table: sa.Table) -> Any:
        """An INSERT that can take ``on_conflict_do_update`` in this store's dialect."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # Programs

    def add_program(self, program: ProgramPublic, message: QueuedMessage | None = None) -> None:
        """Store a program, and queue ``message`` (its registration) for the policy with it."""
        row = {
            "id": program.id,
            "source": program.source,
            "digest": program.digest,
            "kind": program.kind,
            "lambda": program.lambda_,
            "lambda_source": program.lambda_source,
            "algorithm": program.algorithm,
            "hyperparameters": json.dumps(program.hyperparameters),
            "call_sites": json.dumps([site.model_dump(mode="json") for site in program.call_sites]),
            "created_at": program.created_at.isoformat(),
            "query": program.query,
            "synthesis": program.synthesis.model_dump_json() if program.synthesis else None,
            "labels": _labels(program),
            "budget": program.budget.model_dump_json() if program.budget else None,
            "tenant": program.tenant,
            "name": program.name,
        }
        with self.transaction() as db:
            db.execute(programs.insert().values(row))
            if message is not None:
                queue(db, message)

    def get_program(self, program_id: str) -> ProgramPublic:
        with self.reading() as db:
            row = db.execute(_PROGRAM, {"id": program_id}).mappings().first()
        if row is None:
            raise NotFound(f"no program with id {program_id!r}")
        return _program(row)

    def program_digest(self, program_id: str) -> str:
        """The stored program's digest (a cheap check that it still exists and has not changed)."""
        with self.reading() as db:
            digest = db.execute(_DIGEST, {"id": program_id}).scalar()
        if digest is None:
            raise NotFound(f"no program with id {program_id!r}")
        return digest

    def list_programs(self, *, tenant: str | None = None, limit: int = 100, offset: int = 0) -> list[ProgramPublic]:
        """Programs, oldest first: every tenant's, or ``tenant``'s."""
        query = sa.select(programs).order_by(programs.c.created_at, programs.c.id).limit(limit).offset(offset)
        if tenant is not None:
            query = query.where(programs.c.tenant == tenant)
        with self.reading() as db:
            rows = db.execute(query).mappings().all()
        return [_program(row) for row in rows]

    def program_info(self) -> list[ProgramInfo]:
        """Every tenant's programs by id, with their names and tenants, oldest first."""
        query = sa.select(programs.c.id, programs.c.name, programs.c.tenant)
        with self.reading() as db:
            rows = db.execute(query.order_by(programs.c.created_at, programs.c.id)).all()
        return [ProgramInfo(row.id, row.name, row.tenant) for row in rows]

    def delete_program(self, program_id: str, message: QueuedMessage | None = None) -> None:
        """Delete a program, and queue ``message`` (its delete) for the policy with it."""
        with self.transaction() as db:
            if db.execute(programs.delete().where(programs.c.id == program_id)).rowcount == 0:
                raise NotFound(f"no program with id {program_id!r}")
            if message is not None:
                queue(db, message)

    # Synthesised programs, by task (the synthesis cache)

    def get_synthesized(self, query: str, kind: str, api_version: str, synthesizer: str) -> CachedProgram | None:
        """The program synthesised before for this normalised query, task kind, prompt and model."""
        t = synthesized_programs
        where = (t.c.query == query, t.c.kind == kind, t.c.api_version == api_version, t.c.synthesizer == synthesizer)
        with self.reading() as db:
            row = db.execute(sa.select(t).where(*where)).mappings().first()
        if row is None:
            return None
        return CachedProgram(
            source=row["source"],
            attempts=row["attempts"],
            latency_s=row["latency_s"],
            created_at=datetime.fromisoformat(row["created_at"]),
            warnings=json.loads(row["warnings"]) if row["warnings"] else [],
        )

    def put_synthesized(
        self,
        query: str,
        kind: str,
        api_version: str,
        synthesizer: str,
        *,
        source: str,
        attempts: int,
        latency_s: float,
        warnings: Sequence[str] = (),
    ) -> None:
        """Remember a validated synthesised program, with what its dry run was unsure of (replacing
        an older one for the same key)."""
        values = {
            "source": source,
            "attempts": attempts,
            "latency_s": latency_s,
            "created_at": utc_now().isoformat(),
            "warnings": json.dumps(list(warnings)),
        }
        key = {"query": query, "kind": kind, "api_version": api_version, "synthesizer": synthesizer}
        statement = self._insert(synthesized_programs).values(**key, **values)
        statement = statement.on_conflict_do_update(index_elements=list(key), set_=values)
        with self.transaction() as db:
            db.execute(statement)

    def count_synthesized(self) -> int:
        with self.reading() as db:
            return db.execute(sa.select(sa.func.count()).select_from(synthesized_programs)).scalar_one()

    # Answers: one row per decision (the ``decisions`` table), keyed by the decision id

    def add_frame(
        self, decision: FrameRecord, charge_window: datetime | None = None, *, tenant: str = DEFAULT_TENANT
    ) -> None:
        """Store an answer of ``tenant``'s program, adding its size to the tenant's stored bytes;
        with ``charge_window``, add its cost to its program's spend in that window (the program has
        a budget), in the same transaction."""
        row = {
            "id": decision.id,
            "program_id": decision.program_id,
            "kind": decision.kind,
            "frame_id": decision.frame_id,
            "decision": json.dumps(decision.decision),
            "fallback": int(decision.fallback),
            "answer": json.dumps(decision.answer),
            "error": decision.error.model_dump_json() if decision.error else None,
            "trace": json.dumps([i.model_dump(mode="json") for i in decision.trace]),
            "executed_sites": json.dumps(decision.executed_sites),
            "site_costs": json.dumps(decision.site_costs),
            "cost": decision.cost,
            "latency_s": decision.latency_s,
            "status": decision.status,
            "created_at": decision.created_at.isoformat(),
            "propensity": decision.propensity,
            "policy_decision": decision.policy_decision.model_dump_json() if decision.policy_decision else None,
            "reuse": decision.reuse.model_dump_json() if decision.reuse else None,
            "tenant": tenant,
        }
        row["stored_bytes"] = size = sum(len(value.encode()) for value in row.values() if isinstance(value, str))
        with self.transaction() as db:
            db.execute(_ADD_ANSWER, row)
            self._use(db, tenant, size)
            if charge_window is not None:
                self._charge(db, decision.program_id, charge_window, decision.cost)

    def charge(self, program_id: str, window: datetime, cost: float) -> None:
        """Add ``cost`` to the program's spend in the window starting at ``window``."""
        with self.transaction() as db:
            self._charge(db, program_id, window, cost)

    def _charge(self, db: Connection, program_id: str, window: datetime, cost: float) -> None:
        self._add(db, program_spend, {"program_id": program_id, "window_start": window.isoformat()}, "cost", cost)

    def _use(self, db: Connection, tenant: str, size: int) -> None:
        self._add(db, tenant_usage, {"tenant": tenant}, "stored_bytes", size)

    def _add(self, db: Connection, table: sa.Table, key: dict[str, Any], column: str, amount: float) -> None:
        """Add ``amount`` to ``column`` of the row of ``table`` at ``key`` (its primary key),
        starting it at ``amount`` when there is none yet: one statement, safe across routers."""
        statement = self._insert(table).values({**key, column: amount})
        statement = statement.on_conflict_do_update(index_elements=list(key), set_={column: table.c[column] + amount})
        db.execute(statement)

    def stored_bytes(self, tenant: str) -> int:
        """Bytes the tenant's stored decisions hold (those stored before tenants count as 0)."""
        query = sa.select(tenant_usage.c.stored_bytes).where(tenant_usage.c.tenant == tenant)
        with self.reading() as db:
            return int(db.execute(query).scalar() or 0)

    def decision_tenant(self, decision_id: str) -> str:
        """The tenant a decision was answered for (NotFound without one): its own record, else its
        program's, else the default tenant (a decision from before tenants of a deleted program)."""
        query = (
            sa.select(decisions.c.tenant, programs.c.tenant.label("program_tenant"))
            .outerjoin(programs, programs.c.id == decisions.c.program_id)
            .where(decisions.c.id == decision_id)
        )
        with self.reading() as db:
            row = db.execute(query).first()
        if row is None:
            raise NotFound(f"no decision with id {decision_id!r}")
        return row.tenant or row.program_tenant or DEFAULT_TENANT

    def spent(self, program_id: str, window: datetime) -> float:
        """What the program spent in the window starting at ``window``."""
        query = sa.select(program_spend.c.cost).where(
            program_spend.c.program_id == program_id, program_spend.c.window_start == window.isoformat()
        )
        with self.reading() as db:
            return float(db.execute(query).scalar() or 0.0)

    def get_frame(self, decision_id: str) -> FrameRecord:
        with self.reading() as db:
            row = db.execute(_ANSWER, {"id": decision_id}).mappings().first()
        if row is None:
            raise NotFound(f"no decision with id {decision_id!r}")
        return _frame_record(row)

    def list_frames(self, program_id: str | None = None, *, limit: int = 100, offset: int = 0) -> list[FrameRecord]:
        """Answers, oldest first; those of one program when ``program_id`` is given."""
        query = sa.select(decisions).order_by(decisions.c.created_at, decisions.c.id).limit(limit).offset(offset)
        if program_id:
            query = query.where(decisions.c.program_id == program_id)
        with self.reading() as db:
            rows = db.execute(query).mappings().all()
        return [_frame_record(row) for row in rows]

    def labelled_frames(self, program_id: str, last: int) -> list[tuple[FrameRecord, FeedbackRecord]]:
        """The program's last ``last`` labelled decisions with their labels, newest first."""
        query = (
            sa.select(decisions, *(c.label(f"feedback_{c.name}") for c in feedback.c))
            .join(feedback, feedback.c.decision_id == decisions.c.id)
            .where(decisions.c.program_id == program_id)
            .order_by(decisions.c.created_at.desc(), decisions.c.id.desc())
            .limit(last)
        )
        with self.reading() as db:
            rows = db.execute(query).mappings().all()
        labelled = []
        for row in rows:
            label = {c.name: row[f"feedback_{c.name}"] for c in feedback.c}
            labelled.append((_frame_record(row), _feedback(label)))
        return labelled

    def count_frames(self) -> int:
        with self.reading() as db:
            return db.execute(sa.select(sa.func.count()).select_from(decisions)).scalar_one()

    def expire_frames(
        self,
        answered_before: datetime,
        messages: Callable[[list[FrameRecord]], list[QueuedMessage]] | None = None,
        *,
        batch: int = 1000,
    ) -> list[FrameRecord]:
        """Mark the answers given before ``answered_before`` and never labelled as expired (their
        labels are refused from then on) and queue ``messages(expired)`` for the policy with them,
        ``batch`` answers per transaction; the answers expired. A label being stored for one of
        them at the same moment wins (its row is locked, then no longer unlabelled)."""
        unlabelled = decisions.c.status.in_(("pending", "answered"))
        expired: list[FrameRecord] = []
        while True:
            with self.transaction() as db:
                query = self._oldest(sa.select(decisions), answered_before, batch, unlabelled)
                found = [_frame_record(row) for row in db.execute(query).mappings().all()]
                if not found:
                    return expired
                ids = [answer.id for answer in found]
                db.execute(decisions.update().where(decisions.c.id.in_(ids)).values(status="expired"))
                found = [answer.model_copy(update={"status": "expired"}) for answer in found]
                for message in messages(found) if messages is not None else ():
                    queue(db, message)
            expired += found
            if len(found) < batch:
                return expired

    # Feedback

    def get_feedback(self, decision_id: str) -> FeedbackRecord | None:
        with self.reading() as db:
            row = db.execute(_FEEDBACK, {"id": decision_id}).mappings().first()
        return _feedback(row) if row else None

    def count_feedback(self) -> int:
        with self.reading() as db:
            return db.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()

    def record_feedback(
        self,
        decision_id: str,
        label: str,
        reward: float,
        outcome: LabelOutcome | None = None,
        message: QueuedMessage | None = None,
        *,
        source: LabelSource = "client",
        teacher: TeacherRun | None = None,
        window_opened: datetime | None = None,
    ) -> tuple[FeedbackRecord, bool]:
        """Store the label for a decision and resolve it, once; count it in ``program_quality``
        (when ``outcome`` is given) and queue ``message`` for the policy, in the same transaction.

        Returns the stored feedback and whether it is a repeat (the same label was already stored;
        the first reward stands). Raises NotFound for an unknown decision, Conflict for a
        different label than the stored one, Expired for a decision that expired unlabelled or was
        answered before ``window_opened`` (its label window has closed).
        """
        with self.transaction() as db:
            row = db.execute(_DECISION_TO_LABEL, {"id": decision_id}).first()
            if row is None:
                raise NotFound(f"no decision with id {decision_id!r}")
            existing = db.execute(_FEEDBACK, {"id": decision_id}).mappings().first()
            if existing is not None:
                if existing["label"] != label:
                    by = " from the teacher" if existing["source"] == "teacher" else ""
                    raise Conflict(
                        f"decision {decision_id!r} already has label {existing['label']!r}{by}; got {label!r}"
                    )
                return _feedback(existing), True
            if row.status == "expired" or (window_opened is not None and row.created_at < window_opened.isoformat()):
                raise Expired(
                    f"decision {decision_id!r} expired without a label: its label window has closed", row.program_id
                )
            record = FeedbackRecord(
                decision_id=decision_id,
                label=label,
                reward=reward,
                created_at=utc_now(),
                source=source,
                teacher=teacher,
            )
            db.execute(
                _ADD_FEEDBACK,
                {
                    "decision_id": decision_id,
                    "label": label,
                    "reward": reward,
                    "created_at": record.created_at.isoformat(),
                    "source": source,
                    "teacher": teacher.model_dump_json() if teacher is not None else None,
                },
            )
            db.execute(_RESOLVE, {"label_of": decision_id})
            if outcome is not None:
                self._count(db, row.program_id, outcome)
            if message is not None:
                queue(db, message)
            return record, False

    def _count(self, db: Connection, program_id: str, outcome: LabelOutcome) -> None:
        counted = ["right" if outcome.right else "wrong"] + ([outcome.binary] if outcome.binary else [])
        statement = self._insert(program_quality).values({"program_id": program_id, **dict.fromkeys(counted, 1)})
        columns = program_quality.c
        statement = statement.on_conflict_do_update(
            index_elements=["program_id"], set_={name: columns[name] + 1 for name in counted}
        )
        db.execute(statement)

    def quality(self) -> dict[str, QualityCounts]:
        """Labels counted per program (every router's, since each program's first label)."""
        with self.reading() as db:
            rows = db.execute(sa.select(program_quality)).mappings().all()
        return {
            row["program_id"]: QualityCounts(**{k: int(v) for k, v in row.items() if k != "program_id"}) for row in rows
        }

    # Retention

    def prune(self, older_than: datetime, *, batch: int = 1000) -> Pruned:
        """Delete the decisions answered before ``older_than`` and their feedback, ``batch``
        decisions per transaction (so answers are not held up behind one long delete); the label
        counts (``program_quality``), programs, outbox and dead letters are kept."""
        pruned_decisions = pruned_feedback = 0
        while True:
            with self.transaction() as db:
                ids = db.execute(self._oldest(sa.select(decisions.c.id), older_than, batch)).scalars().all()
                if not ids:
                    return Pruned(pruned_decisions, pruned_feedback)
                sizes = sa.select(decisions.c.tenant, sa.func.sum(decisions.c.stored_bytes)).where(
                    decisions.c.id.in_(ids), decisions.c.stored_bytes.is_not(None)
                )
                for tenant, size in db.execute(sizes.group_by(decisions.c.tenant)).all():
                    self._use(db, tenant or DEFAULT_TENANT, -int(size))
                pruned_feedback += db.execute(feedback.delete().where(feedback.c.decision_id.in_(ids))).rowcount
                pruned_decisions += db.execute(decisions.delete().where(decisions.c.id.in_(ids))).rowcount

    def _oldest(self, query: sa.Select[Any], before: datetime, batch: int, *where: Any) -> sa.Select[Any]:
        """``query`` over the oldest ``batch`` decisions answered before ``before`` (and ``where``),
        for a background pass: on PostgreSQL their rows are locked, and rows a label is being
        stored for (locked by it) are skipped, left to the next pass."""
        query = query.where(decisions.c.created_at < before.isoformat(), *where)
        query = query.order_by(decisions.c.created_at).limit(batch)
        return query.with_for_update(skip_locked=True) if self.claims_rows else query

    # Policy messages the policy refused (moved here from the outbox by ``Outbox.deliver``)

    def list_dead_letters(self, *, tenant: str | None = None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Refused policy messages, oldest first: every tenant's, or those of ``tenant``'s programs."""
        query = sa.select(policy_dead_letters).order_by(policy_dead_letters.c.id).limit(limit).offset(offset)
        if tenant is not None:
            owned = sa.select(programs.c.id).where(programs.c.tenant == tenant)
            query = query.where(policy_dead_letters.c.program_id.in_(owned))
        with self.reading() as db:
            rows = db.execute(query).mappings().all()
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
        with self.reading() as db:
            return db.execute(sa.select(sa.func.count()).select_from(policy_dead_letters)).scalar_one()

    # Tenants' API keys

    def add_key(self, tenant: str, *, admin: bool = False) -> tuple[str, ApiKey]:
        """A new key for ``tenant``: the key itself (shown once, never stored) and its record."""
        key, key_id, digest = new_key()
        record = ApiKey(id=key_id, tenant=tenant, admin=admin, created_at=utc_now())
        row = {
            "id": key_id,
            "tenant": tenant,
            "digest": digest,
            "admin": admin,
            "created_at": record.created_at.isoformat(),
        }
        with self.transaction() as db:
            db.execute(api_keys.insert().values(row))
        return key, record

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key (NotFound for an unknown id); revoking it again keeps the first time."""
        with self.transaction() as db:
            db.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utc_now().isoformat())
            )
            row = db.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        return _api_key(row)

    def find_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        """A key's record and stored digest, revoked or not; None for an unknown id."""
        with self.reading() as db:
            row = db.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        return (_api_key(row), row["digest"]) if row is not None else None

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys, oldest first, revoked ones too: every tenant's, or ``tenant``'s."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self.reading() as db:
            return [_api_key(row) for row in db.execute(query).mappings().all()]

    def has_keys(self) -> bool:
        """Whether any key is in force (then every request needs a key)."""
        query = sa.select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)
        with self.reading() as db:
            return db.execute(query).first() is not None


def _api_key(row: Any) -> ApiKey:
    revoked = row["revoked_at"]
    return ApiKey(
        id=row["id"],
        tenant=row["tenant"],
        admin=bool(row["admin"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        revoked_at=datetime.fromisoformat(revoked) if revoked else None,
    )


def queue(db: Connection, message: QueuedMessage) -> None:
    """Add ``message`` to the policy outbox (in the caller's transaction)."""
    db.execute(_QUEUE, {"kind": message.kind, "program_id": message.program_id, "payload": message.payload})


def _sqlite_engine(url: URL, timeout_s: float, writing: Callable[[], bool]) -> Engine:
    """One shared connection (the store's lock serialises its users) in WAL mode, whose write
    transactions (``writing()`` true) begin with ``BEGIN IMMEDIATE``: a writer waits for another
    process's writer up to ``timeout_s`` rather than failing halfway through. Reads run in the
    driver's autocommit mode, each statement on a committed snapshot."""
    engine = sa.create_engine(
        url, poolclass=StaticPool, connect_args={"timeout": timeout_s, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None  # the driver leaves BEGIN to the "begin" hook below
        cursor = dbapi_connection.cursor()
        if url.database:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        if writing():
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _program(row: Any) -> ProgramPublic:
    sites = [CallSitePublic.model_validate(site) for site in json.loads(row["call_sites"])]
    synthesis = SynthesisPublic.model_validate_json(row["synthesis"]) if row["synthesis"] else None
    return ProgramPublic(
        id=row["id"],
        source=row["source"],
        kind=row["kind"],
        lambda_=row["lambda"],
        lambda_source=row["lambda_source"],
        algorithm=row["algorithm"],
        hyperparameters=json.loads(row["hyperparameters"]),
        call_sites=sites,
        warnings=program_warnings(sites, synthesis),
        created_at=datetime.fromisoformat(row["created_at"]),
        digest=row["digest"],
        query=row["query"],
        synthesis=synthesis,
        **_labels_of(row["labels"]),
        budget=CostBudget.model_validate_json(row["budget"]) if row["budget"] else None,
        tenant=row["tenant"],
        name=row["name"],
    )


def _labels(program: ProgramPublic) -> str | None:
    """The ``labels`` column: the program's label budget and teacher (None when it has neither)."""
    if program.labels is None and program.teacher is None:
        return None
    return json.dumps(
        {
            "budget": program.labels.model_dump(mode="json") if program.labels else None,
            "teacher": program.teacher.model_dump(mode="json") if program.teacher else None,
        }
    )


def _labels_of(column: str | None) -> dict[str, Any]:
    stored = json.loads(column) if column else {}
    budget, teacher = stored.get("budget"), stored.get("teacher")
    return {
        "labels": LabelBudget.model_validate(budget) if budget else None,
        "teacher": Teacher.model_validate(teacher) if teacher else None,
    }


def _frame_record(row: Any) -> FrameRecord:
    return FrameRecord(
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
        propensity=row["propensity"],
        policy_decision=PolicyDecision.model_validate_json(row["policy_decision"]) if row["policy_decision"] else None,
        reuse=ReuseRecord.model_validate_json(row["reuse"]) if row["reuse"] else None,
    )


def _feedback(row: Any) -> FeedbackRecord:
    return FeedbackRecord(
        decision_id=row["decision_id"],
        label=row["label"],
        reward=row["reward"],
        created_at=datetime.fromisoformat(row["created_at"]),
        source=row["source"],
        teacher=TeacherRun.model_validate_json(row["teacher"]) if row["teacher"] else None,
    )
