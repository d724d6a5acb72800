"""Benchmark the scene generator: ``python -m fmprog.scene [--frames N] [--size S]``.

Prints frames per second on one core for each difficulty and for the default mix."""

from __future__ import annotations

import argparse
import time

from fmprog.scene.generator import DEFAULT_FRAME_SIZE, DIFFICULTIES, generate_scene, scene_stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=DEFAULT_FRAME_SIZE)
    args = parser.parse_args(argv)
    for difficulty in DIFFICULTIES:
        generate_scene(0, difficulty, args.size)  # fill the template caches
        start = time.perf_counter()
        for seed in range(args.frames):
            generate_scene(seed, difficulty, args.size)
        print(f"{difficulty:>6}: {args.frames / (time.perf_counter() - start):8.0f} frames/s")
    start = time.perf_counter()
    for _ in scene_stream(0, args.frames, size=args.size):
        pass
    print(f"{'mix':>6}: {args.frames / (time.perf_counter() - start):8.0f} frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
