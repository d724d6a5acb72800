"""Operations: the messages for the policy that it refused (dead letters), and the metrics, liveness
and readiness every fmprog service answers (``fmprog.web.operations_router``)."""

from __future__ import annotations

import functools

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from fmprog.web import error_responses, operations_router
from router.routes.common import CurrentCaller, Limit, Offset, Service
from router.schemas import DeadLetter
from router.service import RouterService

router = APIRouter()


@router.get("/dead-letters", response_model=list[DeadLetter], responses=error_responses(401, 422))
async def dead_letters(
    service: Service, caller: CurrentCaller, limit: Limit = 100, offset: Offset = 0
) -> list[DeadLetter]:
    """Messages for the policy that it refused (feedback, registrations, deletes), oldest first:
    those of the caller's programs (every tenant's for an admin key)."""
    return await run_in_threadpool(functools.partial(service.dead_letters, caller, limit=limit, offset=offset))


def readiness(service: RouterService) -> dict[str, int]:
    """What ``GET /readyz`` adds for a ready router: the policy messages waiting, and refused."""
    return {"policy_outbox": service.outbox.pending(), "policy_dead_letters": service.store.count_dead_letters()}


router.include_router(operations_router(readiness))
