"""The backend configurations as package data, named on any command line and in the services'
settings: ``fmprog`` run from a folder that is not the checkout, names and paths resolved the same
everywhere, an unknown name refused with the names there are, and help texts in plain words."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fmprog.backends.config import (
    DEFAULT_CONFIG,
    ConfigError,
    config_directory,
    config_names,
    is_config_name,
    load_catalog,
    resolve_config,
)

FMPROG = str(Path(sys.executable).parent / "fmprog")
ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ROOT / "fmprog" / "configs"
TRIANGLE = ROOT / "examples" / "programs" / "triangle_left_of_circle.py"


def fmprog_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FMPROG, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


# -- resolution ---------------------------------------------------------------------------------


def test_the_packaged_configurations_are_the_files_in_the_package():
    assert config_directory() == PACKAGED
    assert {"real", "synthetic", "gpu"} <= set(config_names())
    assert config_names() == sorted(path.stem for path in PACKAGED.glob("*.yaml"))
    assert DEFAULT_CONFIG == "real"  # the default is what it was: the real-image configuration
    for name in config_names():
        assert resolve_config(name) == PACKAGED / f"{name}.yaml"
        assert load_catalog(name) == load_catalog(PACKAGED / f"{name}.yaml")
    # the synthesizer's engine file ships beside them
    assert json.loads((config_directory() / "synthesizer-qwen1.5b.json").read_text())["kind"] == "llama_cpp"


def test_the_configurations_are_package_data():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fmprog"]
    assert {"configs/*.yaml", "configs/*.json"} <= set(data)
    assert sorted(PACKAGED.iterdir()) == sorted([*PACKAGED.glob("*.yaml"), *PACKAGED.glob("*.json")])


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("real", True),
        ("gpu", True),
        ("my_config-2", True),
        ("real.yaml", False),
        ("./real", False),
        ("configs/real.yaml", False),
        ("/etc/real", False),
        (Path("synthetic"), True),
    ],
)
def test_a_bare_word_is_a_name_anything_else_a_path(value, name):
    assert is_config_name(value) is name
    if not name:
        assert resolve_config(value) == Path(value)


def test_a_name_wins_over_a_file_of_that_name_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic").write_text("not: a configuration\n")
    assert resolve_config("synthetic") == PACKAGED / "synthetic.yaml"
    with pytest.raises(ConfigError, match="invalid backend configuration"):
        load_catalog("./synthetic")


def test_an_unknown_name_is_refused_with_the_names_there_are():
    with pytest.raises(ConfigError) as refused:
        load_catalog("cpu")
    message = str(refused.value)
    assert message.startswith("unknown backend configuration 'cpu': give one of ")
    assert all(name in message for name in config_names()) and "path of a YAML file" in message


def test_a_missing_file_says_how_to_name_a_packaged_configuration(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_catalog(tmp_path / "real.yaml")
    assert "cannot read backend configuration" in str(refused.value)
    assert f"given by its name alone: {', '.join(config_names())}" in str(refused.value)


# -- the services' settings ---------------------------------------------------------------------


def test_router_settings_take_a_name_from_any_folder(tmp_path, monkeypatch):
    from router.settings import RouterSettings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FMPROG_ROUTER_BACKENDS_CONFIG", "synthetic")
    monkeypatch.delenv("FMPROG_ROUTER_BACKENDS", raising=False)
    assert RouterSettings().load_catalog() == load_catalog(PACKAGED / "synthetic.yaml")
    monkeypatch.delenv("FMPROG_ROUTER_BACKENDS_CONFIG")
    assert RouterSettings().load_catalog() == load_catalog(PACKAGED / "real.yaml")  # the default
    monkeypatch.setenv("FMPROG_ROUTER_BACKENDS_CONFIG", "nope")
    with pytest.raises(ConfigError, match="unknown backend configuration 'nope'"):
        RouterSettings().load_catalog()


def test_stack_settings_pass_a_name_on_and_make_a_path_absolute(tmp_path, monkeypatch):
    from launcher.settings import StackSettings

    monkeypatch.chdir(tmp_path)
    named = StackSettings(config="synthetic", state_dir=tmp_path)
    assert named.router_settings().backends_config == Path("synthetic")
    assert [s.name for s in named.catalog().backends] == [s.name for s in load_catalog("synthetic").backends]
    shutil.copy(PACKAGED / "synthetic.yaml", tmp_path / "mine.yaml")
    pathed = StackSettings(config="mine.yaml", state_dir=tmp_path)
    assert pathed.router_settings().backends_config == tmp_path / "mine.yaml"
    assert StackSettings(state_dir=tmp_path).config == Path(DEFAULT_CONFIG)


def test_up_refuses_an_unknown_name_before_starting_anything(tmp_path):
    result = fmprog_in(tmp_path, "up", "--config", "cpu", "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2 and result.stdout == ""
    assert f"error: unknown backend configuration 'cpu': give one of {', '.join(config_names())}" in result.stderr
    assert not (tmp_path / "state").exists()


# -- fmprog away from the checkout -------------------------------------------------------------


@pytest.mark.parametrize("config", ["synthetic", "real", "gpu", "copied", "absolute"])
def test_backends_from_another_folder(tmp_path, config):
    expected = config
    if config == "copied":
        shutil.copy(PACKAGED / "synthetic.yaml", tmp_path / "mine.yaml")
        config, expected = "mine.yaml", "synthetic"
    elif config == "absolute":
        config, expected = str(PACKAGED / "gpu.yaml"), "gpu"
    result = fmprog_in(tmp_path, "backends", "--config", config, "--json")
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == [s.name for s in load_catalog(expected).backends]


def test_backends_default_from_another_folder_is_the_real_configuration(tmp_path):
    result = fmprog_in(tmp_path, "backends", "--json")
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == [s.name for s in load_catalog("real").backends]


def test_an_unknown_name_on_the_command_line_is_exit_2_with_the_names(tmp_path):
    for command in (["backends"], ["serve-config"], ["serve"]):
        result = fmprog_in(tmp_path, *command, "--config", "cpu")
        assert result.returncode == 2 and result.stdout == "", command
        assert result.stderr.strip() == (
            f"error: unknown backend configuration 'cpu': give one of {', '.join(config_names())}, "
            "or the path of a YAML file"
        )


def test_serve_config_defaults_to_the_gpu_configuration_from_another_folder(tmp_path):
    import yaml

    result = fmprog_in(tmp_path, "serve-config")
    assert result.returncode == 0, result.stderr
    names = [app["name"] for app in yaml.safe_load(result.stdout)["applications"]]
    assert names == [spec.name for spec in load_catalog("gpu").backends]


def test_program_run_from_another_folder_by_name(tmp_path):
    from fmprog.images import encode_png
    from fmprog.scene import scene_stream

    scene = next(s for s in scene_stream(3, 50) if {"triangle", "circle"} <= {o.shape for o in s.objects})
    (tmp_path / "scene.png").write_bytes(encode_png(scene.image))
    result = fmprog_in(
        tmp_path, "program", "run", "--config", "synthetic", str(TRIANGLE), "--image", "scene.png", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the report alone; what it is doing went to stderr
    assert report["answer"] in {"yes", "no"} and report["error"] is None
    assert "loading 2 backends here: detect-small, vqa-small ..." in result.stderr
    assert "running the program ..." in result.stderr


# -- help ----------------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, path: str = "fmprog"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_help_text_is_plain_and_every_command_says_what_it_does():
    from launcher.cli import build_parser

    for path, parser in _parsers(build_parser()):
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, path
        assert "`" not in text, (path, [line for line in text.splitlines() if "`" in line])
        if path != "fmprog":
            assert parser.description, f"{path} has no description"


def test_help_of_config_options_names_the_packaged_configurations(tmp_path):
    for command in (["up"], ["backends"], ["program", "run"], ["program", "synth"], ["program", "check"]):
        result = fmprog_in(tmp_path, *command, "--help")
        assert result.returncode == 0, command
        text = " ".join(result.stdout.split())
        assert f"({', '.join(config_names())}) or the path of a YAML file" in text, command


def test_synth_module_description(capsys):
    from launcher import program_synth as synthesis_cli

    with pytest.raises(SystemExit):
        synthesis_cli.main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "`" not in out
    assert "Synthesise a program for a task in words and print it." in out
