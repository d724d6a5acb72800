"""Serve the synthetic zoo's backends on localhost and run one program over a stream of frames.

Starts Ray Serve with every backend of fmprog/configs/synthetic.yaml, then answers "is there a
triangle left of a circle?" on generated scene frames four ways: the program with all-small
backends, with all-large backends, with a mixed configuration, and the monolithic baseline
(vqa-large on the whole frame with the whole question). It prints accuracy and cost per frame of
each (and F1 on the rare "yes" frames, the paper's binary metric), plus one llm call per LLM backend.

It calls the backends directly, without the router and the policy; examples/demo.py (``make
demo``) runs the whole cluster and learns the configuration per frame from feedback.

    python examples/serve_demo.py [--frames 200]
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
QUESTION = "Is there a triangle left of a circle?"


def truth(scene: Scene) -> str:
    triangles = [o for o in scene.objects if o.shape == "triangle"]
    circles = [o for o in scene.objects if o.shape == "circle"]
    return "yes" if any(t.center[0] < c.center[0] for t in triangles for c in circles) else "no"


def f1_yes(answers: list[str], truths: list[str]) -> float:
    tp = sum(a == t == "yes" for a, t in zip(answers, truths, strict=True))
    fp = sum(a == "yes" != t for a, t in zip(answers, truths, strict=True))
    fn = sum(t == "yes" != a for a, t in zip(answers, truths, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--config", default=str(ROOT / "fmprog" / "configs" / "synthetic.yaml"))
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
        program = compile_program((ROOT / "examples" / "programs" / "triangle_left_of_circle.py").read_text())
        print(f"\nprogram call sites: {[site.id for site in program.call_sites]}")
        configurations = {
            "program, all small": {s.id: f"{s.function.value}-small" for s in program.call_sites},
            "program, detect small + vqa large": {
                s.id: "detect-small" if s.function.value == "detect" else "vqa-large" for s in program.call_sites
            },
            "program, all large": {s.id: f"{s.function.value}-large" for s in program.call_sites},
        }
        executor = Executor(registry)
        scenes = list(scene_stream(seed=7, count=args.frames, mix={"easy": 0.2, "medium": 0.4, "hard": 0.4}))
        truths = [truth(s) for s in scenes]
        print(f"\n{QUESTION} {len(scenes)} frames, {truths.count('yes')} of them 'yes'\n")
        print(f"{'configuration':<36} {'accuracy':>8} {'F1 yes':>7} {'cost/frame':>11} {'ms/frame':>9}")

        def report(label: str, answers: list[str], cost: float, seconds: float) -> None:
            accuracy = sum(a == t for a, t in zip(answers, truths, strict=True)) / len(scenes)
            print(
                f"{label:<36} {accuracy:>8.3f} {f1_yes(answers, truths):>7.3f} {cost / len(scenes):>11.4f} "
                f"{1000 * seconds / len(scenes):>9.1f}"
            )

        for label, decision in configurations.items():
            start = time.perf_counter()
            traces = [executor.run(program, scene.image, decision) for scene in scenes]
            report(label, [t.answer for t in traces], sum(t.cost for t in traces), time.perf_counter() - start)
        monolithic = clients["vqa-large"].model()
        start = time.perf_counter()
        answers = [monolithic.vqa(scene.image, QUESTION) for scene in scenes]
        cost = cluster.catalog.get("vqa-large").cost * len(scenes)
        report("monolithic vqa-large, whole question", answers, cost, time.perf_counter() - start)
        print()
        for name in ("llm-small", "llm-large"):
            if name in clients:
                prompt = "How many sides does a hexagon have? Answer with a number only."
                print(f"{name}: {prompt!r} -> {clients[name].model().llm(prompt)!r}")
        print("\nexamples/demo.py learns the configuration per frame from feedback, through the router and the policy.")


if __name__ == "__main__":
    main()
