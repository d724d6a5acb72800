"""What the policy's routes share: the service they call (built by the app's lifespan and kept on
``app.state``) and the status of each domain error."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from policy.service import DuplicateDecision, FeedbackConflict, PolicyService, UnknownDecision, UnknownPolicy

ERROR_STATUSES: dict[type[Exception], int] = {
    UnknownPolicy: 404,
    UnknownDecision: 404,
    FeedbackConflict: 409,
    DuplicateDecision: 409,
    ValueError: 422,
}
"""The HTTP status of each domain error (of its nearest class here); a ValueError is input the
service refused."""


async def get_service(request: Request) -> PolicyService:
    return request.app.state.service


Service = Annotated[PolicyService, Depends(get_service)]
