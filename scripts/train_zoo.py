"""Train the default model zoo (detect-small, detect-large, vqa-small, vqa-large) and write its
weights and manifest.

The detect and VQA models of one size share a perception network, so two networks are trained
(perception-small, perception-large). Every network is trained from scratch with a fixed seed on
scenes generated on the fly, then evaluated on held-out seeds by difficulty (``fmprog.zoo.evaluate``). Weights go to
``fmprog/zoo/weights/<network>.pt`` and the facts about each run to ``manifest.json`` beside them
(entries of models not retrained this time are kept).

    .venv/bin/python scripts/train_zoo.py                      # all four, CUDA if available
    .venv/bin/python scripts/train_zoo.py detect-small --steps 300
    .venv/bin/python scripts/train_zoo.py --quick --out-dir /tmp/zoo   # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmprog.zoo.catalog import NETWORKS, ZOO
from fmprog.zoo.models import WEIGHTS_DIR
from fmprog.zoo.training import train_zoo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help="models to train (default: all)")
    parser.add_argument(
        "--steps", type=int, help=f"training steps per network (default: { {n: s.steps for n, s in NETWORKS.items()} })"
    )
    parser.add_argument("--quick", action="store_true", help="a few steps and a tiny evaluation (smoke test)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-frames", type=int, help="held-out items per difficulty (default 300; 12 with --quick)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the existing weights without training")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR, help="where weights and manifest.json go")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(ZOO))
    if unknown:
        parser.error(f"unknown zoo models {unknown} (known: {', '.join(ZOO)})")

    steps = args.steps if args.steps is not None else (5 if args.quick else None)
    eval_frames = args.eval_frames if args.eval_frames is not None else (12 if args.quick else 300)
    train_zoo(
        names=args.models or list(ZOO),
        out_dir=args.out_dir,
        steps=steps,
        device=args.device,
        threads=args.threads,
        batch_size=args.batch_size,
        eval_frames=eval_frames,
        eval_only=args.eval_only,
        log=print,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
