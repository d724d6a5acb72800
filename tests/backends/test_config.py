"""Backend configuration is typed and validated when loaded."""

from __future__ import annotations

import pytest

from fmprog.backends import BackendRegistry, BackendSpec, ConfigError, Function, load_catalog
from tests.fakes import FakeDetector, FakeVQA

VALID = """
backends:
  - {name: detect-small, function: detect, cost: 172}
  - {name: vqa-large, function: vqa, cost: 73400, description: Qwen2.5-VL-72B}
"""


def test_load_valid_catalog(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(VALID)
    catalog = load_catalog(path)
    assert [(b.name, b.function, b.cost) for b in catalog.backends] == [
        ("detect-small", Function.detect, 172.0),
        ("vqa-large", Function.vqa, 73400.0),
    ]
    assert catalog.get("vqa-large").description == "Qwen2.5-VL-72B"
    assert [b.name for b in catalog.for_function(Function.detect)] == ["detect-small"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backends:\n  - {name: a, function: detect, cost: -1}", "backends.0.cost: Input should be greater than 0"),
        ("backends:\n  - {name: a, function: detect, cost: .nan}", "backends.0.cost"),
        ("backends:\n  - {name: a, function: depth, cost: 1}", "backends.0.function"),
        ("backends:\n  - {name: a, function: vqa}", "backends.0.cost: Field required"),
        ("backends:\n  - {name: a, function: vqa, cost: 1, gpus: 2}", "backends.0.gpus: Extra inputs"),
        ("backends:\n  - {name: Big Model, function: vqa, cost: 1}", "backends.0.name"),
        ("backends:\n  - {name: a, function: vqa, cost: 1}\n  - {name: a, function: llm, cost: 2}", "used twice"),
        ("backends: []", "at least 1 item"),
        ("backends: [", "cannot read"),
    ],
)
def test_invalid_catalogs_name_the_problem(tmp_path, text, message):
    path = tmp_path / "backends.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"backends\.yaml") as excinfo:
        load_catalog(path)
    assert message in str(excinfo.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml")


def test_registry_checks_models_serve_their_function():
    specs = [BackendSpec(name="d", function=Function.detect, cost=1)]
    with pytest.raises(TypeError, match="serves detect but its model FakeVQA has no detect"):
        BackendRegistry.from_specs(specs, {"d": FakeVQA()})
    with pytest.raises(ValueError, match=r"missing \['d'\], unknown \['e'\]"):
        BackendRegistry.from_specs(specs, {"e": FakeDetector()})
    registry = BackendRegistry.from_specs(specs, {"d": FakeDetector()})
    assert registry["d"].cost == 1 and [b.name for b in registry.for_function(Function.detect)] == ["d"]
