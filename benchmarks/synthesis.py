"""Program synthesis on every benchmark query: valid programs, attempts, latency, and agreement
with the reference programs on held-out frames (``benchmarks.vqa.synthesis``).

    python -m benchmarks.synthesis [--frames 100] [--only TEXT] [--out benchmarks/results/synthesis.json]

The synthesizer is the router's default (``FMPROG_ROUTER_SYNTHESIS_*``: llm-large through
llama.cpp unless configured otherwise), without its program cache, so every query is synthesised
afresh, one after another in one process (as a router registering them would). Programs answer
with the CPU configuration's backends loaded in process, through the benchmark's output cache.
Prints a line per query and the summary; writes every program and number to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.provenance import provenance
from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.harness import load_backends
from benchmarks.vqa.synthesis import WITHIN, QueryMeasure, dry_run_refs, held_out, measure_query, summarize
from benchmarks.vqa.tracks import ImageResolver, load_binary, load_open
from fmprog.backends import load_catalog
from fmprog.program import Executor
from router.settings import RouterSettings
from router.synthesis.synthesizer import ProgramSynthesizer, synthesis_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", type=Path, default=Path("benchmarks/tracks/test/binary.json"))
    parser.add_argument("--open", type=Path, default=Path("benchmarks/tracks/test/open"))
    parser.add_argument("--config", type=Path, default=Path("fmprog/configs/synthetic.yaml"))
    parser.add_argument("--frames", type=int, default=100, help="held-out frames per query (default: %(default)s)")
    parser.add_argument("--only", help="only the queries whose text contains this")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results/vqa/cache.sqlite3"), help="output cache")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synthesis.json"))
    parser.add_argument("--summarize", action="store_true", help="only summarise --out again (no synthesis)")
    args = parser.parse_args()
    if args.summarize:
        report = json.loads(args.out.read_text())
        measures = [QueryMeasure.model_validate(q) for q in report["queries"]]
        report["summary"] = summarize_all(measures)
        report["queries"] = [_record(m) for m in measures]
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["summary"], indent=2))
        return

    settings = RouterSettings(backends_config=args.config)
    spec = settings.synthesis_spec()
    if spec is None:
        parser.error("synthesis is disabled: set FMPROG_ROUTER_SYNTHESIS_BACKEND or _SYNTHESIS_ENGINE")
    tracks = [("binary", load_binary(args.binary)), ("open", load_open(args.open))]
    queries = [(kind, q) for kind, track in tracks for q in track.queries if not args.only or args.only in q.query]

    cache = OutputCache(args.cache)
    backends = cached_registry(load_backends(args.config, None), cache)
    model = synthesis_model(spec)
    synthesizer = ProgramSynthesizer(
        model,
        load_catalog(args.config),
        backends,
        attempts=settings.synthesis_attempts,
        max_tokens=settings.synthesis_max_tokens,
        dry_run_frames=settings.synthesis_dry_run_frames,
    )
    executor = Executor(backends)
    images = ImageResolver()
    exclude = dry_run_refs(synthesizer)
    started = time.perf_counter()
    measures = []
    try:
        model.load()
        for number, (kind, query) in enumerate(queries, 1):
            measure = measure_query(synthesizer, executor, held_out(query, kind, args.frames, exclude), kind, images)
            cache.flush()
            measures.append(measure)
            synthesized = f"{measure.synthesized.accuracy:.3f}" if measure.synthesized else "-"
            print(
                f"[{number}/{len(queries)}] {kind} {query.type}: {query.query!r} "
                f"{'ok' if measure.ok else 'FAILED'} after {measure.attempts} attempt(s), {measure.latency_s:.1f} s; "
                f"accuracy reference {measure.reference.accuracy:.3f}, synthesized {synthesized}, "
                f"agreement {measure.agreement if measure.agreement is not None else '-'}",
                flush=True,
            )
    finally:
        model.close()
    summary = summarize_all(measures)
    report = {
        "synthesizer": model.name,
        "frames_per_query": args.frames,
        "within_points": WITHIN,
        "provenance": provenance(),
        "wall_s": time.perf_counter() - started,
        "summary": summary,
        "queries": [_record(m) for m in measures],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def summarize_all(measures: list[QueryMeasure]) -> dict[str, object]:
    """The summary over all queries, per track, without the prompt's own tasks, and per type."""
    return {
        "all": summarize(measures),
        "binary": summarize([m for m in measures if m.kind == "binary"]),
        "open": summarize([m for m in measures if m.kind == "open"]),
        "not_in_examples": summarize([m for m in measures if not m.in_examples]),
        "by_type": {
            t: summarize([m for m in measures if m.type == t]) for t in dict.fromkeys(m.type for m in measures)
        },
    }


def _record(measure: QueryMeasure) -> dict[str, object]:
    return measure.model_dump() | {"within": measure.within, "not_worse": measure.not_worse}


if __name__ == "__main__":
    main()
