"""What the router's routes share: the services they call (built by the app's lifespan and kept on
``app.state``), the caller, paging parameters and the status of each domain error."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from fmprog.web import status_for
from router.errors import (
    BudgetExhausted,
    Conflict,
    Expired,
    NotFound,
    QuotaExceeded,
    RouterError,
    Unavailable,
    UnsupportedMedia,
)
from router.service import RouterService
from router.streams import StreamManager
from router.tenants import Caller

MAX_OFFSET = 1_000_000_000
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many items.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many items first.")]

ERROR_STATUSES: dict[type[Exception], int] = {
    UnsupportedMedia: 415,
    NotFound: 404,
    Conflict: 409,
    Expired: 410,
    BudgetExhausted: 429,
    QuotaExceeded: 429,
    Unavailable: 503,
    RouterError: 422,
}
"""The HTTP status of each domain error (of its nearest class here)."""


def status_of(exc: RouterError) -> int:
    """The HTTP status of a domain error."""
    return status_for(exc, ERROR_STATUSES)


async def get_service(request: Request) -> RouterService:
    return request.app.state.service


async def get_streams(request: Request) -> StreamManager:
    return request.app.state.streams


async def get_caller(request: Request) -> Caller:
    """Who sent the request (``TenantAuth`` put it there)."""
    return request.state.caller


Service = Annotated[RouterService, Depends(get_service)]
Streams = Annotated[StreamManager, Depends(get_streams)]
CurrentCaller = Annotated[Caller, Depends(get_caller)]
