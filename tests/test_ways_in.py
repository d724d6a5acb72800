"""Ways into the router and the policy, over real HTTP: a service with no API key answers only
requests that arrive on loopback, whatever address it was bound to; the policy requires its
bearer key (health, readiness and metrics stay open) and the router sends it."""

from __future__ import annotations

import socket

import httpx
import pytest

from fmprog.backends import BackendCatalog
from fmprog.web import is_loopback
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app as create_router_app
from router.settings import RouterSettings
from tests.router.conftest import example
from tests.servers import serving

ROUTER_KEY = "r" * 24
POLICY_KEY = "p" * 24


def _outside_address() -> str:
    """An address of this machine that is not loopback (the one its default route leaves by)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent for a UDP connect
        except OSError:
            pytest.skip("this machine has no route off loopback")
        address = sock.getsockname()[0]
    if is_loopback(address):
        pytest.skip("this machine has no address off loopback")
    return address


def _router(tmp_path, zoo, **fields) -> object:
    settings = RouterSettings(database=tmp_path / "router.db", synthesis_backend=None, outbox_retry_s=3600, **fields)
    return create_router_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())


def _outside(url: str, address: str) -> str:
    return url.replace("127.0.0.1", address)


def test_a_router_without_a_key_bound_to_every_interface_answers_only_on_loopback(tmp_path, zoo):
    address = _outside_address()
    with serving(_router(tmp_path, zoo), host="0.0.0.0") as url:  # what uvicorn --host 0.0.0.0 does
        assert httpx.get(f"{url}/programs").status_code == 200
        for path in ("/programs", "/dead-letters", "/metrics", "/readyz"):
            refused = httpx.get(_outside(url, address) + path)
            assert refused.status_code == 403, path
            assert "FMPROG_ROUTER_API_KEY" in refused.json()["detail"] and address in refused.json()["detail"]
        program = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.1}
        assert httpx.post(_outside(url, address) + "/programs", json=program).status_code == 403
        assert httpx.get(f"{url}/programs").json() == []


def test_a_router_with_a_key_answers_off_loopback_with_the_key(tmp_path, zoo):
    address = _outside_address()
    app = _router(tmp_path, zoo, api_key=ROUTER_KEY, host="0.0.0.0")
    with serving(app, host="0.0.0.0") as url:
        outside = _outside(url, address)
        assert httpx.get(f"{outside}/programs").status_code == 401
        assert httpx.get(f"{outside}/programs", headers={"authorization": f"Bearer {ROUTER_KEY}"}).status_code == 200


def test_a_policy_without_a_key_answers_only_on_loopback(tmp_path):
    address = _outside_address()
    with serving(create_policy_app(PolicySettings(state_dir=tmp_path / "policy")), host="0.0.0.0") as url:
        assert httpx.get(f"{url}/policies").status_code == 200
        refused = httpx.delete(_outside(url, address) + "/policies/p")
        assert refused.status_code == 403 and "FMPROG_POLICY_API_KEY" in refused.json()["detail"]
    with pytest.raises(ValueError, match="without an api_key"):
        PolicySettings(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 16"):
        PolicySettings(api_key="short")


def test_the_policy_requires_its_key_and_the_router_sends_it(tmp_path, zoo):
    settings = PolicySettings(state_dir=tmp_path / "policy", api_key=POLICY_KEY, train_interval_s=3600)
    with serving(create_policy_app(settings)) as policy:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{policy}{path}").status_code == 200, path
        for method, path in [("GET", "/policies"), ("DELETE", "/policies/p"), ("PUT", "/policies/p")]:
            refused = httpx.request(method, f"{policy}{path}", headers={"authorization": "Bearer wrong-key-wrong"})
            assert refused.status_code == 401, (method, path)
            assert httpx.request(method, f"{policy}{path}").status_code == 401

        program = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.1, "algorithm": "fast"}
        with serving(_router(tmp_path, zoo, policy_url=policy, policy_api_key=POLICY_KEY)) as router:
            created = httpx.post(f"{router}/programs", json=program)
            assert created.status_code == 201, created.text
            assert httpx.get(f"{router}/readyz").json()["policy_outbox"] == 0
        policies = httpx.get(f"{policy}/policies", headers={"authorization": f"Bearer {POLICY_KEY}"}).json()
        assert [p["program_id"] for p in policies] == [created.json()["id"]]

        # a router with the wrong key: its messages wait in the outbox, none is taken for refused
        with serving(_router(tmp_path / "other", zoo, policy_url=policy, policy_api_key="x" * 16)) as router:
            assert httpx.post(f"{router}/programs", json=program).status_code == 201
            ready = httpx.get(f"{router}/readyz").json()
            assert ready["policy_outbox"] == 1 and ready["policy_dead_letters"] == 0


@pytest.mark.parametrize(
    ("local_address", "outside"),
    [
        ("127.0.0.1", False),
        ("127.3.4.5", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("192.0.2.2", True),
        ("::ffff:192.0.2.2", True),
        ("fd00::2", True),
        ("0.0.0.0", True),
        ("/run/fmprog.sock", False),  # a Unix socket
    ],
)
def test_which_local_addresses_count_as_outside(local_address, outside):
    from fmprog.web import arrived_from_outside

    assert arrived_from_outside(local_address) is outside
