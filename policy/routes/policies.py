"""Policies: check a spec, put a program's policy, list, read and delete them."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from fmprog.contract import PolicySpec
from fmprog.web import error_responses
from policy.routes.common import Service
from policy.schemas import PolicyInfo, SpecAccepted

router = APIRouter()


@router.post("/policies/check", response_model=SpecAccepted, responses=error_responses(400, 401, 413, 422))
async def check_policy(spec: PolicySpec, service: Service) -> SpecAccepted:
    """Whether a policy can be built from this spec; nothing is stored (422 names the problem)."""
    return service.check(spec)


@router.put("/policies/{program_id}", response_model=PolicyInfo, responses=error_responses(400, 401, 413, 422))
async def put_policy(program_id: str, spec: PolicySpec, service: Service) -> PolicyInfo:
    """Create a program's policy from its spec, or replace it when the spec changed (learning restarts); the
    same spec again keeps it."""
    return await run_in_threadpool(service.put, program_id, spec)


@router.get("/policies", response_model=list[PolicyInfo], responses=error_responses(401))
async def list_policies(service: Service) -> list[PolicyInfo]:
    """Every program's policy: its algorithm, what it has observed and how far it has trained."""
    return [service.info(p) for p in service.programs()]


@router.get("/policies/{program_id}", response_model=PolicyInfo, responses=error_responses(401, 404))
async def get_policy(program_id: str, service: Service) -> PolicyInfo:
    """One program's policy: its algorithm, what it has observed and how far it has trained."""
    return service.info(program_id)


@router.delete("/policies/{program_id}", status_code=204, responses=error_responses(401, 404))
async def delete_policy(program_id: str, service: Service) -> Response:
    """Forget a program's policy, what it learned and its reuse gates."""
    await run_in_threadpool(service.delete, program_id)
    return Response(status_code=204)
