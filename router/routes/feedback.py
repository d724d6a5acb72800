"""POST /feedback: a label for an answered frame, or a list of labels answered one by one."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError

from fmprog.web import error_responses
from router.routes.common import CurrentCaller, Service
from router.schemas import MAX_FEEDBACK_BATCH, FeedbackBatch, FeedbackIn, FeedbackResult

router = APIRouter()
_ONE_LABEL = TypeAdapter(FeedbackIn)
_LABELS = TypeAdapter(Annotated[list[FeedbackIn], Field(min_length=1, max_length=MAX_FEEDBACK_BATCH)])


@router.post(
    "/feedback",
    response_model=FeedbackResult | FeedbackBatch,
    responses=error_responses(400, 401, 404, 409, 410, 413, 422),
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            FeedbackIn.model_json_schema(),
                            {
                                "type": "array",
                                "items": FeedbackIn.model_json_schema(),
                                "minItems": 1,
                                "maxItems": MAX_FEEDBACK_BATCH,
                            },
                        ]
                    }
                }
            },
            "required": True,
        }
    },
)
async def feedback(request: Request, service: Service, caller: CurrentCaller) -> FeedbackResult | FeedbackBatch:
    """A label for an answered frame; or a list of labels (at most 1000), each answered on its
    own in ``results``: accepted, repeat, conflict, unknown, expired or rejected."""
    body = await _read_feedback(request)
    if isinstance(body, list):
        return await run_in_threadpool(service.feedback_batch, body, caller)
    return await run_in_threadpool(service.feedback, body, caller)


async def _read_feedback(request: Request) -> FeedbackIn | list[FeedbackIn]:
    """One label (a JSON object) or a list of them (a JSON array), checked as such."""
    body = await request.body()
    try:
        data = json.loads(body)
    except ValueError:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "not JSON"}]) from None
    try:
        return (_LABELS if isinstance(data, list) else _ONE_LABEL).validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
