"""The installed ``fmprog`` console script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fmprog.backends import Function, load_catalog

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
        ('def execute_command(image):\n    return "yes"\n', "the program makes no routed call (one of "),
    ],
)
def test_program_check_rejects_with_exit_2(tmp_path, source, message):
    path = tmp_path / "bad.py"
    path.write_text(source)
    result = fmprog("program", "check", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert f"{path}: {message}" in result.stderr


def test_version_and_plain_help():
    version = fmprog("--version")
    assert version.returncode == 0 and re.fullmatch(r"fmprog \d+\.\d+\.\d+\S*\n", version.stdout)
    shown = fmprog("--help")
    assert shown.returncode == 0 and "--version" in shown.stdout and "``" not in shown.stdout


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
    result = fmprog("serve-config", "--config", str(root / "fmprog" / "configs" / "gpu.yaml"), "--port", "8080")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8080}
    names = [app["name"] for app in config["applications"]]
    assert names == [spec.name for spec in load_catalog(root / "fmprog" / "configs" / "gpu.yaml").backends]
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
    result = fmprog("up", "--config", str(Path(__file__).parents[2] / "fmprog" / "configs" / "synthetic.yaml"), *args)
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
        config = str(Path(__file__).parents[2] / "fmprog" / "configs" / "synthetic.yaml")
        result = fmprog("up", "--config", config, *ports, "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert f"error: port {port} (policy) on 127.0.0.1 is already in use; choose another with --policy-port" in (
        result.stderr
    )
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


ROOT = Path(__file__).resolve().parents[2]
TRIANGLE = ROOT / "examples" / "programs" / "triangle_left_of_circle.py"
ZOO = ("--config", str(ROOT / "fmprog" / "configs" / "synthetic.yaml"))  # the scene programs' backends


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory) -> Path:
    """A generated scene with a triangle and a circle in it, as a PNG file."""
    from fmprog.images import encode_png
    from fmprog.scene import scene_stream

    scene = next(s for s in scene_stream(3, 50) if {"triangle", "circle"} <= {o.shape for o in s.objects})
    path = tmp_path_factory.mktemp("frames") / "scene.png"
    path.write_bytes(encode_png(scene.image))
    return path


def test_program_run_prints_the_answer_and_every_call(scene_png):
    result = fmprog("program", "run", *ZOO, str(TRIANGLE), "--image", str(scene_png), "--kind", "binary")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    answer = next(line for line in lines if line.startswith("answer"))
    assert '"yes"' in answer or '"no"' in answer
    assert "reads as" in answer
    # the cheapest backend of each function by default, and a row per call
    assert "find@3:28 -> detect-small" in result.stdout and "simple_query@6:20 -> vqa-small" in result.stdout
    assert any(line.split()[1:4] == ["find@3:28", "detect", "detect-small"] for line in lines if line[:3].strip())


def test_program_run_as_json_with_chosen_backends(scene_png):
    catalog = {spec.name: spec.cost for spec in load_catalog(ROOT / "fmprog" / "configs" / "synthetic.yaml").backends}
    chosen = "detect=detect-large,simple_query@6:20=vqa-large"
    result = fmprog("program", "run", *ZOO, str(TRIANGLE), "--image", str(scene_png), "--backends", chosen, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["decision"] == {
        "find@3:28": "detect-large",
        "find@4:26": "detect-large",
        "simple_query@6:20": "vqa-large",
    }
    assert report["error"] is None and report["answer"] in {"yes", "no"}
    calls = report["calls"]
    assert calls and [c["site"] for c in calls[:2]] == ["find@3:28", "find@4:26"]
    assert all(c["ok"] and c["cost"] == catalog[c["backend"]] and c["latency_s"] >= 0 for c in calls)
    assert report["cost"] == pytest.approx(sum(c["cost"] for c in calls))
    assert re.match(r"\d+ box(es)?\b", calls[0]["output"])  # what the detector returned


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing program", "cannot read"),
        ("not an image", "is not a PNG or JPEG file"),
        ("rejected program", "line 1: import of 'os' is not allowed"),
        ("unknown backend", "unknown backend 'vqa-huge'"),
        ("wrong function", "'vqa-large' is a vqa backend, 'detect' needs detect"),
    ],
)
def test_program_run_errors_exit_2(tmp_path, scene_png, case, message):
    program, image, extra = str(TRIANGLE), str(scene_png), []
    if case == "missing program":
        program = str(tmp_path / "absent.py")
    elif case == "not an image":
        image = str(TRIANGLE)
    elif case == "rejected program":
        program = str(tmp_path / "bad.py")
        Path(program).write_text("import os\ndef execute_command(image):\n    return 1\n")
    elif case == "unknown backend":
        extra = ["--backends", "vqa=vqa-huge"]
    else:
        extra = ["--backends", "detect=vqa-large"]
    result = fmprog("program", "run", *ZOO, program, "--image", image, *extra)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr


def test_program_run_of_a_program_that_fails_prints_the_error_and_exits_1(tmp_path, scene_png):
    program = tmp_path / "fails.py"
    program.write_text('def execute_command(image):\n    n = len(ImagePatch(image).find("circle"))\n    return n / 0\n')
    result = fmprog("program", "run", *ZOO, str(program), "--image", str(scene_png), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["error"]["kind"] == "runtime_error" and report["error"]["line"] == 3
    assert [(c["site"], c["backend"]) for c in report["calls"]] == [("find@2:30", "detect-small")]


REAL = ROOT / "fmprog" / "configs" / "real.yaml"
SYNTHETIC = ROOT / "fmprog" / "configs" / "synthetic.yaml"
UNSEEN = """def execute_command(image):
    p = ImagePatch(image)
    people = p.find("person")
    octopi = p.find("octopus")
    return len(people) + len(octopi)
