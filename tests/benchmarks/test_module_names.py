"""The benchmark scripts are also run as files (``python benchmarks/camera.py``, as the stream tests
start their cameras), which puts ``benchmarks/`` first on ``sys.path``: a module there named like a
standard-library one (``numbers.py``) would replace it for everything the script imports."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_no_benchmark_module_shadows_the_standard_library():
    names = {path.stem for path in BENCHMARKS.glob("*.py")} | {p.name for p in BENCHMARKS.iterdir() if p.is_dir()}
    assert "camera" in names  # the folder read is the right one
    assert not names & set(sys.stdlib_module_names), sorted(names & set(sys.stdlib_module_names))
