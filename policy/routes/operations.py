"""Operations: the metrics, liveness and readiness every fmprog service answers
(``fmprog.web.operations_router``); a ready policy service adds how many policies it holds."""

from __future__ import annotations

from fmprog.web import operations_router
from policy.service import PolicyService


def readiness(service: PolicyService) -> dict[str, int]:
    """What ``GET /readyz`` adds for a ready policy service: how many policies it holds."""
    return {"policies": len(service.programs())}


router = operations_router(readiness)
