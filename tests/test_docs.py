"""The documentation holds together: the generated reference pages are what the code generates,
every link in the README and docs/ resolves (files and headings), the README stays short, the docs
index lists every page, and every setting has a description for docs/settings.md to show."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

from benchmarks.figures import without_code
from tests.deploy.manifests import load_script

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_LINES = 300
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")


@pytest.fixture(scope="module")
def reference_docs() -> ModuleType:
    return load_script("reference_docs")


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


# -- the generated pages ---------------------------------------------------------------------------


def test_generated_pages_are_up_to_date(reference_docs):
    stale = reference_docs.stale(reference_docs.rendered())
    assert not stale, (
        f"out of date: {[str(p) for p in stale]}; regenerate them with `make docs` "
        "(.venv/bin/python scripts/reference_docs.py) and commit the result"
    )


def test_generation_ignores_the_environment(reference_docs, monkeypatch):
    """The pages come from the classes and the apps, not from settings in the environment."""
    first = reference_docs.rendered()
    monkeypatch.setenv("FMPROG_ROUTER_FALLBACK", "largest")
    monkeypatch.setenv("FMPROG_ROUTER_API_KEY", "an-api-key-of-the-environment")
    monkeypatch.setenv("FMPROG_POLICY_PORT", "9999")
    assert reference_docs.rendered() == first


def test_the_pages_cover_every_route_and_setting(reference_docs):
    from launcher.settings import StackSettings
    from policy.settings import PolicySettings
    from router.settings import RouterSettings

    api = reference_docs.render_api(documents := reference_docs.openapi_documents())
    for document in documents.values():
        for path, methods in document["paths"].items():
            for method in methods:
                assert f"#### `{method.upper()} {path}`" in api
    settings = reference_docs.render_settings()
    for cls in (RouterSettings, PolicySettings):
        prefix = cls.model_config["env_prefix"]
        for name in cls.model_fields:
            assert f"| `{prefix}{name.upper()}` |" in settings
    for field in StackSettings.model_fields.values():
        assert f"| {reference_docs.cell(field.description)} |" in settings


@pytest.mark.parametrize("path", ["router.settings:RouterSettings", "policy.settings:PolicySettings"])
def test_every_service_setting_has_a_description(path):
    module, name = path.split(":")
    cls = getattr(importlib.import_module(module), name)
    missing = [field for field, info in cls.model_fields.items() if not (info.description or "").strip()]
    assert not missing, f"{path}: fields without a description (docs/settings.md shows it): {missing}"


def test_every_fmprog_up_setting_has_a_description():
    from launcher.settings import StackSettings

    missing = [field for field, info in StackSettings.model_fields.items() if not (info.description or "").strip()]
    assert not missing, f"launcher.settings:StackSettings: fields without a description: {missing}"


# -- links -----------------------------------------------------------------------------------------


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (repeated titles numbered)."""
    slug = load_script("reference_docs").slug
    found: set[str] = set()
    seen: dict[str, int] = {}
    clean = without_code(text).split("\n")
    for line, cleaned in zip(text.split("\n"), clean, strict=True):
        match = HEADING.match(line)
        if match and cleaned.strip().startswith("#"):
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """Each link of a page (outside code) whose file or heading does not exist, as ``target: why``."""
    text = page.read_text(encoding="utf-8")
    problems = []
    for match in LINK.finditer(without_code(text)):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{target}: {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved} "
                            "does not exist")  # fmt: skip
            continue
        if fragment and resolved.suffix == ".md" and fragment not in anchors(resolved.read_text(encoding="utf-8")):
            problems.append(f"{target}: {resolved.relative_to(ROOT)} has no heading #{fragment}")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    problems = broken_links(page)
    assert not problems, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(problems)


def test_the_link_check_finds_a_broken_file_and_a_broken_heading(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Other\n\n## The real-image configuration (`real.yaml`, the default)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Twice\n\n## Twice\n\n"
        "[ok](other.md#the-real-image-configuration-realyaml-the-default) [ok](#twice-1) [ok](other.md)\n"
        "[gone](missing.md) [no heading](other.md#nowhere) [no heading here](#twice-2)\n"
        "`[in code](missing.md)` [web](https://example.com/x)\n"
    )
    assert broken_links(page) == [
        "missing.md: missing.md does not exist",
        "other.md#nowhere: other.md has no heading #nowhere",
        "#twice-2: page.md has no heading #twice-2",
    ]


# -- the README and the docs index -----------------------------------------------------------------


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_LINES, f"README.md has {lines} lines; keep it to {README_LINES} and move the rest to docs/"


def test_the_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = {(DOCS / m.group(1).partition("#")[0]).resolve() for m in LINK.finditer(index)}
    missing = [
        str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md") if p.name != "README.md" and p.resolve() not in linked
    ]
    assert not missing, f"docs/README.md does not list: {missing}"


def test_the_readme_links_the_docs_index():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/README.md)" in readme
