"""The installed ``fmprog`` console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fmprog.backends import load_catalog

FMPROG = str(Path(sys.executable).parent / "fmprog")


def fmprog(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FMPROG, *args], capture_output=True, text=True, timeout=60, check=False)


def test_program_check_prints_call_sites(tmp_path):
    path = tmp_path / "bike.py"
    source = 'def execute_command(image):\n    p = ImagePatch(image)\n    return p.exists("bike") and p.query("Who?")\n'
    path.write_text(source)
    result = fmprog("program", "check", str(path))
    assert result.returncode == 0, result.stderr
    sites = json.loads(result.stdout)
    assert [(s["id"], s["function"], s["line"]) for s in sites] == [
        ("exists@3:13", "detect", 3),
        ("query@3:34", "vqa", 3),
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import os\ndef execute_command(image):\n    return 1\n", "line 1: import of 'os' is not allowed"),
        ("def execute_command(image):\n    return (\n", "line 2: syntax error"),
    ],
)
def test_program_check_rejects_with_exit_2(tmp_path, source, message):
    path = tmp_path / "bad.py"
    path.write_text(source)
    result = fmprog("program", "check", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert f"{path}: {message}" in result.stderr


def test_program_check_missing_file(tmp_path):
    result = fmprog("program", "check", str(tmp_path / "absent.py"))
    assert result.returncode == 2 and "cannot read" in result.stderr


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].glob("examples/programs/*.py")), ids=lambda p: p.name)
def test_example_programs_validate(path):
    result = fmprog("program", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)


def test_run_program_example():
    example = Path(__file__).parents[2] / "examples" / "run_program.py"
    result = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)
    assert trace["answer"] == "red" and trace["error"] is None
    assert trace["executed_sites"] == ["find@3:23", "query@7:19"] and trace["cost"] == 172 + 73400


def test_serve_config_prints_one_serve_application_per_backend():
    import yaml

    root = Path(__file__).resolve().parents[2]
    result = fmprog("serve-config", "--config", str(root / "deploy" / "config" / "gpu.yaml"), "--port", "8080")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8080}
    names = [app["name"] for app in config["applications"]]
    assert names == [spec.name for spec in load_catalog(root / "deploy" / "config" / "gpu.yaml").backends]
    assert {"detect-large", "vqa-large", "llm-large", "ocr-large"} <= set(names)
    assert {app["import_path"] for app in config["applications"]} == {"services.app:backend_app"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "detect-small,nope"], "error: unknown backends ['nope']"),
        (["--host", "0.0.0.0"], "error: router settings: refusing to listen on 0.0.0.0 without an api_key"),
        (["--router-port", "0"], "error: router_port: Input should be greater than or equal to 1"),
        (["--router-port", "9100", "--serve-port", "9100"], "error: the router and serve ports are both 9100"),
    ],
)
def test_up_refuses_bad_settings_before_starting_anything(args, message):
    result = fmprog("up", "--config", str(Path(__file__).parents[2] / "deploy" / "config" / "cpu.yaml"), *args)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr


def test_up_refuses_a_port_in_use(tmp_path):
    import socket

    from services.cluster import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = ["--router-port", str(free_port()), "--policy-port", str(port), "--serve-port", str(free_port())]
        config = str(Path(__file__).parents[2] / "deploy" / "config" / "cpu.yaml")
        result = fmprog("up", "--config", config, *ports, "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert f"error: port {port} (policy) on 127.0.0.1 is already in use; choose another with --policy-port" in (
        result.stderr
    )
    assert not (tmp_path / "state").exists()  # nothing started, nothing written
