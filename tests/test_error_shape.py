"""The router's and the policy's error replies: every one is the shared ``ErrorResponse`` (a
``detail`` string), the OpenAPI document declares exactly that for every error code, and query
parameters are bounded so that no value reaches SQLite as an overflow (a 500)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog
from fmprog.web import ErrorResponse
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app as create_router_app
from router.settings import RouterSettings


@pytest.fixture
def router(tmp_path, zoo) -> Iterator[TestClient]:
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None)
    app = create_router_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with TestClient(app) as client:
        yield client


@pytest.fixture
def policy(tmp_path) -> Iterator[TestClient]:
    with TestClient(create_policy_app(PolicySettings(state_dir=tmp_path / "policy"))) as client:
        yield client


def _error_responses(app: FastAPI) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code[0] in "45":
                    yield f"{method.upper()} {path} {code}", code, response


@pytest.mark.parametrize("service", ["router", "policy"])
def test_every_declared_error_is_the_shared_error_shape(service, request):
    client: TestClient = request.getfixturevalue(service)
    schema = client.app.openapi()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert schema["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]["type"] == "string"
    declared = list(_error_responses(client.app))
    assert any(code == "422" for _, code, _ in declared)
    for where, _, response in declared:
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}, (
            where
        )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"offset": 2**63}, "query.offset"),
        ({"offset": 10**10}, "query.offset"),
        ({"offset": -1}, "query.offset"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 2**64}, "query.limit"),
        ({"limit": "many"}, "query.limit"),
    ],
)
@pytest.mark.parametrize("path", ["/programs", "/dead-letters"])
def test_out_of_range_paging_is_a_422_not_a_500(router, path, query, message):
    response = router.get(path, params=query)
    assert response.status_code == 422, response.text
    assert message in ErrorResponse.model_validate(response.json()).detail


def test_errors_are_returned_as_declared(router, policy):
    bad_multipart = router.post("/answer", content=b"x", headers={"content-type": "multipart/form-data"})
    assert bad_multipart.status_code == 400
    assert "400" in router.app.openapi()["paths"]["/answer"]["post"]["responses"]
    replies = [
        bad_multipart,
        router.post("/programs", json={"kind": "binary"}),
        router.get("/programs/nope"),
        policy.put("/policies/p", json={"sites": []}),
        policy.post("/policies/check", content=b"[", headers={"content-type": "application/json"}),
        policy.get("/policies/nope"),
    ]
    for reply in replies:
        assert reply.status_code >= 400
        assert isinstance(ErrorResponse.model_validate(reply.json()).detail, str), reply.text
