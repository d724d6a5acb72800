"""A program's policy is checked and built under a timeout of its own, longer than a decision's:
the first policy of an algorithm may load its libraries for seconds (torch), and a registration
that times out leaves the program's first frames to the fallback until the outbox delivers it."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI, Request

from router.policy_client import HttpPolicyClient, PolicyUnavailable
from tests.policy.test_service import SPEC
from tests.servers import serving

pytestmark = pytest.mark.timeout(60)


def slow_policy(delay_s: float) -> FastAPI:
    """A policy service whose checks and registrations take ``delay_s``, as a first torch import does."""
    app = FastAPI()
    calls: list[str] = []
    app.state.calls = calls

    @app.get("/readyz")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/policies/check")
    def check(request: Request) -> dict:
        calls.append("check")
        time.sleep(delay_s)
        return {}

    @app.put("/policies/{program_id}")
    def register(program_id: str, request: Request) -> dict:
        calls.append(f"put {program_id}")
        time.sleep(delay_s)
        return {}

    return app


def test_a_slow_first_registration_waits_for_the_policy_not_for_a_decisions_timeout():
    app = slow_policy(0.6)
    with serving(app) as url:
        patient = HttpPolicyClient(url, timeout_s=0.2, register_timeout_s=5.0)
        patient.check(SPEC)
        patient.register("p" * 32, SPEC)
        hasty = HttpPolicyClient(url, timeout_s=0.2, register_timeout_s=0.2)
        with pytest.raises(PolicyUnavailable, match="unreachable"):
            hasty.register("q" * 32, SPEC)
    assert app.state.calls[:3] == ["check", f"put {'p' * 32}", f"put {'q' * 32}"]
