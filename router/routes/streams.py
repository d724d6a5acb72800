"""Streams: a camera or a video answered as its frames come, its state, its events (as Server-Sent
Events) and the events its webhook never took."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from fmprog.web import error_responses
from router.errors import FrameRejected, NotFound
from router.routes.common import CurrentCaller, Limit, Offset, Service, Streams
from router.schemas import StreamCreate, StreamDeadLetter, StreamPublic
from router.stream_events import event_stream
from router.streams import StreamManager
from router.tenants import Caller

router = APIRouter()


@router.post(
    "/programs/{program_id}/streams",
    status_code=201,
    response_model=StreamPublic,
    responses=error_responses(400, 401, 404, 413, 422),
)
async def start_stream(
    request: Request, program_id: str, body: StreamCreate, service: Service, streams: Streams, caller: CurrentCaller
) -> StreamPublic:
    """Start answering a camera or a video: frames pulled from ``source`` and answered ``fps`` a
    second, the answers kept as the stream's events (``GET /streams/{id}/events``)."""
    await run_in_threadpool(service.owned, program_id, caller)  # NotFound: not the caller's
    quota = request.app.state.admission.quota(caller.tenant).max_streams
    return await run_in_threadpool(
        functools.partial(streams.start, program_id, body, tenant=caller.tenant, max_streams=quota)
    )


@router.get("/streams", response_model=list[StreamPublic], responses=error_responses(401, 422))
async def list_streams(
    streams: Streams, caller: CurrentCaller, program_id: str | None = None, limit: Limit = 100, offset: Offset = 0
) -> list[StreamPublic]:
    """The streams the caller sees, oldest first; only one program's with ``program_id``."""
    tenant = None if caller.admin else caller.tenant
    return await run_in_threadpool(
        functools.partial(streams.events.list, program_id, tenant=tenant, limit=limit, offset=offset)
    )


@router.get("/streams/{stream_id}", response_model=StreamPublic, responses=error_responses(401, 404))
async def get_stream(stream_id: str, streams: Streams, caller: CurrentCaller) -> StreamPublic:
    """A stream's state, owner and counters (received, answered, reused, dropped, lag...)."""
    return await _own_stream(streams, caller, stream_id)


@router.delete("/streams/{stream_id}", status_code=204, responses=error_responses(401, 404))
async def stop_stream(stream_id: str, streams: Streams, caller: CurrentCaller) -> Response:
    """Stop a stream: stored at once; the router reading it stops at its next tick (at once when it is this one)."""
    await _own_stream(streams, caller, stream_id)
    await run_in_threadpool(streams.stop, stream_id)
    return Response(status_code=204)


@router.get(
    "/streams/{stream_id}/dead-letters",
    response_model=list[StreamDeadLetter],
    responses=error_responses(401, 404, 422),
)
async def stream_dead_letters(
    stream_id: str, streams: Streams, caller: CurrentCaller, limit: Limit = 100, offset: Offset = 0
) -> list[StreamDeadLetter]:
    """The stream's events its webhook refused or never acknowledged after its retries, oldest first."""
    await _own_stream(streams, caller, stream_id)
    return await run_in_threadpool(
        functools.partial(streams.events.dead_letters, stream_id, limit=limit, offset=offset)
    )


@router.get(
    "/streams/{stream_id}/events",
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(401, 404, 422)},
    response_class=StreamingResponse,
)
async def stream_events(
    request: Request,
    stream_id: str,
    streams: Streams,
    caller: CurrentCaller,
    after: Annotated[int | None, Query(ge=0, description="Start after this event (as Last-Event-ID).")] = None,
) -> StreamingResponse:
    """The stream's answers as Server-Sent Events, one ``data:`` line of JSON each (``id:`` its
    number), from the first or after ``Last-Event-ID`` (or ``after``): a client that
    reconnects loses none. It ends when the stream has stopped and every event was sent."""
    await _own_stream(streams, caller, stream_id)
    last = _last_event_id(request.headers.get("last-event-id"), after)
    return StreamingResponse(
        event_stream(streams.events, stream_id, last, request.is_disconnected),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _own_stream(streams: StreamManager, caller: Caller, stream_id: str) -> StreamPublic:
    """The stream, if the caller may see it (its tenant's, or an admin key); else NotFound."""
    stream = await run_in_threadpool(streams.get, stream_id)
    if not caller.sees(stream.tenant):
        raise NotFound(f"no stream with id {stream_id!r}")
    return stream


def _last_event_id(header: str | None, after: int | None) -> int:
    """Where an event stream resumes: after the ``Last-Event-ID`` a reconnecting client sends, or
    ``after``; from the start when neither."""
    if header is not None and header.strip():
        try:
            value = int(header.strip())
        except ValueError:
            raise FrameRejected(f"Last-Event-ID {header!r}: an event number is expected") from None
        if value < 0:
            raise FrameRejected("Last-Event-ID: an event number is at least 0")
        return value
    return after or 0
