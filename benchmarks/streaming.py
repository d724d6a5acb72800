"""Streaming benchmark: OpenCV's ``vtest.avi`` played over RTSP at 10 fps (GStreamer's RTSP server,
``benchmarks.camera``) into a router stream, for queries of the real-video track, with frame reuse
on and off. The router runs in this process with the real-image backends (YOLOv3-tiny, the
EfficientNet-Lite VQA) and no policy service (every call site on its cheapest candidate), so the
two runs differ only in reuse.

Per run it prints and records: frames answered per second of wall time, lag p50 and p99 (a
frame's arrival to its answer), frames received, dropped and reused, cost per frame, and, for the
run with reuse, its agreement with the run without (every frame run) frame by frame.

    python -m benchmarks.streaming [--queries 0 2 ...] [--fps 10] [--out benchmarks/results/streaming.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from benchmarks.camera import VTEST, rtsp_source
from fmprog.vision.video import SAMPLE_VIDEOS
from launcher.program_run import load_backends
from router.app import create_app
from router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[1]
TRACK = ROOT / "benchmarks" / "tracks" / "video"
CONFIG = ROOT / "deploy" / "config" / "real.yaml"
OUT = ROOT / "benchmarks" / "results" / "streaming.json"
BACKENDS = ["detect-yolo320", "vqa-lite0"]


def track_queries() -> list[dict[str, Any]]:
    """The track's queries in a fixed order: category, query and program."""
    queries = []
    for category in sorted(p.name for p in TRACK.iterdir() if p.is_dir()):
        for query in json.loads((TRACK / category / "meta_annotation.json").read_text()):
            queries.append({"category": category, "query": query["query"], "program": query["program"]})
    return queries


def stream_once(client: TestClient, program_id: str, url: str, fps: float, reuse: bool) -> dict[str, Any]:
    """Stream the camera into the program until it has played the whole video; the events and counters."""
    response = client.post(f"/programs/{program_id}/streams", json={"source": url, "fps": fps, "reuse": reuse})
    response.raise_for_status()
    stream_id = response.json()["id"]
    started = time.monotonic()
    last_change, answered = time.monotonic(), -1
    while time.monotonic() - last_change < 5:  # the camera ended: nothing new for 5 s
        time.sleep(0.5)
        now = client.get(f"/streams/{stream_id}").json()["counters"]["answered"]
        if now != answered:
            answered, last_change = now, time.monotonic()
    wall = last_change - started
    client.delete(f"/streams/{stream_id}")
    stream = client.get(f"/streams/{stream_id}").json()
    events = []
    with client.stream("GET", f"/streams/{stream_id}/events") as lines:
        for line in lines.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return {"events": events, "counters": stream["counters"], "wall_s": wall}


def summary(run: dict[str, Any]) -> dict[str, Any]:
    events, counters = run["events"], run["counters"]
    lags = np.asarray([e["lag_s"] for e in events])
    return {
        "answered": len(events),
        "received": counters["received"],
        "dropped": counters["dropped"],
        "reused": counters["reused"],
        "reused_share": round(counters["reused"] / max(1, len(events)), 4),
        "answered_per_s": round(len(events) / max(run["wall_s"], 1e-9), 2),
        "lag_p50_s": round(float(np.percentile(lags, 50)), 4) if len(lags) else None,
        "lag_p99_s": round(float(np.percentile(lags, 99)), 4) if len(lags) else None,
        "cost_per_frame": round(sum(e["cost"] for e in events) / max(1, len(events)), 1),
        "reconnects": counters["reconnects"],
    }


def agreement(reused: dict[str, Any], every: dict[str, Any]) -> tuple[float, int]:
    """The share of frames both runs answered on which the run with reuse answered as the run without."""
    by_frame = {e["frame"]: e["answer"] for e in every["events"]}
    both = [e for e in reused["events"] if e["frame"] in by_frame]
    same = sum(e["answer"] == by_frame[e["frame"]] for e in both)
    return (same / len(both) if both else float("nan")), len(both)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, nargs="*", default=None, help="Indices into the track's queries.")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    queries = track_queries()
    chosen = args.queries if args.queries else list(range(len(queries)))
    with tempfile.TemporaryDirectory() as state:
        settings = RouterSettings(
            database=Path(state) / "router.db",
            backends_config=CONFIG,
            backends=BACKENDS,
            synthesis_backend=None,
            stream_file_roots=[SAMPLE_VIDEOS],
        )
        catalog = settings.load_catalog()
        registry = load_backends(list(catalog.backends))
        results = []
        with TestClient(create_app(settings, catalog=catalog, backends=registry)) as client:
            for index in chosen:
                query = queries[index]
                body = {"source": query["program"], "kind": "open", "lambda": 0.001}
                program_id = client.post("/programs", json=body).json()["id"]
                runs = {}
                for reuse in (False, True):
                    with rtsp_source(VTEST, fps=args.fps) as camera:
                        runs[reuse] = stream_once(client, program_id, camera.url, args.fps, reuse)
                same, compared = agreement(runs[True], runs[False])
                row = {
                    "query": query["query"],
                    "every_frame": summary(runs[False]),
                    "reuse": summary(runs[True]),
                    "agreement": round(same, 4),
                    "frames_compared": compared,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    averaged = {
        "reused_share": round(float(np.mean([r["reuse"]["reused_share"] for r in results])), 4),
        "agreement": round(float(np.mean([r["agreement"] for r in results])), 4),
        "answered_per_s_reuse": round(float(np.mean([r["reuse"]["answered_per_s"] for r in results])), 2),
        "answered_per_s_every_frame": round(float(np.mean([r["every_frame"]["answered_per_s"] for r in results])), 2),
        "lag_p99_s_max": max(max(r["reuse"]["lag_p99_s"], r["every_frame"]["lag_p99_s"]) for r in results),
        "dropped": sum(r["reuse"]["dropped"] + r["every_frame"]["dropped"] for r in results),
        "cost_per_frame_reuse": round(float(np.mean([r["reuse"]["cost_per_frame"] for r in results])), 1),
        "cost_per_frame_every_frame": round(float(np.mean([r["every_frame"]["cost_per_frame"] for r in results])), 1),
    }
    print(json.dumps({"average": averaged}, indent=1))
    report = {
        "video": VTEST.name,
        "fps": args.fps,
        "backends": BACKENDS,
        "policy": "none (every call site on its cheapest candidate)",
        "queries": results,
        "average": averaged,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