"""


def test_backends_as_json_lists_every_backend_with_its_vocabulary():
    from fmprog.vision.classes import COCO_CLASSES, imagenet_names

    result = fmprog("backends", "--config", str(REAL), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    catalog = load_catalog(REAL)
    assert [(r["name"], r["function"], r["cost"], r["engine"]) for r in rows] == [
        (spec.name, spec.function.value, spec.cost, spec.engine.kind) for spec in catalog.backends
    ]
    sizes = {(r["engine"], r["vocabulary"] and r["vocabulary"]["size"]) for r in rows}
    coco_and_imagenet = len(set(COCO_CLASSES) | {name.lower() for name in imagenet_names()})
    # YOLO sees the 80 COCO classes, the classifiers COCO and ImageNet; LLMs and OCR declare none
    assert sizes == {
        ("darknet", 80),
        ("classifier", coco_and_imagenet),
        ("llama_cpp", None),
        ("tesseract", None),
        ("rapidocr", None),
    }
    vqa = next(r for r in rows if r["engine"] == "classifier")["vocabulary"]
    assert vqa["nouns"] == "coco+imagenet"
    assert vqa["questions"] == ["what", "color", "is_a", "property", "choice", "exists", "count"]


def test_backends_as_a_table_prints_a_line_per_backend():
    result = fmprog("backends", "--config", str(REAL))
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split()[:5] == ["name", "function", "engine", "cost", "vocabulary"]
    assert [line.split()[0] for line in lines] == [spec.name for spec in load_catalog(REAL).backends]
    rows = {spec.engine.kind: line for spec, line in zip(load_catalog(REAL).backends, lines, strict=True)}
    assert "80 classes (coco)" in rows["darknet"]
    assert "7 question forms" in rows["classifier"] and "(not declared)" in rows["llama_cpp"]


def test_backends_of_a_missing_configuration_exit_2(tmp_path):
    result = fmprog("backends", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and result.stdout == ""
    assert "error: " in result.stderr and "cannot read backend configuration" in result.stderr


def test_program_check_warns_about_a_site_no_backend_can_see(tmp_path):
    path = tmp_path / "octopus.py"
    path.write_text(UNSEEN)
    result = fmprog("program", "check", str(path), "--config", str(REAL))
    assert result.returncode == 0, result.stderr
    assert [site["id"] for site in json.loads(result.stdout)] == ["find@3:15", "find@4:15"]
    detectors = load_catalog(REAL).for_function(Function.detect)
    coco = [spec.name for spec in detectors if spec.vocabulary.nouns == "coco"]
    assert coco == [spec.name for spec in detectors]
    [warning] = result.stderr.splitlines()
    assert (
        warning
        == f"{path}: warning: line 4: find@4:15: 'octopus' names none of the 80 COCO classes ({', '.join(coco)})"
    )


def test_program_check_against_a_configuration_without_vocabularies_warns_about_nothing(tmp_path):
    path = tmp_path / "octopus.py"
    path.write_text(UNSEEN)
    result = fmprog("program", "check", str(path), "--config", str(SYNTHETIC))
    assert result.returncode == 0, result.stderr
    assert [site["id"] for site in json.loads(result.stdout)] == ["find@3:15", "find@4:15"]
    assert result.stderr == ""


def test_program_check_away_from_the_repository_checks_against_the_default_configuration(tmp_path):
    path = tmp_path / "octopus.py"
    path.write_text(UNSEEN)
    result = subprocess.run(
        [FMPROG, "program", "check", str(path)], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert [site["id"] for site in json.loads(result.stdout)] == ["find@3:15", "find@4:15"]
    [warning] = result.stderr.splitlines()  # the packaged real configuration's detectors see COCO's classes
    assert warning.startswith(f"{path}: warning: line 4: find@4:15: 'octopus' names none of the 80 COCO classes")


def test_bench_is_a_subcommand_the_benchmark_package_adds():
    """``fmprog bench`` comes from the ``fmprog.commands`` entry point of the installed package:
    the launcher finds it without importing the benchmark (the layer test holds it to that)."""
    from importlib.metadata import entry_points

    from launcher.cli import build_parser

    [entry] = [e for e in entry_points(group="fmprog.commands") if e.name == "bench"]
    assert entry.value == "benchmarks.vqa.cli:add_command"
    args = build_parser().parse_args(["bench", "--quick", "--split", "validation"])
    assert args.handler.__module__ == "benchmarks.vqa.cli" and args.quick and args.split == "validation"
