"""The in-process benchmark replay against the deployed system: queries of the binary track through
``fmprog up`` (Ray Serve backends, the policy service, the router, all over HTTP), answer by answer.

    python -m benchmarks.http_agreement [--queries 3] [--frames 200] [--out benchmarks/results/vqa/http_agreement.json]

For each query, three policies run both ways: static all-cheapest, static all-largest, and
``fast`` (lambda 0.001), each with the label sent back after every answer. Prices are the CPU
configuration's own (the router's), on both sides. Prints, per query and policy, the fraction of
frames with the same answer, the same backends invoked and the same cost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx

from benchmarks.provenance import provenance
from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.harness import ReplaySetup, load_backends
from benchmarks.vqa.http import agreement
from benchmarks.vqa.tracks import ImageResolver, load_binary
from launcher.process import StackProcess
from launcher.settings import StackSettings

VISION = ["detect-small", "detect-large", "vqa-small", "vqa-large"]
CONFIG = Path("fmprog/configs/synthetic.yaml")
LAMBDA = 1e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", type=Path, default=Path("benchmarks/tracks/test/binary.json"))
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vqa/http_agreement.json"))
    args = parser.parse_args()

    track = load_binary(args.track).subset(frames=args.frames)
    queries = track.queries[:: max(1, len(track.queries) // args.queries)][: args.queries]  # spread over the types
    images = ImageResolver()

    with tempfile.TemporaryDirectory() as state:
        backends = cached_registry(load_backends(CONFIG, None, functions={"detect", "vqa"}), OutputCache())
        setup = ReplaySetup(backends=backends, images=images, lambdas=(LAMBDA,))
        settings = StackSettings.on_free_ports(config=CONFIG, backends=VISION, state_dir=Path(state))
        report = []
        with StackProcess(settings), httpx.Client(base_url=settings.router_url, timeout=60) as client:
            for query in queries:
                for row in agreement(client, query, "binary", setup, LAMBDA):
                    print(json.dumps(row), flush=True)
                    report.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provenance": provenance(), "rows": report}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
