"""POST /policies/{program_id}/decisions: a backend per call site for one frame."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from fmprog.contract import PolicyDecision
from fmprog.images import ImageError, decode_image
from fmprog.web import error_responses, frame_request_body, query_field, read_frame_body
from policy.routes.common import Service
from policy.schemas import DecideRequest
from policy.service import PolicyService

router = APIRouter()
RAW_IMAGE_TYPES = ("application/octet-stream", "image/png", "image/jpeg")


@router.post(
    "/policies/{program_id}/decisions",
    response_model=PolicyDecision,
    responses=error_responses(401, 404, 409, 413, 422),
    openapi_extra={"requestBody": frame_request_body(DecideRequest, RAW_IMAGE_TYPES)},
)
async def decide(request: Request, program_id: str, service: Service) -> PolicyDecision:
    """A backend per call site for one frame: the PNG or JPEG bytes as the body with
    ``?decision_id=``, or JSON ``{decision_id, image: base64}``. An empty raw body is a decision
    without the frame (for a policy that does not look at it)."""
    body = await read_frame_body(request, DecideRequest, raw_types=RAW_IMAGE_TYPES, invalid=ValueError)
    if body.fields is not None:
        decision_id, image = body.fields.decision_id, body.image
    else:
        decision_id = query_field(request, "decision_id", required=True, max_length=64, invalid=ValueError)
        image = body.image or None
    return await run_in_threadpool(_decide, service, program_id, decision_id, image)


def _decide(service: PolicyService, program_id: str, decision_id: str, image: bytes | None) -> PolicyDecision:
    """Decode the frame (once, off the event loop) and decide on it; without a frame when None."""
    try:
        frame = None if image is None else decode_image(image)
    except ImageError as exc:
        raise ValueError(f"image: {exc}") from None
    return service.decide(program_id, decision_id, frame)
