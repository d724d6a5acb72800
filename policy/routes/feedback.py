"""What the router learned of a program's decisions: feedback (one, or several at once), and the
decisions whose label window closed without any."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from fmprog.contract import ExpiredDecisions, Feedback, FeedbackList, FeedbackListReply
from fmprog.web import error_responses
from policy.routes.common import Service
from policy.schemas import ExpiredAccepted, FeedbackAccepted

router = APIRouter()


@router.post(
    "/policies/{program_id}/feedback",
    response_model=FeedbackAccepted,
    responses=error_responses(400, 401, 404, 409, 413, 422),
)
async def feedback(program_id: str, body: Feedback, service: Service) -> FeedbackAccepted:
    """Learn from the feedback of one decision (a repeat is learned once; different feedback for the same
    decision is a 409)."""
    repeat = await run_in_threadpool(service.feedback, program_id, body)
    return FeedbackAccepted(decision_id=body.decision_id or "", repeat=repeat)


@router.post(
    "/policies/{program_id}/feedback/batch",
    response_model=FeedbackListReply,
    responses=error_responses(400, 401, 404, 413, 422),
)
async def feedback_batch(program_id: str, body: FeedbackList, service: Service) -> FeedbackListReply:
    """Several feedback of the program in one request, each learned on its own and in order (a
    repeat is learned once); each answered with its outcome, a refused one with why."""
    return await run_in_threadpool(service.feedback_list, program_id, body)


@router.post(
    "/policies/{program_id}/expired",
    response_model=ExpiredAccepted,
    responses=error_responses(400, 401, 404, 413, 422),
)
async def expired(program_id: str, body: ExpiredDecisions, service: Service) -> ExpiredAccepted:
    """Forget decisions whose label window closed at the router: nothing is learned from them."""
    dropped = await run_in_threadpool(service.forget, program_id, body)
    return ExpiredAccepted(dropped=dropped)
