"""Serve the default backends on localhost and run one program over a stream of frames.

Starts Ray Serve with every backend of deploy/config/cpu.yaml, then answers "is there a red
triangle left of a blue circle?" on generated scene frames four ways: the program with all-small
backends, with all-large backends, with a mixed configuration, and the monolithic baseline
(vqa-large on the whole frame with the whole question). It prints accuracy and cost per frame of
each, plus one llm call per LLM backend.

What it does not do yet: choose the configuration per frame and learn it from feedback. That is
the policy service (issue 4).

    python examples/serve_demo.py [--frames 60]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fmprog.backends import BackendRegistry
from fmprog.program import Executor, compile_program
from fmprog.scene import Scene, scene_stream
from services.client import HttpBackend
from services.cluster import ServeSettings, free_port, serve_backends

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Is there a red triangle left of a blue circle?"


def truth(scene: Scene) -> str:
    reds = [o for o in scene.objects if o.color == "red" and o.shape == "triangle"]
    blues = [o for o in scene.objects if o.color == "blue" and o.shape == "circle"]
    return "yes" if any(r.center[0] < b.center[0] for r in reds for b in blues) else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--config", default=str(ROOT / "deploy" / "config" / "cpu.yaml"))
    args = parser.parse_args()

    port = free_port()
    started = time.perf_counter()
    with serve_backends(ServeSettings(config=args.config, port=port)) as cluster:
        startup_s = time.perf_counter() - started
        print(f"\n{len(cluster.handles)} backends serving at {cluster.base_url} after {startup_s:.0f} s")
        clients = {spec.name: HttpBackend(spec, cluster.base_url) for spec in cluster.catalog.backends}
        for name, client in clients.items():
            spec = client.spec
            print(f"  {name:<13} {spec.function.value:<6} cost {spec.cost:>8g}  {cluster.base_url}/{name}")
        registry = BackendRegistry.from_specs(
            list(cluster.catalog.backends), {name: c.model() for name, c in clients.items()}
        )
        program = compile_program((ROOT / "examples" / "programs" / "red_left_of_blue.py").read_text())
        print(f"\nprogram call sites: {[site.id for site in program.call_sites]}")
        configurations = {
            "program, all small": {s.id: f"{s.function.value}-small" for s in program.call_sites},
            "program, detect small + vqa large": {
                s.id: "detect-small" if s.function.value == "detect" else "vqa-large" for s in program.call_sites
            },
            "program, all large": {s.id: f"{s.function.value}-large" for s in program.call_sites},
        }
        executor = Executor(registry)
        scenes = list(scene_stream(seed=7, count=args.frames, mix={"easy": 0.3, "medium": 0.4, "hard": 0.3}))
        answers = [truth(s) for s in scenes]
        print(f"\n{len(scenes)} frames, {answers.count('yes')} with a red triangle left of a blue circle\n")
        print(f"{'configuration':<36} {'accuracy':>8} {'cost/frame':>11} {'ms/frame':>9}")
        for label, decision in configurations.items():
            right, cost, start = 0, 0.0, time.perf_counter()
            for scene, expected in zip(scenes, answers, strict=True):
                trace = executor.run(program, scene.image, decision)
                right += trace.answer == expected
                cost += trace.cost
            ms = 1000 * (time.perf_counter() - start) / len(scenes)
            print(f"{label:<36} {right / len(scenes):>8.3f} {cost / len(scenes):>11.4f} {ms:>9.1f}")
        monolithic = clients["vqa-large"].model()
        right, start = 0, time.perf_counter()
        for scene, expected in zip(scenes, answers, strict=True):
            right += monolithic.vqa(scene.image, QUESTION) == expected
        ms = 1000 * (time.perf_counter() - start) / len(scenes)
        cost = cluster.catalog.get("vqa-large").cost
        print(f"{'monolithic vqa-large, whole question':<36} {right / len(scenes):>8.3f} {cost:>11.4f} {ms:>9.1f}")
        print()
        for name in ("llm-small", "llm-large"):
            if name in clients:
                prompt = "How many sides does a hexagon have? Answer with a number only."
                print(f"{name}: {prompt!r} -> {clients[name].model().llm(prompt)!r}")
        print("\nPer-frame backend choice learned from feedback arrives with the policy service (issue 4).")


if __name__ == "__main__":
    main()
