"""The router's default lambda: a program registered without ``lambda`` gets
``FMPROG_ROUTER_DEFAULT_LAMBDA``, and its public view says where its lambda came from."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from fmprog.backends import BackendCatalog
from router.app import create_app
from router.settings import DEFAULT_LAMBDA, RouterSettings
from tests.router.conftest import example


def _client(tmp_path, zoo, **fields: object) -> TestClient:
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None, **fields)
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    return TestClient(app)


def _register(client: TestClient, **fields: object) -> dict:
    response = client.post("/programs", json={"source": example("person_on_bike"), "kind": "binary", **fields})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_program_without_lambda_gets_the_default_and_says_so(tmp_path, zoo):
    with _client(tmp_path, zoo, default_lambda=0.25) as client:
        defaulted = _register(client)
        given = _register(client, **{"lambda": 3})
        zero = _register(client, **{"lambda": 0})
        assert (defaulted["lambda"], defaulted["lambda_source"]) == (0.25, "default")
        assert (given["lambda"], given["lambda_source"]) == (3, "request")
        assert (zero["lambda"], zero["lambda_source"]) == (0, "request")  # 0 is a lambda, not a missing one
        assert client.get(f"/programs/{defaulted['id']}").json()["lambda_source"] == "default"
        listed = {p["id"]: (p["lambda"], p["lambda_source"]) for p in client.get("/programs").json()}
        assert listed == {defaulted["id"]: (0.25, "default"), given["id"]: (3, "request"), zero["id"]: (0, "request")}
    # stored: a router that opens the same database reads the same
    with _client(tmp_path, zoo) as client:
        assert client.get(f"/programs/{defaulted['id']}").json()["lambda_source"] == "default"
        assert client.get(f"/programs/{given['id']}").json()["lambda_source"] == "request"


def test_the_default_lambda_comes_from_the_environment(tmp_path, zoo, monkeypatch):
    assert RouterSettings().default_lambda is None  # the backend configuration's, else DEFAULT_LAMBDA
    monkeypatch.setenv("FMPROG_ROUTER_DEFAULT_LAMBDA", "0.001")
    assert RouterSettings().default_lambda == 0.001
    with _client(tmp_path, zoo) as client:
        assert client.post("/programs", json={"source": example("person_on_bike"), "kind": "binary"}).json()[
            "lambda"
        ] == pytest.approx(0.001)


def test_the_default_lambda_comes_from_the_configuration_unless_the_router_sets_one(tmp_path, zoo):
    catalog = BackendCatalog(backends=zoo.specs, default_lambda=0.002)

    def registered(**fields: object) -> dict:
        settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None, **fields)
        with TestClient(create_app(settings, catalog=catalog, backends=zoo.registry())) as client:
            return _register(client)

    assert registered()["lambda"] == pytest.approx(0.002)
    assert registered(default_lambda=0.5)["lambda"] == pytest.approx(0.5)
    without = BackendCatalog(backends=zoo.specs)
    settings = RouterSettings(database=tmp_path / "other.db", synthesis_backend=None)
    with TestClient(create_app(settings, catalog=without, backends=zoo.registry())) as client:
        assert _register(client)["lambda"] == DEFAULT_LAMBDA


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e10", "lots"])
def test_a_bad_default_lambda_is_refused_at_start_up(monkeypatch, value):
    monkeypatch.setenv("FMPROG_ROUTER_DEFAULT_LAMBDA", value)
    with pytest.raises(ValidationError, match="default_lambda"):
        RouterSettings()


def test_a_bad_lambda_in_the_request_is_still_422(tmp_path, zoo):
    with _client(tmp_path, zoo) as client:
        for value in (-1, "x", None):
            body = {"source": example("person_on_bike"), "kind": "binary", "lambda": value}
            response = client.post("/programs", json=body)
            if value is None:  # an explicit null is the same as leaving it out
                assert response.status_code == 201 and response.json()["lambda_source"] == "default"
            else:
                assert response.status_code == 422 and "lambda" in response.json()["detail"], response.text


def test_a_router_offering_some_of_the_backends_keeps_the_configurations_default_lambda(tmp_path, zoo):
    from router.settings import select_backends

    catalog = BackendCatalog(backends=zoo.specs, default_lambda=0.002)
    chosen = select_backends(catalog, [zoo.specs[0].name])
    assert [s.name for s in chosen.backends] == [zoo.specs[0].name] and chosen.default_lambda == 0.002
