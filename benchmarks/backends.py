"""Benchmark every backend of a configuration as served by Ray Serve on this machine.

Per backend it measures, through the Serve HTTP proxy:
- accuracy by difficulty (easy, medium, hard): held-out scene frames for detect (F1 at IoU 0.5)
  and VQA (exact match) from ``fmprog.zoo.evaluate``; a small fixed question set for the LLMs;
  for the text readers (ocr), the signs on objects of frames generated with text (exact match);
- latency p50 of single calls (one client, one call at a time) and of concurrent calls (as many
  clients as the backend's ``max_batch_size``), the throughput of both, the mean batch size the
  engine saw, and the throughput gain of dynamic batching;
- the peak resident memory of the backend's replica process.

    python -m benchmarks.backends [--config fmprog/configs/synthetic.yaml] [--items 150]
        [--out benchmarks/results/backends.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.provenance import provenance
from fmprog.backends import FUNCTIONS, BackendSpec, Function
from fmprog.images import encode_base64_png
from fmprog.scene import generate_scene
from fmprog.zoo.evaluate import evaluation_set, score
from services.client import HttpBackend
from services.cluster import ServeSettings, free_port, serve_backends

DIFFICULTIES = ("easy", "medium", "hard")

# Short questions with one right answer, by difficulty; an answer counts when it contains the
# expected word or number as a whole word.
LLM_QUESTIONS: dict[str, list[tuple[str, str]]] = {
    "easy": [
        ("What is 2 + 3? Answer with a number only.", "5"),
        ("How many days are in a week? Answer with a number only.", "7"),
        ("What is 10 minus 4? Answer with a number only.", "6"),
        ("What colour is the sky on a clear day? Answer with one word.", "blue"),
        ("What colour is grass? Answer with one word.", "green"),
        ("What is the opposite of 'hot'? Answer with one word.", "cold"),
    ],
    "medium": [
        ("How many sides does a triangle have? Answer with a number only.", "3"),
        ("How many sides does a hexagon have? Answer with a number only.", "6"),
        ("How many sides does a pentagon have? Answer with a number only.", "5"),
        ("What is 6 times 7? Answer with a number only.", "42"),
        ("What is the capital of France? Answer with one word.", "paris"),
        ("Which colour do you get by mixing blue and yellow paint? Answer with one word.", "green"),
    ],
    "hard": [
        ("A square has 4 sides and a triangle has 3. How many sides do they have together? Answer with a number.", "7"),
        ("What is 17 + 26? Answer with a number only.", "43"),
        ("Which colour do you get by mixing red and yellow paint? Answer with one word.", "orange"),
        ("How many corners does a cube have? Answer with a number only.", "8"),
        ("In which country is the city of Kyoto? Answer with one word.", "japan"),
        ("What is 9 times 8? Answer with a number only.", "72"),
    ],
}


def llm_correct(answer: str, expected: str) -> bool:
    return re.search(rf"\b{re.escape(expected)}\b", answer.lower()) is not None


# The text of the vision functions' timed calls (the text readers take none).
TIMED_TEXT = {Function.detect: "red circle", Function.vqa: "How many circles are there?"}


def _payloads(spec: BackendSpec, count: int) -> list[dict[str, Any]]:
    """Representative calls: medium frames for vision backends (with signs for text readers), the
    LLM questions cycled for LLMs."""
    record = FUNCTIONS[spec.function]
    if not record.takes_image:
        prompts = [q for level in DIFFICULTIES for q, _ in LLM_QUESTIONS[level]]
        return [{record.text: prompts[i % len(prompts)]} for i in range(count)]
    text = spec.function == Function.ocr
    frames = [encode_base64_png(generate_scene(7_000 + i, "medium", text=text).image) for i in range(count)]
    extra = {} if record.text is None else {record.text: TIMED_TEXT[spec.function]}
    return [{"image": f, **extra} for f in frames]


def _signs_read(call: Callable[..., Any], level: str, items: int, pool: ThreadPoolExecutor) -> float:
    """The fraction of signs read exactly, on the objects of frames generated with text (256 pixels)."""
    crops, truths = [], []
    seed = 50_000
    while len(crops) < items:
        scene = generate_scene(seed, level, 256, text=True)
        for obj in scene.objects:
            if obj.text:
                x0, y0, x1, y1 = obj.box
                crops.append(scene.image[y0:y1, x0:x1])
                truths.append(obj.text)
        seed += 1
    answers = list(pool.map(call, crops[:items]))
    return sum(a == t for a, t in zip(answers, truths, strict=False)) / items


def _timed_calls(client: HttpBackend, payloads: Sequence[dict[str, Any]], clients: int) -> dict[str, float]:
    latencies: list[float] = []
    batch_sizes: list[int] = []

    def one(payload: dict[str, Any]) -> None:
        start = time.perf_counter()
        reply = client.reply(client.spec.function, payload)
        latencies.append(time.perf_counter() - start)
        batch_sizes.append(reply.batch_size)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, payloads))
    wall = time.perf_counter() - start
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "throughput_per_s": len(payloads) / wall,
        "mean_batch_size": statistics.fmean(batch_sizes),
    }


def _accuracy(client: HttpBackend, items: int, clients: int) -> dict[str, float]:
    model = client.model()
    function = client.spec.function
    call: Callable[..., Any] = getattr(model, function.value)
    result: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for level in DIFFICULTIES:
            if function == Function.llm:
                questions = LLM_QUESTIONS[level]
                answers = list(pool.map(lambda q: call(q[0]), questions))
                result[level] = sum(llm_correct(a, e) for a, (_, e) in zip(answers, questions, strict=True)) / len(
                    questions
                )
                continue
            if function == Function.ocr:
                result[level] = _signs_read(call, level, items, pool)
                continue
            evaluation = evaluation_set(function.value, level, items, seed=1)
            predictions = list(pool.map(lambda item: call(item.image, item.text), evaluation))
            result[level] = score(function.value, predictions, [item.expected for item in evaluation])
    return result


def bench_backend(client: HttpBackend, items: int, calls: int) -> dict[str, Any]:
    spec = client.spec
    clients = max(2, spec.batching.max_batch_size)
    llm = spec.function == Function.llm
    n = max(clients, calls // 4) if llm else calls
    payloads = _payloads(spec, n)
    _timed_calls(client, payloads[:2], 1)  # warm up
    single = _timed_calls(client, payloads, 1)
    batched = _timed_calls(client, payloads, clients)
    accuracy = _accuracy(client, items, clients)
    health = client.health()
    return {
        "backend": spec.name,
        "function": spec.function.value,
        "engine": spec.engine.kind if spec.engine else None,
        "cost": spec.cost,
        "parameters": health["model"].get("parameters"),
        "accuracy": accuracy,
        "accuracy_items_per_difficulty": len(LLM_QUESTIONS["easy"]) if llm else items,
        "single": single,
        "batched": {**batched, "clients": clients},
        "batching_gain": batched["throughput_per_s"] / single["throughput_per_s"],
        "calls_timed": n,
        "peak_rss_mb": health["peak_rss_mb"],
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | engine | cost (M params) | acc easy | acc medium | acc hard | p50 single (ms) "
        "| p50 batched (ms) | mean batch | batching gain | peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = r["accuracy"]
        lines.append(
            f"| {r['backend']} | {r['engine']} | {r['cost']:g} | {acc['easy']:.3f} | {acc['medium']:.3f} "
            f"| {acc['hard']:.3f} | {r['single']['p50_ms']:.1f} | {r['batched']['p50_ms']:.1f} "
            f"| {r['batched']['mean_batch_size']:.1f} | {r['batching_gain']:.2f}x | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fmprog/configs/synthetic.yaml")
    parser.add_argument("--backends", help="comma-separated subset")
    parser.add_argument("--items", type=int, default=150, help="evaluation items per difficulty (vision)")
    parser.add_argument("--calls", type=int, default=64, help="timed calls per mode (a quarter for LLMs)")
    parser.add_argument("--out", default="benchmarks/results/backends.json")
    args = parser.parse_args()

    settings = ServeSettings(
        config=args.config, port=free_port(), backends=args.backends.split(",") if args.backends else None
    )
    started = time.perf_counter()
    with serve_backends(settings) as cluster:
        startup_s = time.perf_counter() - started
        print(f"serving {len(cluster.handles)} backends after {startup_s:.1f} s", flush=True)
        rows = []
        for name in cluster.handles:
            client = HttpBackend(cluster.catalog.get(name), cluster.base_url, timeout_s=300)
            rows.append(bench_backend(client, args.items, args.calls))
            print(json.dumps(rows[-1]), flush=True)
            client.close()
    table = markdown(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"provenance": provenance(), "config": args.config, "startup_s": startup_s, "backends": rows}
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
