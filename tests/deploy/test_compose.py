"""docker-compose.yml, alone and with the GPU override (deploy/compose.gpu.yaml): valid against the
Compose specification's schema, and every service, volume, file, build target, URL and setting it
names exists. No container engine runs here: nothing is started."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from policy.settings import PolicySettings
from router.settings import RouterSettings
from tests.deploy.dockerfiles import Dockerfile
from tests.deploy.manifests import ROOT

COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "deploy/compose.gpu.yaml"
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def mount(volume: str) -> tuple[str, str]:
    """(source, container path) of a short-syntax volume; a variable source reads ``$NAME``."""
    source, target = VARIABLE.sub(lambda m: f"${m['name']}", volume).split(":")[:2]
    return source, target


def merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose's merge of an override file, for what these files use: mappings merge, ``volumes``
    merge by container path, other sequences and scalars are replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for name, value in override.items():
            out[name] = merge(base[name], value, name) if name in base else value
        return out
    if key == "volumes" and isinstance(base, list) and isinstance(override, list):
        by_target = {mount(v)[1]: v for v in base}
        by_target |= {mount(v)[1]: v for v in override}
        return list(by_target.values())
    return override


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${X}``, ``${X:-default}``, ``${X:?error}``; ``$$`` is ``$``.
    Raises LookupError with the message of an unset required variable."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op in {":?", "?"} and not current:
            raise LookupError(arg)
        if op in {":-", "-"} and not current:
            return arg
        return current or ""

    return VARIABLE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def models() -> list[tuple[str, dict[str, Any]]]:
    return [("docker-compose.yml", load(COMPOSE)), ("with the GPU override", merge(load(COMPOSE), load(GPU_OVERRIDE)))]


MODELS = models()
IDS = [name for name, _ in MODELS]


def compose_schema() -> dict[str, Any]:
    try:
        from importlib.resources import files

        text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("check-jsonschema (the test extra) is not installed: no copy of the Compose schema")
    return json.loads(text)


@pytest.mark.parametrize(("name", "model"), MODELS, ids=IDS)
def test_validates_against_the_compose_specification(name: str, model: dict[str, Any]) -> None:
    import jsonschema

    errors = list(jsonschema.Draft202012Validator(compose_schema()).iter_errors(model))
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]]


def test_the_override_only_changes_services_the_base_defines() -> None:
    override = load(GPU_OVERRIDE)
    assert set(override) == {"services"}
    assert set(override["services"]) <= set(load(COMPOSE)["services"])


@pytest.mark.parametrize(("name", "model"), MODELS, ids=IDS)
def test_references_resolve(name: str, model: dict[str, Any]) -> None:
    services = model["services"]
    declared = set(model.get("volumes") or {})
    used: set[str] = set()
    for service_name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{service_name} depends on undefined {dependency}"
            if condition["condition"] == "service_healthy":
                assert has_healthcheck(services[dependency]), f"{dependency} has no health check to wait for"
        for volume in service.get("volumes", []):
            source = mount(volume)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{service_name} mounts missing {source}"
            elif not source.startswith(("$", "/")):
                assert source in declared, f"{service_name} uses undeclared volume {source}"
                used.add(source)
        if "build" in service:
            build = service["build"]
            dockerfile = Dockerfile(ROOT / build["context"] / build["dockerfile"])
            assert build["target"] in dockerfile.stage_names(), f"{service_name}: no stage {build['target']}"
            assert "image" in service, f"{service_name} builds an image without naming it"
    assert used == declared, f"declared but unused volumes: {sorted(declared - used)}"


def has_healthcheck(service: dict[str, Any]) -> bool:
    if service.get("healthcheck", {}).get("disable"):
        return False
    if "test" in service.get("healthcheck", {}):
        return True
    build = service.get("build")
    if build is None:
        return False
    stage = Dockerfile(ROOT / build["context"] / build["dockerfile"]).stage(build["target"])
    return any(i.keyword == "HEALTHCHECK" for i in stage.instructions)


@pytest.mark.parametrize(("name", "model"), MODELS, ids=IDS)
def test_settings_and_urls_are_the_services_own(name: str, model: dict[str, Any], monkeypatch) -> None:
    """The router and the policy get only variables they read, with values they accept; their URLs
    name services of this file; the backend configurations they name are in the image."""
    services = model["services"]
    env = {
        "FMPROG_ROUTER_API_KEY": "k" * 24,
        "FMPROG_POLICY_API_KEY": "p" * 24,
        "FMPROG_HF_HOME": "/srv/hf",
        "FMPROG_POSTGRES_PASSWORD": "d" * 24,
    }
    for service_name, prefix, settings in (
        ("router", "FMPROG_ROUTER_", RouterSettings),
        ("policy", "FMPROG_POLICY_", PolicySettings),
    ):
        variables = services[service_name]["environment"]
        fields = {f"{prefix}{field.upper()}" for field in settings.model_fields}
        assert set(variables) <= fields, f"{service_name}: unknown settings {sorted(set(variables) - fields)}"
        for variable, value in variables.items():
            if value is None:  # passed on from the shell when set there
                monkeypatch.delenv(variable, raising=False)
            else:
                monkeypatch.setenv(variable, interpolate(str(value), env))
    router, policy = RouterSettings(), PolicySettings()
    serve, policy_url = urlsplit(router.serve_url), urlsplit(router.policy_url or "")
    assert serve.hostname in services and str(serve.port) in services[serve.hostname]["expose"]
    assert policy_url.hostname in services and policy_url.port == policy.port
    config = services["serve"]["environment"]["FMPROG_CONFIG"]
    assert router.backends_config.as_posix() == config, "the router offers what Serve serves"
    # the images copy the packaged configurations (fmprog/configs) to /app/deploy/config
    assert Path(config).parent == Path("/app/deploy/config") and (ROOT / "fmprog/configs" / Path(config).name).is_file()
    expected = "gpu.yaml" if "GPU" in name else "synthetic.yaml"
    assert Path(config).name == expected
    # the router's state is in the postgres service, with the credentials that service is given
    database = urlsplit(str(router.database))
    postgres = {k: interpolate(str(v), env) for k, v in services["postgres"]["environment"].items()}
    assert database.scheme == "postgresql+psycopg" and database.hostname in services
    assert str(database.port) in services[database.hostname]["expose"]
    assert database.username == postgres["POSTGRES_USER"] and database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    assert "postgres" in services["router"]["depends_on"] and has_healthcheck(services["postgres"])
    assert "ports" not in services["postgres"], "only the routers reach the database"


def test_the_router_needs_an_api_key_and_is_the_only_public_port() -> None:
    model = load(COMPOSE)
    key = model["services"]["router"]["environment"]["FMPROG_ROUTER_API_KEY"]
    with pytest.raises(LookupError, match="FMPROG_ROUTER_API_KEY"):
        interpolate(key, {})
    assert interpolate(key, {"FMPROG_ROUTER_API_KEY": "k" * 24}) == "k" * 24
    for service_name, service in model["services"].items():
        for port in service.get("ports", []):
            published = interpolate(str(port), {})
            if service_name != "router":
                assert published.startswith("127.0.0.1:"), f"{service_name} publishes {port} beyond loopback"
    for service_name in ("serve", "policy"):
        assert "ports" not in model["services"][service_name], f"{service_name} is internal"
    policy_key = model["services"]["policy"]["environment"]["FMPROG_POLICY_API_KEY"]
    with pytest.raises(LookupError, match="FMPROG_POLICY_API_KEY"):
        interpolate(policy_key, {})
    router_env = model["services"]["router"]["environment"]
    assert router_env["FMPROG_ROUTER_POLICY_API_KEY"] == policy_key, "the router sends the key the policy takes"


def test_the_gpu_override_reserves_gpus_and_mounts_the_weights() -> None:
    serve = merge(load(COMPOSE), load(GPU_OVERRIDE))["services"]["serve"]
    (device,) = serve["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert serve["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
    assert serve["image"].startswith("fmprog/serve-gpu:")
    targets = {mount(v)[1] for v in serve["volumes"]}
    hf_home = Dockerfile(ROOT / "deploy/docker/Dockerfile.gpu").stage("serve-gpu").env()["HF_HOME"]
    assert hf_home in targets
    with pytest.raises(LookupError, match="FMPROG_HF_HOME"):
        interpolate(next(str(v) for v in serve["volumes"] if hf_home in str(v)), {})


def test_prometheus_scrapes_every_service_that_has_metrics() -> None:
    model = load(COMPOSE)
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"router:8080", "policy:8081", "serve:8080"}
    for target in targets:
        host, port = target.split(":")
        service = model["services"][host]
        stage = Dockerfile(ROOT / service["build"]["context"] / service["build"]["dockerfile"]).stage(
            service["build"]["target"]
        )
        assert port in stage.exposed() or port in service.get("expose", []), f"{target} is not a port of {host}"
    mounts = dict(mount(v) for v in model["services"]["prometheus"]["volumes"])
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


def test_grafana_provisioning_matches_the_mounts() -> None:
    grafana = load(COMPOSE)["services"]["grafana"]
    mounts = dict(mount(v) for v in grafana["volumes"])
    provisioning = ROOT / "deploy/grafana/provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((provisioning / "dashboards/fmprog.yaml").read_text())["providers"]
    assert mounts["./deploy/grafana/dashboards"] == providers[0]["options"]["path"]
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())["datasources"]
    assert urlsplit(datasource["url"]).hostname in load(COMPOSE)["services"]
