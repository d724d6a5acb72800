"""A stream's events as Server-Sent Events, read from the database (so any router serves them).

The generator sends the events after the client's last one, waits for new ones (polling the
table every ``poll_s``), sends a comment line every ``keepalive_s`` so proxies keep the
connection open, and ends when the stream is over (stopped or ended) and every event is sent, or
when the client leaves.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from router.stream_store import StreamStore

BATCH = 200


def sse(event_id: int, data: str) -> str:
    """One Server-Sent Event: its id and one ``data:`` line (``data`` is JSON, one line)."""
    return f"id: {event_id}\ndata: {data}\n\n"


async def event_stream(
    store: StreamStore,
    stream_id: str,
    after: int,
    disconnected: Callable[[], Awaitable[bool]],
    *,
    poll_s: float = 0.2,
    keepalive_s: float = 10.0,
) -> AsyncIterator[str]:
    last = after
    quiet_since = time.monotonic()
    yield "retry: 1000\n\n"  # a client that loses the connection reconnects after a second
    while not await disconnected():
        events = await anyio.to_thread.run_sync(functools.partial(store.events_after, stream_id, last, limit=BATCH))
        for event in events:
            last = event.seq
            yield sse(event.seq, event.model_dump_json())
        if events:
            quiet_since = time.monotonic()
            continue
        stream = await anyio.to_thread.run_sync(store.get, stream_id)
        if stream.state != "running":
            if not await anyio.to_thread.run_sync(functools.partial(store.events_after, stream_id, last, limit=1)):
                return  # over, and everything was sent
            continue
        if time.monotonic() - quiet_since > keepalive_s:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await anyio.sleep(poll_s)
