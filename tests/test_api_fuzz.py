"""A bounded schemathesis run against the router's and the policy's OpenAPI documents, in process
(ASGI): every operation gets ``EXAMPLES`` generated requests (derandomized, so every run sends the
same ones) with the API key, and a few without it; no reply may be a 5xx, and every reply's status
code, content type and body must be what the document declares. Real SQLite stores in a tmp
directory; the router runs on the fake zoo (this fuzzes the HTTP handling, not the models) and with
no policy service (its fallback decides)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fmprog.backends import BackendCatalog
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app as create_router_app
from router.settings import RouterSettings
from tests.fakes import Zoo

EXAMPLES = 30
KEY = "fuzz-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


def _router(state: Path) -> FastAPI:
    zoo = Zoo()
    config = RouterSettings(database=state / "router.db", synthesis_backend=None, api_key=KEY)
    return create_router_app(config, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())


def _policy(state: Path) -> FastAPI:
    return create_policy_app(PolicySettings(state_dir=state / "policy", api_key=KEY, train_interval_s=3600))


APPS = {"router": _router, "policy": _policy}


def _operations(service: str) -> list[Any]:
    """Every operation in the service's document, with the generation modes it can be fuzzed in:
    ``negative`` only where there is something to break (a body or a query parameter)."""
    document = APPS[service](Path("/nonexistent")).openapi()  # the document needs no lifespan
    cases = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            breakable = "requestBody" in operation or any(p["in"] == "query" for p in operation.get("parameters", []))
            modes = list(GenerationMode) if breakable else [GenerationMode.POSITIVE]
            cases += [pytest.param(service, method.upper(), path, mode) for mode in modes]
    return cases


OPERATIONS = _operations("router") + _operations("policy")


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    loaded = {
        name: schemathesis.openapi.from_asgi("/openapi.json", build(tmp_path_factory.mktemp(name)), headers=AUTH)
        for name, build in APPS.items()
    }
    try:
        yield loaded
    finally:
        asgi.shutdown_lifespans()  # the apps' lifespans (stores, background threads) end here


def _fuzz(operation: Any, headers: dict[str, str], mode: GenerationMode, examples: int = EXAMPLES) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(case=operation.as_strategy(mode))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


@pytest.mark.parametrize(("service", "method", "path", "mode"), OPERATIONS, ids=str)
def test_fuzz_with_the_key(schemas, service, method, path, mode):
    """Valid requests (``positive``) and requests that break the schema (``negative``)."""
    _fuzz(schemas[service][path][method], AUTH, mode)


@pytest.mark.parametrize(
    ("service", "method", "path"),
    list(dict.fromkeys(p.values[:3] for p in OPERATIONS)),
    ids=str,
)
def test_fuzz_without_the_key(schemas, service, method, path):
    """Without the key every route but the open ones answers 401, which must be declared too."""
    _fuzz(schemas[service][path][method], {}, GenerationMode.POSITIVE, examples=3)
