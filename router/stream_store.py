"""Streams and their events in the router's database (the ``streams`` and ``stream_events`` tables).

A stream's row is its definition (program, source, settings), its state and counters, and the lease
that says which router reads it: ``owner`` until ``lease_until``. A router claims a running stream
nobody holds (or whose lease ran out) with one conditional UPDATE, so two routers racing for it on
PostgreSQL cannot both win; it renews the lease while it reads the stream, and whoever reads it is
the only writer of its events.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from fmprog.streams.source import redacted
from router.errors import NotFound
from router.schemas import StreamCounters, StreamCreate, StreamDeadLetter, StreamEvent, StreamPublic, StreamState
from router.store import Store, utc_now
from router.tables import stream_dead_letters, stream_events, streams
from router.tenants import DEFAULT_TENANT


def _time(moment: datetime) -> str:
    """A time as stored: ISO 8601 in UTC with microseconds always, so that text order is time order."""
    return moment.isoformat(timespec="microseconds")


class StreamStore:
    """Streams and their events, in the store's database."""

    def __init__(self, store: Store):
        self.store = store

    def add(
        self,
        stream_id: str,
        program_id: str,
        request: StreamCreate,
        owner: str | None,
        lease_until: datetime | None,
        *,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """Store a new running stream of ``tenant``'s program, held by ``owner`` until
        ``lease_until`` (None: by nobody yet)."""
        now = _time(utc_now())
        row = {
            "id": stream_id,
            "program_id": program_id,
            "source": request.source,
            "settings": request.model_dump_json(exclude={"source"}),
            "state": "running",
            "owner": owner,
            "lease_until": None if lease_until is None else _time(lease_until),
            "counters": StreamCounters().model_dump_json(),
            "last_error": None,
            "created_at": now,
            "updated_at": now,
            "tenant": tenant,
        }
        with self.store.transaction() as db:
            db.execute(streams.insert(), row)

    def get(self, stream_id: str) -> StreamPublic:
        with self.store.reading() as db:
            row = db.execute(sa.select(streams).where(streams.c.id == stream_id)).mappings().first()
        if row is None:
            raise NotFound(f"no stream with id {stream_id!r}")
        return _stream(row)

    def list(
        self, program_id: str | None = None, *, tenant: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[StreamPublic]:
        """Streams, oldest first: of one program, of ``tenant``, or all."""
        query = sa.select(streams).order_by(streams.c.created_at, streams.c.id).limit(limit).offset(offset)
        if program_id is not None:
            query = query.where(streams.c.program_id == program_id)
        if tenant is not None:
            query = query.where(streams.c.tenant == tenant)
        with self.store.reading() as db:
            return [_stream(row) for row in db.execute(query).mappings().all()]

    def running(self, tenant: str) -> int:
        """How many of ``tenant``'s streams are running (on any router): what its streams quota counts."""
        query = sa.select(sa.func.count()).where(streams.c.state == "running", streams.c.tenant == tenant)
        with self.store.reading() as db:
            return db.execute(query).scalar_one()

    def stop(self, stream_id: str) -> None:
        """Mark a stream stopped (its owner stops reading it at its next renewal); NotFound."""
        with self.store.transaction() as db:
            updated = db.execute(
                streams.update()
                .where(streams.c.id == stream_id, streams.c.state == "running")
                .values(state="stopped", updated_at=_time(utc_now()))
            ).rowcount
            if not updated and db.execute(sa.select(streams.c.id).where(streams.c.id == stream_id)).first() is None:
                raise NotFound(f"no stream with id {stream_id!r}")

    def stop_program(self, program_id: str) -> int:
        """Stop the running streams of a program (it is being deleted); how many."""
        with self.store.transaction() as db:
            return db.execute(
                streams.update()
                .where(streams.c.program_id == program_id, streams.c.state == "running")
                .values(state="stopped", updated_at=_time(utc_now()))
            ).rowcount

    def claimable(self, now: datetime, *, limit: int = 100) -> list[str]:
        """Running streams that nobody holds, or whose lease ran out, oldest first."""
        query = (
            sa.select(streams.c.id)
            .where(streams.c.state == "running", sa.or_(streams.c.owner.is_(None), streams.c.lease_until < _time(now)))
            .order_by(streams.c.created_at)
            .limit(limit)
        )
        with self.store.reading() as db:
            return list(db.execute(query).scalars().all())

    def claim(self, stream_id: str, owner: str, now: datetime, lease_until: datetime) -> StreamPublic | None:
        """Take a running stream's lease if nobody else holds it (the stream, now ``owner``'s, its
        source unredacted), or None."""
        with self.store.transaction() as db:
            taken = db.execute(
                streams.update()
                .where(
                    streams.c.id == stream_id,
                    streams.c.state == "running",
                    sa.or_(streams.c.owner.is_(None), streams.c.owner == owner, streams.c.lease_until < _time(now)),
                )
                .values(owner=owner, lease_until=_time(lease_until), updated_at=_time(now))
            ).rowcount
            if not taken:
                return None
            row = db.execute(sa.select(streams).where(streams.c.id == stream_id)).mappings().one()
        return _stream(row, redact=False)

    def renew(
        self, stream_id: str, owner: str, lease_until: datetime, counters: StreamCounters, last_error: str | None
    ) -> StreamState | None:
        """Save the counters and extend ``owner``'s lease; the stream's state (``stopped`` once a
        client stopped it), or None when ``owner`` lost the lease (another router took it over)."""
        now = _time(utc_now())
        with self.store.transaction() as db:
            db.execute(
                streams.update()
                .where(streams.c.id == stream_id, streams.c.owner == owner)
                .values(
                    lease_until=_time(lease_until),
                    counters=counters.model_dump_json(),
                    last_error=last_error,
                    updated_at=now,
                )
            )
            row = db.execute(sa.select(streams.c.state, streams.c.owner).where(streams.c.id == stream_id)).first()
        if row is None or row.owner != owner:
            return None
        return row.state

    def release(self, stream_id: str, owner: str, *, state: StreamState | None = None) -> None:
        """Give the lease up (another router may take a running stream at once), with the stream's
        new state when it ended."""
        values: dict[str, Any] = {"owner": None, "lease_until": None, "updated_at": _time(utc_now())}
        if state is not None:
            values["state"] = state
        with self.store.transaction() as db:
            db.execute(streams.update().where(streams.c.id == stream_id, streams.c.owner == owner).values(**values))

    # -- events ------------------------------------------------------------------------------------

    def add_event(self, event: StreamEvent) -> None:
        with self.store.transaction() as db:
            db.execute(
                stream_events.insert(),
                {
                    "stream_id": event.stream_id,
                    "seq": event.seq,
                    "event": event.model_dump_json(),
                    "created_at": _time(event.created_at),
                },
            )

    def last_event(self, stream_id: str) -> StreamEvent | None:
        """The stream's newest event: where a router taking the stream over goes on from."""
        query = (
            sa.select(stream_events.c.event)
            .where(stream_events.c.stream_id == stream_id)
            .order_by(stream_events.c.seq.desc())
            .limit(1)
        )
        with self.store.reading() as db:
            text = db.execute(query).scalar()
        return None if text is None else StreamEvent.model_validate_json(text)

    def events_after(self, stream_id: str, seq: int, *, limit: int = 100) -> list[StreamEvent]:
        """The stream's events after ``seq``, in order."""
        query = (
            sa.select(stream_events.c.event)
            .where(stream_events.c.stream_id == stream_id, stream_events.c.seq > seq)
            .order_by(stream_events.c.seq)
            .limit(limit)
        )
        with self.store.reading() as db:
            return [StreamEvent.model_validate_json(text) for text in db.execute(query).scalars().all()]

    def add_dead_letter(self, stream_id: str, seq: int, url: str, reason: str, attempts: int) -> None:
        row = {
            "stream_id": stream_id,
            "seq": seq,
            "url": url,
            "reason": reason[:2000],
            "attempts": attempts,
            "created_at": _time(utc_now()),
        }
        with self.store.transaction() as db:
            db.execute(stream_dead_letters.insert(), row)

    def dead_letters(self, stream_id: str, *, limit: int = 100, offset: int = 0) -> list[StreamDeadLetter]:
        """The stream's events its webhook never took, oldest first (NotFound for an unknown stream)."""
        self.get(stream_id)
        query = (
            sa.select(stream_dead_letters)
            .where(stream_dead_letters.c.stream_id == stream_id)
            .order_by(stream_dead_letters.c.id)
            .limit(limit)
            .offset(offset)
        )
        with self.store.reading() as db:
            rows = db.execute(query).mappings().all()
        return [
            StreamDeadLetter(
                seq=row["seq"],
                url=redacted(row["url"]),
                reason=row["reason"],
                attempts=row["attempts"],
                created_at=datetime.fromisoformat(row["created_at"]),
            )
            for row in rows
        ]

    def prune_events(self, older_than: datetime) -> int:
        """Delete the events of streams answered before ``older_than`` (retention); how many."""
        with self.store.transaction() as db:
            return db.execute(stream_events.delete().where(stream_events.c.created_at < _time(older_than))).rowcount


def _stream(row: Any, *, redact: bool = True) -> StreamPublic:
    """A stream's row; with ``redact``, its source without the password a camera URL may carry."""
    settings = json.loads(row["settings"])
    if redact and settings.get("webhook"):
        settings["webhook"] = redacted(settings["webhook"])
    return StreamPublic(
        id=row["id"],
        program_id=row["program_id"],
        source=redacted(row["source"]) if redact else row["source"],
        state=row["state"],
        owner=row["owner"],
        tenant=row["tenant"],
        counters=StreamCounters.model_validate_json(row["counters"]),
        last_error=row["last_error"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        **settings,
    )
