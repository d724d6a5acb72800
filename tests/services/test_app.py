"""Serve applications and Serve configs come from the typed backend configuration (no Ray started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fmprog.backends import BackendSpec, ConfigError, load_catalog
from services.app import REPLICA_ENV, deployment_options, serve_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "fmprog" / "configs").glob("*.yaml"))


def test_deployment_options_follow_the_spec():
    spec = BackendSpec.model_validate(
        {
            "name": "llm-x",
            "function": "llm",
            "cost": 10,
            "engine": {"kind": "openai", "base_url": "http://localhost:1/v1", "model": "m"},
            "resources": {"num_cpus": 0.5, "num_gpus": 1},
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2},
            "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.01},
            "max_ongoing_requests": 8,
        }
    )
    options = deployment_options(spec)
    assert options["name"] == "llm-x"
    assert options["ray_actor_options"] == {
        "num_cpus": 0.5,
        "num_gpus": 1,
        "runtime_env": {"env_vars": REPLICA_ENV},
    }
    assert options["autoscaling_config"]["max_replicas"] == 4
    assert options["autoscaling_config"]["initial_replicas"] == 2
    # a replica must accept at least one full batch of requests at a time
    assert options["max_ongoing_requests"] == 32


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_serve_config_round_trips_every_backend(path):
    catalog = load_catalog(path)
    config = serve_config(catalog)
    apps = config["applications"]
    assert [a["name"] for a in apps] == [b.name for b in catalog.backends]
    for app, spec in zip(apps, catalog.backends, strict=True):
        assert app["route_prefix"] == f"/{spec.name}"
        assert app["import_path"] == "services.app:backend_app"
        assert BackendSpec.model_validate(app["args"]["backend"]) == spec


def test_default_configs_exist():
    assert {p.name for p in CONFIGS} >= {"real.yaml", "synthetic.yaml", "gpu.yaml"}


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ({"kind": "llama_cpp", "model": {"path": "/m.gguf"}}, "engine 'llama_cpp' cannot serve detect"),
        ({"kind": "torch", "model": {"zoo": "x"}, "device": "tpu"}, "engine.torch.device"),
        ({"kind": "openai", "base_url": "ftp://x", "model": "m"}, "engine.openai.base_url"),
        ({"kind": "magic"}, "does not match any of the expected tags"),
    ],
)
def test_engine_configuration_errors_name_the_field(tmp_path, engine, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"backends": [{"name": "a", "function": "detect", "cost": 1, "engine": engine}]}))
    with pytest.raises(ConfigError, match=r"bad\.yaml") as excinfo:
        load_catalog(path)
    assert message in str(excinfo.value)


def test_a_vllm_backend_leaves_its_gpus_to_the_llm_server():
    catalog = load_catalog(ROOT / "fmprog" / "configs" / "gpu.yaml")
    for spec in catalog.backends:
        gpus = deployment_options(spec)["ray_actor_options"]["num_gpus"]
        assert gpus == (0 if spec.engine.kind == "vllm" else spec.resources.num_gpus), spec.name


def test_the_serve_config_builds_every_application():
    """What `serve deploy` does with the generated config: import the builder, call it with args."""
    from ray.serve import Application

    from services.app import backend_app

    config = serve_config(load_catalog(ROOT / "fmprog" / "configs" / "synthetic.yaml"))
    for app in config["applications"]:
        assert isinstance(backend_app(app["args"]), Application), app["name"]


def test_serving_an_unknown_backend_is_refused_before_anything_starts():
    from services.cluster import ServeSettings, serve_backends

    settings = ServeSettings(config=ROOT / "fmprog" / "configs" / "synthetic.yaml", backends=["detect-small", "nope"])
    with pytest.raises(ValueError, match=r"unknown backends \['nope'\]"), serve_backends(settings):
        pass
