"""The benchmark's in-process replay and the deployed system (``fmprog up``: Ray Serve backends,
the policy service and the router over HTTP) agree frame by frame on a binary query: the same
answers, the same backends invoked, the same costs, for static programs and for ``fast``."""

from __future__ import annotations

from pathlib import Path

import httpx

from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.harness import ReplaySetup, load_backends
from benchmarks.vqa.http import agreement
from benchmarks.vqa.queries import binary_queries
from benchmarks.vqa.tracks import ImageResolver, build_streams
from launcher.process import StackProcess
from launcher.settings import StackSettings

CPU = Path(__file__).resolve().parents[2] / "fmprog" / "configs" / "synthetic.yaml"
VISION = ["detect-small", "detect-large", "vqa-small", "vqa-large"]


def test_in_process_replay_and_http_services_agree(tmp_path):
    query = build_streams([binary_queries()[0]], binary_frames=40, binary_positives=4)[0]
    setup = ReplaySetup(
        backends=cached_registry(load_backends(CPU, None, functions={"detect", "vqa"}), OutputCache()),
        images=ImageResolver(),
        lambdas=(),
    )
    settings = StackSettings.on_free_ports(config=CPU, backends=VISION, state_dir=tmp_path / "stack")
    with StackProcess(settings), httpx.Client(base_url=settings.router_url, timeout=60) as client:
        rows = agreement(client, query, "binary", setup, 1e-3)
    assert [r["policy"] for r in rows] == ["static all-cheapest", "static all-largest", "fast lambda 0.001"]
    for row in rows:
        assert row["frames"] == 40 and row["fallbacks"] == 0, row
        assert row["same_answer"] == row["same_backends"] == row["same_cost"] == 1.0, row
