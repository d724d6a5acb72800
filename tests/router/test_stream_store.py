"""Streams in the router's database, on SQLite and on PostgreSQL: the lease (one owner at a time,
taken over once it runs out, lost by a router that did not renew), the events in order, retention
and the webhook's dead letters."""

from __future__ import annotations

from datetime import timedelta

import pytest

from router.errors import NotFound
from router.schemas import StreamCounters, StreamCreate, StreamEvent
from router.store import utc_now
from router.stream_store import StreamStore

STREAM = "a" * 32
PROGRAM = "b" * 32


@pytest.fixture
def streams(store) -> StreamStore:
    return StreamStore(store)


def started(streams: StreamStore, owner: str = "one", lease_s: float = 6) -> None:
    request = StreamCreate(source="rtsp://user:secret@camera.local/live", fps=10, webhook="http://hooks.local/x")
    streams.add(STREAM, PROGRAM, request, owner, utc_now() + timedelta(seconds=lease_s))


def event(seq: int, minutes_ago: float = 0) -> StreamEvent:
    return StreamEvent(
        seq=seq,
        stream_id=STREAM,
        frame=seq - 1,
        pts=(seq - 1) / 10,
        answer=str(seq),
        decision_id=f"{seq:032x}",
        cost=1.0,
        reused=False,
        lag_s=0.1,
        created_at=utc_now() - timedelta(minutes=minutes_ago),
    )


def test_a_stream_is_read_with_its_password_hidden_and_claimed_with_it(streams):
    started(streams)
    public = streams.get(STREAM)
    assert public.source == "rtsp://user:***@camera.local/live" and public.state == "running"
    assert public.owner == "one" and public.fps == 10 and public.webhook == "http://hooks.local/x"
    claimed = streams.claim(STREAM, "one", utc_now(), utc_now() + timedelta(seconds=6))
    assert claimed is not None and claimed.source == "rtsp://user:secret@camera.local/live"
    with pytest.raises(NotFound):
        streams.get("c" * 32)


def test_one_owner_at_a_time_until_its_lease_runs_out(streams):
    started(streams, owner="one", lease_s=6)
    now = utc_now()
    assert streams.claimable(now) == []
    assert streams.claim(STREAM, "two", now, now + timedelta(seconds=6)) is None  # held
    later = now + timedelta(seconds=7)
    assert streams.claimable(later) == [STREAM]
    taken = streams.claim(STREAM, "two", later, later + timedelta(seconds=6))
    assert taken is not None and taken.owner == "two"
    assert streams.claim(STREAM, "three", later, later + timedelta(seconds=6)) is None  # the second racer loses
    counters = StreamCounters(answered=3)
    assert streams.renew(STREAM, "one", later, counters, None) is None  # the old owner lost it
    assert streams.renew(STREAM, "two", later + timedelta(seconds=6), counters, "a drop") == "running"
    assert streams.get(STREAM).counters.answered == 3 and streams.get(STREAM).last_error == "a drop"


def test_a_stopped_stream_is_not_claimed_and_its_owner_learns_it_at_renewal(streams):
    started(streams)
    streams.stop(STREAM)
    assert streams.renew(STREAM, "one", utc_now(), StreamCounters(), None) == "stopped"
    streams.release(STREAM, "one")
    later = utc_now() + timedelta(seconds=60)
    assert streams.claimable(later) == [] and streams.claim(STREAM, "two", later, later) is None
    assert streams.get(STREAM).state == "stopped" and streams.get(STREAM).owner is None
    with pytest.raises(NotFound):
        streams.stop("c" * 32)
    assert streams.stop_program(PROGRAM) == 0  # already stopped


def test_a_released_stream_is_claimable_at_once(streams):
    started(streams)
    streams.release(STREAM, "one")
    assert streams.claimable(utc_now()) == [STREAM]
    streams.release(STREAM, "two", state="ended")  # not the owner any more: nothing changes
    assert streams.get(STREAM).state == "running"


def test_events_are_read_in_order_after_any_point_and_pruned_by_age(streams):
    started(streams)
    assert streams.last_event(STREAM) is None
    for seq in (1, 2, 3):
        streams.add_event(event(seq, minutes_ago=10 if seq == 1 else 0))
    assert [e.seq for e in streams.events_after(STREAM, 0)] == [1, 2, 3]
    assert [e.seq for e in streams.events_after(STREAM, 1, limit=1)] == [2]
    assert streams.last_event(STREAM).seq == 3
    assert streams.prune_events(utc_now() - timedelta(minutes=5)) == 1
    assert [e.seq for e in streams.events_after(STREAM, 0)] == [2, 3]


def test_dead_letters_are_kept_per_stream_with_the_url_redacted(streams):
    started(streams)
    streams.add_dead_letter(STREAM, 4, "http://u:pw@hooks.local/x", "HTTP 400: no", 1)
    letters = streams.dead_letters(STREAM)
    assert [(d.seq, d.url, d.reason, d.attempts) for d in letters] == [
        (4, "http://u:***@hooks.local/x", "HTTP 400: no", 1)
    ]
    with pytest.raises(NotFound):
        streams.dead_letters("c" * 32)
