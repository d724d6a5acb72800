"""The pieces both services share (``fmprog.web``), on a small app built with them: a frame read from
a raw body or from JSON with base64, the security set-up a service's settings choose (bearer key or
loopback only, body limit, JSON check) and errors answered by the status of their nearest class."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fmprog.web import (
    BINARY,
    add_error_shape,
    add_security,
    api_key_setting,
    frame_request_body,
    operations_router,
    query_field,
    read_frame_body,
    status_for,
)

KEY = "k" * 24
PNG = {"content-type": "image/png"}


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=8)
    image: str = Field(min_length=1)


class Refused(Exception):
    """A frame the route refuses."""


class Later(Refused):
    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FMPROG_WEBTEST_")

    max_request_bytes: int = 4096
    api_key: SecretStr | None = None


def make_app(settings: Settings) -> FastAPI:
    app = FastAPI()
    add_security(app, settings)
    add_error_shape(app, {Refused: 400, Later: 429})

    @app.post("/frames", openapi_extra={"requestBody": frame_request_body(Frame, ("image/png",))})
    async def frames(request: Request) -> dict[str, object]:
        body = await read_frame_body(request, Frame, raw_types=("image/png",), invalid=Refused)
        if body.fields is not None:
            name = body.fields.name
        else:
            name = query_field(request, "name", required=True, max_length=8, invalid=Refused)
        return {"name": name, "image": body.image.decode(), "raw": body.fields is None}

    @app.get("/later")
    async def later() -> None:
        raise Later("busy a while", retry_after_s=2.2)

    app.include_router(operations_router(lambda service: {}))
    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app(Settings())) as test_client:
        yield test_client


def as_base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_frame_is_its_raw_bytes_or_base64_in_json(client):
    raw = client.post("/frames", params={"name": "a"}, content=b"pixels", headers=PNG)
    assert raw.json() == {"name": "a", "image": "pixels", "raw": True}
    typed = client.post("/frames?name=a", content=b"pixels", headers={"content-type": "IMAGE/PNG; q=1"})
    assert typed.json() == raw.json()
    empty = client.post("/frames", params={"name": "a"}, content=b"", headers=PNG)
    assert empty.json() == {"name": "a", "image": "", "raw": True}  # the route decides what empty means
    sent = client.post("/frames", json={"name": "b", "image": as_base64(b"pixels")})
    assert sent.json() == {"name": "b", "image": "pixels", "raw": False}
    url = client.post("/frames", json={"name": "b", "image": "data:image/png;base64," + as_base64(b"pixels")})
    assert url.json() == sent.json()
    other_type = client.post(
        "/frames", content=b'{"name": "c", "image": "eA=="}', headers={"content-type": "text/plain"}
    )
    assert other_type.json() == {"name": "c", "image": "x", "raw": False}  # any other body is read as JSON
    content = frame_request_body(Frame, ("image/png",))["content"]
    assert content == {"application/json": {"schema": Frame.model_json_schema()}, "image/png": {"schema": BINARY}}


@pytest.mark.parametrize(
    ("params", "body", "status", "message"),
    [
        ({}, {"name": "a", "image": "%%%"}, 400, "image: image is not valid base64"),
        ({}, {"image": "eA=="}, 422, "name: Field required"),
        ({}, {"name": "a", "image": "eA==", "size": 3}, 422, "size: Extra inputs are not permitted"),
        ({}, b'{"name": "a", "ima', 422, "JSON"),
        ({}, b"pixels", 400, "query parameter name is required with a raw image body"),
        ({"name": ""}, b"pixels", 400, "query parameter name is required"),
        ({"name": "n" * 9}, b"pixels", 400, "query parameter name: at most 8 characters"),
    ],
)
def test_a_frame_body_that_cannot_be_read_is_refused_naming_why(client, params, body, status, message):
    if isinstance(body, dict):
        reply = client.post("/frames", params=params, json=body)
    else:
        kind = PNG if body == b"pixels" else {"content-type": "application/json"}
        reply = client.post("/frames", params=params, content=body, headers=kind)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["detail"]


def test_with_a_key_every_path_but_the_operations_ones_needs_it():
    settings = Settings(api_key=SecretStr(KEY))
    with TestClient(make_app(settings), base_url="http://10.9.8.7") as client:  # from outside: the key decides
        body = {"name": "a", "image": "eA=="}
        missing = client.post("/frames", json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert client.post("/frames", json=body, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/frames", json=body, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}
        # the API's description is public (a browser opening /docs has no key); calling it is not
        schema = client.get("/openapi.json")
        assert schema.status_code == 200 and "/frames" in schema.json()["paths"]
        assert client.get("/docs").status_code == 200
        assert client.get("/docs/anything").status_code == 401


def test_without_a_key_a_service_answers_on_loopback_only():
    app = make_app(Settings())
    with TestClient(app, base_url="http://10.9.8.7") as outside, TestClient(app, base_url="http://127.0.0.1") as inside:
        refused = outside.get("/healthz")
        assert refused.status_code == 403 and "set FMPROG_WEBTEST_API_KEY" in refused.json()["detail"]
        assert inside.get("/healthz").status_code == 200
    assert api_key_setting(Settings()) == "FMPROG_WEBTEST_API_KEY"


def test_bodies_are_limited_and_json_is_checked_before_any_route(client):
    big = client.post("/frames", params={"name": "a"}, content=b"x" * 5000, headers=PNG)
    assert big.status_code == 413 and "exceeds the limit of 4096" in big.json()["detail"]
    deep = client.post("/frames", content=b"[" * 100 + b"]" * 100, headers={"content-type": "application/json"})
    assert deep.status_code == 422 and "nested 100 levels deep" in deep.json()["detail"]


def test_an_error_is_answered_with_the_status_of_its_nearest_class(client):
    statuses = {Refused: 400, Later: 429, LookupError: 404}
    assert status_for(Later("x", 1), statuses) == 429
    assert status_for(Refused("x"), statuses) == 400
    assert status_for(KeyError("x"), statuses) == 404  # a subclass of LookupError
    assert status_for(RuntimeError("x"), statuses) == 422
    reply = client.get("/later")
    assert reply.status_code == 429 and reply.json() == {"detail": "busy a while"}
    assert reply.headers["retry-after"] == "3"  # whole seconds, rounded up
