"""Programs: register one (from source, or from a query for the synthesizer), list, read and
delete them; a program's policy view and the off-policy evaluation of its log."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from fmprog.web import error_responses
from router.policy_view import DEFAULT_WINDOW, MAX_WINDOW, PolicyView, program_policy_view
from router.routes.common import CurrentCaller, Limit, Offset, Service, Streams
from router.schemas import EvaluationReport, EvaluationRequest, ProgramCreate, ProgramPublic

router = APIRouter()
Window = Annotated[int, Query(ge=1, le=MAX_WINDOW, description="Read the program's last this many decisions.")]


@router.post(
    "/programs", status_code=201, response_model=ProgramPublic, responses=error_responses(400, 401, 413, 422, 503)
)
async def register(body: ProgramCreate, service: Service, caller: CurrentCaller) -> ProgramPublic:
    """Register a program for the caller's tenant: its source (checked, compiled, its call sites found) or a
    task in words (``query``, synthesised into a program when synthesis is configured), the task's kind, the
    policy's algorithm and cost weight, optional budgets and teacher. The reply lists each call site's
    candidate backends and costs, and warnings for what they cannot see."""
    return await run_in_threadpool(service.register, body, caller)


@router.get("/programs", response_model=list[ProgramPublic], responses=error_responses(401))
async def list_programs(
    service: Service, caller: CurrentCaller, limit: Limit = 100, offset: Offset = 0
) -> list[ProgramPublic]:
    """The programs the caller sees (its tenant's; every tenant's for an admin key), oldest first."""
    return await run_in_threadpool(functools.partial(service.list_programs, caller, limit=limit, offset=offset))


@router.get("/programs/{program_id}", response_model=ProgramPublic, responses=error_responses(401, 404))
async def get_program(program_id: str, service: Service, caller: CurrentCaller) -> ProgramPublic:
    """One program, with where its cost budget stands when it has one."""
    return await run_in_threadpool(service.program, program_id, caller)


@router.get("/programs/{program_id}/policy", response_model=PolicyView, responses=error_responses(401, 404, 422))
async def program_policy(
    program_id: str, service: Service, caller: CurrentCaller, last: Window = DEFAULT_WINDOW
) -> PolicyView:
    """Per call site, the share of each backend in the policy's last decisions, by context bucket."""
    await run_in_threadpool(service.owned, program_id, caller)  # NotFound: not the caller's
    return await run_in_threadpool(program_policy_view, service.store, program_id, last)


@router.post(
    "/programs/{program_id}/evaluate",
    response_model=EvaluationReport,
    responses=error_responses(400, 401, 404, 413, 422),
)
async def evaluate_program(
    program_id: str, body: EvaluationRequest, service: Service, caller: CurrentCaller
) -> EvaluationReport:
    """What other policies would have cost and scored on the program's labelled decisions,
    estimated from the log (IPS, SNIPS, doubly robust; ``fmprog.off_policy``)."""
    return await run_in_threadpool(service.evaluate, program_id, body, caller)


@router.delete("/programs/{program_id}", status_code=204, responses=error_responses(401, 404))
async def delete_program(program_id: str, service: Service, streams: Streams, caller: CurrentCaller) -> Response:
    """Delete a program and stop its streams; its recorded frames stay open to labels until they expire."""
    await run_in_threadpool(service.delete, program_id, caller)
    await run_in_threadpool(streams.stop_program, program_id)
    return Response(status_code=204)
