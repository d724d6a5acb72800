"""Every measured number in README.md and docs/*.md comes from a committed results file
(``benchmarks/figures.py`` has the rules), and the checker fails where one does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.figures import check, check_text

PROVENANCE = {
    "date": "2026-12-07T05:00:00+00:00",
    "commit": "abc1234",
    "machine": {"cpus": 2},
    "command": "python -m benchmarks.example",
}


def test_readme_and_docs_numbers_have_sources():
    problems = [str(p) for p in check()]
    assert not problems, "\n".join(problems)


# -- the rules, on small documents --------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    run = {"provenance": PROVENANCE, "p50_ms": 0.0613, "share": 0.4843, "answers_per_s": 50.72, "runs": 5000}
    (results / "run.json").write_text(json.dumps(run))
    (results / "old.json").write_text(json.dumps({"p50_ms": 12.5}))
    (results / "table.json").write_text(json.dumps({"provenance": PROVENANCE}))
    (results / "table.md").write_text("| backend | gain |\n|---|---|\n| detect-small | 2.50x |\n")
    return tmp_path


def _check(root: Path, text: str) -> list[str]:
    return [p.message for p in check_text(text, "doc.md", root)]


def test_numbers_found_in_their_sources_pass(root):
    text = (
        "<!-- numbers: benchmarks/results/run.json -->\n"
        "p50 0.061 ms over 5,000 runs; 48.4% reused; 50.7 answers/s; `--frames 200` in code.\n"
        "<!-- /numbers -->\n\n"
        "| backend | gain |\n|---|---|\n"
        "| detect-small | <!-- numbers: benchmarks/results/table.md -->2.50x<!-- /numbers --> |\n"
        "\n```sh\nrun it: 3.7 s\n```\n"
    )
    assert _check(root, text) == []


def test_a_number_absent_from_its_source_fails(root):
    text = "<!-- numbers: benchmarks/results/run.json -->\np50 0.071 ms.\n<!-- /numbers -->\n"
    assert _check(root, text) == ["'0.071 ms' is in none of benchmarks/results/run.json"]


def test_shown_precision_matters(root):
    text = "<!-- numbers: benchmarks/results/run.json -->\np50 0.0610 ms.\n<!-- /numbers -->\n"
    assert _check(root, text) == ["'0.0610 ms' is in none of benchmarks/results/run.json"]


def test_a_missing_source_fails(root):
    text = "<!-- numbers: benchmarks/results/gone.json -->\n0.061 ms\n<!-- /numbers -->\n"
    messages = _check(root, text)
    assert "benchmarks/results/gone.json does not exist" in messages


def test_a_source_without_provenance_fails(root):
    text = "<!-- numbers: benchmarks/results/old.json -->\np50 12.5 ms\n<!-- /numbers -->\n"
    assert _check(root, text) == ["benchmarks/results/old.json has no provenance (benchmarks/provenance.py)"]


def test_a_report_without_its_json_fails(root):
    (root / "benchmarks" / "results" / "alone.md").write_text("| 2.50x |\n")
    text = "<!-- numbers: benchmarks/results/alone.md -->2.50x<!-- /numbers -->\n"
    assert _check(root, text) == ["benchmarks/results/alone.md has no alone.json beside it to carry its provenance"]


def test_a_measured_number_outside_a_block_fails(root):
    messages = _check(root, "The router answers in 31 ms at concurrency 1.\n")
    assert len(messages) == 1 and messages[0].startswith("'31 ms' looks measured but stands outside a numbers block")


def test_units_that_mark_a_measurement(root):
    text = "1.6x faster, 3.2%, 4 µs, 2 minutes, 1,801 MB, 0.4 F1 points, 6.0 a second, 19-25 s.\n"
    flagged = [m.split("'")[1] for m in _check(root, text)]
    assert flagged == ["1.6x", "3.2%", "4 µs", "2 minutes", "1,801 MB", "0.4 F1 points", "6.0 a second", "19 s", "25 s"]


def test_a_unit_on_the_next_line_still_counts(root):
    assert [m.split("'")[1] for m in _check(root, "It took about 14\ns to start.\n")] == ["14 s"]


def test_numbers_without_a_unit_and_names_are_not_flagged(root):
    text = "Port 8080, 32 workers, YOLOv3-tiny, COCO-80, Qwen2.5-1.5B, 768x576 frames, Ray 2.60.1, p50.\n"
    assert _check(root, text) == []


def test_not_measured_exempts_what_it_lists_in_its_paragraph(root):
    text = (
        "<!-- not measured: 10 s, 1,536 MB (defaults) -->\n"
        "A run stops after 10 s; a worker may use 1,536 MB.\n"
        "It answered in 31 ms.\n\n"
        "Another paragraph: 10 s.\n"
    )
    messages = _check(root, text)
    assert [m.split("'")[1] for m in messages] == ["31 ms", "10 s"]


def test_not_measured_inside_a_line_covers_that_line_only(root):
    text = "| timeout | 10 s<!-- not measured: 10 s --> |\n| backoff | 10 s |\n"
    assert [m.split("'")[1] for m in _check(root, text)] == ["10 s"]


def test_a_stale_not_measured_entry_fails(root):
    messages = _check(root, "<!-- not measured: 15 s -->\nNothing here.\n")
    assert messages == ["'not measured: 15 s' names nothing in this paragraph"]


def test_a_target_in_a_block_is_exempt_only_when_listed(root):
    block = "<!-- numbers: benchmarks/results/run.json -->50.7 answers/s where 150 was aimed at<!-- /numbers -->"
    assert _check(root, block + "\n") == ["'150' is in none of benchmarks/results/run.json"]
    assert _check(root, block + "<!-- not measured: 150 -->\n") == []


def test_blocks_must_be_closed_and_not_nested(root):
    opened = "<!-- numbers: benchmarks/results/run.json -->\n0.061\n"
    assert "a numbers block is never closed (<!-- /numbers -->)" in _check(root, opened)
    nested = opened + "<!-- numbers: benchmarks/results/run.json -->\n<!-- /numbers -->\n"
    assert "a numbers block opens inside another (close it first)" in _check(root, nested)
    assert _check(root, "<!-- /numbers -->\n") == ["<!-- /numbers --> closes no block"]


def test_problems_name_their_line_and_section(root):
    text = "# Title\n\n## Numbers\n\n### Streams\n\nLag 0.38 s.\n"
    (problem,) = check_text(text, "doc.md", root)
    assert (problem.line, problem.section) == (7, "## Numbers > ### Streams")


# -- which pages are read -------------------------------------------------------------------------


def test_the_numbers_moved_to_docs_are_checked():
    """The benchmark's numbers live in docs/benchmarks.md now: that page is read, and it has blocks."""
    from benchmarks.figures import ROOT, documents

    read = [path.relative_to(ROOT).as_posix() for path in documents()]
    assert "README.md" in read and "docs/benchmarks.md" in read
    assert "<!-- numbers:" in (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")


def test_every_docs_page_is_read_but_the_generated_ones(root):
    (root / "README.md").write_text("Nothing measured here.\n")
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "page.md").write_text("It answered in 31 ms.\n")
    (root / "docs" / "deep" / "nested.md").write_text("Ready after 14 s.\n")
    generated = "<!-- generated by scripts/reference_docs.py: do not edit -->\n# Settings\n\nWait 10 s.\n"
    (root / "docs" / "settings.md").write_text(generated)
    problems = check(root=root)
    assert sorted((p.path, p.message.split("'")[1]) for p in problems) == [
        ("docs/deep/nested.md", "14 s"),
        ("docs/page.md", "31 ms"),
    ]
    assert [p.message for p in check([root / "docs" / "settings.md"], root=root)] == []
