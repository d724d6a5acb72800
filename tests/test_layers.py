"""The layers import one way: the program runtime at the bottom, the services (backends, router,
policy) above it, the launcher and the benchmarks on top; no import cycles anywhere.

Read from the source (every ``import`` statement, deferred ones included), not from what happens to
be loaded, so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fmprog", "services", "router", "policy", "launcher", "benchmarks")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of the project's own modules (``from a.b import c`` names ``a.b.c``
    when that is a module, else ``a.b``)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.split(".")[0] not in PACKAGES:
                    continue
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = found - {name}
    return graph


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _imports(_modules())


def _top(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def test_the_graph_sees_known_imports(graph):
    assert "fmprog.program.compiler" in graph["fmprog.program.executor"]
    assert any(_top(m) == "router" for m in graph["launcher.settings"])


# Which top-level packages each may import (besides itself).
ALLOWED = {
    "fmprog": set(),
    "services": {"fmprog"},
    "policy": {"fmprog"},
    "router": {"fmprog", "services"},
    "launcher": {"fmprog", "services", "router", "policy"},  # bench: an entry point, not an import
    "benchmarks": {"fmprog", "services", "router", "policy", "launcher"},
}


def test_layers_import_one_way(graph):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if _top(target) != _top(module) and _top(target) not in ALLOWED[_top(module)]
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components; any component of two or more modules is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_what_real_image_backends_see_stands_alone(graph):
    """``fmprog.vision`` (vocabularies, question forms, colours) is read by the configuration, the
    engines and the program runtime alike, so it imports nothing of the project but itself."""
    outside = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.startswith("fmprog.vision")
        for target in targets
        if not target.startswith("fmprog.vision")
    )
    assert not outside, "\n".join(outside)
    assert any(t.startswith("fmprog.vision") for t in graph["fmprog.program.executor"])  # the rule has a subject
