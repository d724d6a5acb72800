"""The reuse gate of a program's cameras: whether a frame reuses the camera's last answer, and what
a label said of a reused answer."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from fmprog.contract import ReuseOutcome, ReuseReply, ReuseRequest
from fmprog.web import error_responses
from policy.routes.common import Service

router = APIRouter()


@router.post(
    "/policies/{program_id}/reuse",
    response_model=ReuseReply,
    responses=error_responses(400, 401, 404, 413, 422),
)
async def reuse(program_id: str, body: ReuseRequest, service: Service) -> ReuseReply:
    """Whether a camera's frame reuses the camera's last answer, from how it differs from the
    frame that ran; the outcome of the camera's last run, when the body brings it, is learned first."""
    return await run_in_threadpool(service.reuse, program_id, body)


@router.post(
    "/policies/{program_id}/reuse/outcomes",
    status_code=204,
    responses=error_responses(400, 401, 404, 413, 422),
)
async def reuse_outcome(program_id: str, body: ReuseOutcome, service: Service) -> Response:
    """An outcome for a camera's reuse gate on its own: a label said whether a reused answer was right."""
    await run_in_threadpool(service.reuse_outcome, program_id, body)
    return Response(status_code=204)
