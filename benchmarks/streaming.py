"""Streaming benchmark: the real-video track streamed over RTSP into router streams, with frame
reuse on and off, and how fast a stream recovers from a camera restart and from its router's death.

**Streams.** OpenCV's ``vtest.avi`` (795 frames, 10 fps) is played over RTSP by GStreamer's RTSP
server (``benchmarks.camera``), each client getting the file from its first frame in real time, so
that an event's frame number is the file's. Per query of the track and per policy, the program's
stream runs twice, reuse off (every frame runs) and on. The router runs in this process with the
four real-image backends (YOLOv3-tiny at 320 and 608 px, EfficientNet-Lite0 and Lite2 VQA) and the
policy service in another, which decides the backends and, for frames of a stream, reuse. Every
answered frame is labelled with the track's reference label (``POST /feedback``, as a client would),
so the policy and the reuse gates learn online, from nothing. Per run: frames answered per second,
lag p50/p99, frames received, dropped and reused, cost per frame, agreement with the reference;
per pair, the agreement of the run with reuse with the run without, frame by frame.

**Recovery.** (1) A live camera (the RTSP server's shared media) is killed and restarted: seconds
from its restart to the stream's next answer. (2) Two routers on one PostgreSQL database (stub
backends), the one reading a stream killed with SIGKILL: seconds from the kill to the other
router's first answer of that stream.

    python -m benchmarks.streaming [--queries 0 3 ...] [--policies fast cascade] [--recovery-only]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient

from benchmarks.camera import VTEST, rtsp_source
from benchmarks.provenance import provenance
from benchmarks.router_replicas import register as register_stub
from benchmarks.router_replicas import start_policy, start_router, stopping
from benchmarks.vqa.tracks import load_open, parse_video_ref
from launcher.program_run import load_backends
from router.app import create_app
from router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[1]
TRACK = ROOT / "benchmarks" / "tracks" / "video"
CONFIG = ROOT / "fmprog" / "configs" / "real.yaml"
OUT = ROOT / "benchmarks" / "results" / "streaming.json"
BACKENDS = ["detect-yolo320", "detect-yolo608", "vqa-lite0", "vqa-lite2"]
FPS = 10.0
LAMBDA = 0.001


def track_queries() -> list[dict[str, Any]]:
    """The track's queries in its order: query, program and reference label per frame index."""
    queries = []
    for query in load_open(TRACK, "video", shuffle=False).queries:
        labels = {parse_video_ref(str(ref))[1]: label for ref, label in zip(query.frames, query.labels, strict=True)}
        queries.append({"query": query.query, "program": query.program, "labels": labels})
    return queries


class Labeller:
    """Reads a stream's events over SSE and labels each answered frame with its reference label."""

    def __init__(self, client: TestClient, stream_id: str, labels: dict[int, str]):
        self.client, self.stream_id, self.labels = client, stream_id, labels
        self.events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        batch: list[dict[str, str]] = []
        with self.client.stream("GET", f"/streams/{self.stream_id}/events") as lines:
            for line in lines.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                self.events.append(event)
                if event["frame"] in self.labels:
                    batch.append({"decision_id": event["decision_id"], "label": self.labels[event["frame"]]})
                if len(batch) >= 5:
                    self.client.post("/feedback", json=batch)
                    batch = []
        if batch:
            self.client.post("/feedback", json=batch)

    def join(self) -> None:
        self._thread.join(60)


def stream_once(client: TestClient, program_id: str, labels: dict[int, str], reuse: bool) -> dict[str, Any]:
    """The whole video streamed into the program (its own RTSP client from frame 0), labelled as it goes."""
    last_frame = max(labels)
    with rtsp_source(VTEST, fps=FPS, per_client=True) as camera:
        body = {"source": camera.url, "fps": FPS, "reuse": reuse}
        response = client.post(f"/programs/{program_id}/streams", json=body)
        response.raise_for_status()
        stream_id = response.json()["id"]
        labeller = Labeller(client, stream_id, labels)
        started = time.monotonic()
        deadline = started + (last_frame + 1) / FPS + 30
        while time.monotonic() < deadline:  # until the last frame is answered or dropped, and the camera ends
            time.sleep(0.5)
            counters = client.get(f"/streams/{stream_id}").json()["counters"]
            if counters["last_pts"] >= (last_frame + 1) / FPS - 1e-6:
                break
        wall = time.monotonic() - started
        time.sleep(1.0)  # the last answer stored
        client.delete(f"/streams/{stream_id}")
    labeller.join()
    stream = client.get(f"/streams/{stream_id}").json()
    events = [e for e in labeller.events if e["frame"] <= last_frame]
    return {"events": events, "counters": stream["counters"], "wall_s": wall}


def summary(run: dict[str, Any], labels: dict[int, str]) -> dict[str, Any]:
    events, counters = run["events"], run["counters"]
    lags = np.asarray([e["lag_s"] for e in events]) if events else np.zeros(1)
    agree = [str(e["answer"]).strip().lower() == labels[e["frame"]].strip().lower() for e in events]
    return {
        "answered": len(events),
        "received": counters["received"],
        "dropped": counters["dropped"],
        "failed": counters["failed"],
        "reused": sum(e["reused"] for e in events),
        "reused_share": round(sum(e["reused"] for e in events) / max(1, len(events)), 4),
        "answered_per_s": round(len(events) / max(run["wall_s"], 1e-9), 2),
        "lag_p50_s": round(float(np.percentile(lags, 50)), 4),
        "lag_p99_s": round(float(np.percentile(lags, 99)), 4),
        "cost_per_frame": round(sum(e["cost"] for e in events) / max(1, len(events)), 1),
        "reference_agreement": round(float(np.mean(agree)) if agree else float("nan"), 4),
    }


def agreement(reused: dict[str, Any], every: dict[str, Any]) -> tuple[float, int]:
    """The share of frames both runs answered on which the run with reuse answered as the run without."""
    by_frame = {e["frame"]: e["answer"] for e in every["events"]}
    both = [e for e in reused["events"] if e["frame"] in by_frame]
    same = sum(e["answer"] == by_frame[e["frame"]] for e in both)
    return (same / len(both) if both else float("nan")), len(both)


def policy_fields(policy: str) -> dict[str, Any]:
    """A program's policy from a name: an algorithm (``fast``), or ``static:largest`` (the
    reference configuration) and ``static:cheapest``."""
    algorithm, _, mode = policy.partition(":")
    return {"algorithm": algorithm, "hyperparameters": {"mode": mode} if mode else {}}


def run_streams(queries: list[dict[str, Any]], chosen: list[int], policies: list[str]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as state:
        policy = start_policy(Path(state) / "policy")
        with stopping(policy):
            settings = RouterSettings(
                database=Path(state) / "router.db",
                backends_config=CONFIG,
                backends=BACKENDS,
                policy_url=policy.url,
                synthesis_backend=None,
            )
            catalog = settings.load_catalog()
            registry = load_backends(list(catalog.backends))
            with TestClient(create_app(settings, catalog=catalog, backends=registry)) as client:
                for algorithm in policies:
                    for index in chosen:
                        query = queries[index]
                        runs = {}
                        for reuse in (False, True):  # a program of its own per run: each learns from nothing
                            body = {
                                "source": query["program"],
                                "kind": "open",
                                "lambda": LAMBDA,
                                **policy_fields(algorithm),
                            }
                            registered = client.post("/programs", json=body)
                            registered.raise_for_status()
                            runs[reuse] = stream_once(client, registered.json()["id"], query["labels"], reuse)
                        same, compared = agreement(runs[True], runs[False])
                        row = {
                            "query": query["query"],
                            "policy": algorithm,
                            "every_frame": summary(runs[False], query["labels"]),
                            "reuse": summary(runs[True], query["labels"]),
                            "agreement_with_every_frame": round(same, 4),
                            "frames_compared": compared,
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    return rows


def averages(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per policy, the means over its queries."""
    out = {}
    for algorithm in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == algorithm]

        def mean(run: str, key: str, rows: list[dict[str, Any]] = mine) -> float:
            return round(float(np.mean([r[run][key] for r in rows])), 4)

        out[algorithm] = {
            "queries": len(mine),
            "reused_share": mean("reuse", "reused_share"),
            "agreement_with_every_frame": round(float(np.mean([r["agreement_with_every_frame"] for r in mine])), 4),
            "reference_agreement_reuse": mean("reuse", "reference_agreement"),
            "reference_agreement_every_frame": mean("every_frame", "reference_agreement"),
            "answered_per_s_reuse": mean("reuse", "answered_per_s"),
            "answered_per_s_every_frame": mean("every_frame", "answered_per_s"),
            "lag_p99_s_reuse_max": max(r["reuse"]["lag_p99_s"] for r in mine),
            "lag_p99_s_every_frame_max": max(r["every_frame"]["lag_p99_s"] for r in mine),
            "dropped_reuse": sum(r["reuse"]["dropped"] for r in mine),
            "dropped_every_frame": sum(r["every_frame"]["dropped"] for r in mine),
            "cost_per_frame_reuse": mean("reuse", "cost_per_frame"),
            "cost_per_frame_every_frame": mean("every_frame", "cost_per_frame"),
        }
    return out


# -- recovery ------------------------------------------------------------------------------------------


def _first_answer_after(client: httpx.Client, stream_id: str, moment: datetime, timeout_s: float = 60) -> float | None:
    """Seconds from ``moment`` to the stream's first event created after it (None: none came within
    ``timeout_s``), read from its event stream."""
    deadline = time.monotonic() + timeout_s
    with client.stream("GET", f"/streams/{stream_id}/events", timeout=timeout_s) as lines:
        for line in lines.iter_lines():
            if line.startswith("data: "):
                created = datetime.fromisoformat(json.loads(line[6:])["created_at"])
                if created > moment:
                    return round((created - moment).total_seconds(), 3)
            if time.monotonic() > deadline:
                return None
    return None


def camera_restart(restarts: int = 3) -> list[float | None]:
    """Seconds from a live camera's restart to the stream's next answer, per restart."""
    from benchmarks.router_replicas import PROGRAM, stub_backends

    delays = []
    with tempfile.TemporaryDirectory() as state, rtsp_source(VTEST, fps=FPS, loop=True) as camera:
        catalog, backends = stub_backends()
        settings = RouterSettings(database=Path(state) / "router.db", synthesis_backend=None)
        with TestClient(create_app(settings, catalog=catalog, backends=backends)) as client:
            body = {"source": PROGRAM.read_text(), "kind": "binary", "lambda": LAMBDA}
            program_id = client.post("/programs", json=body).json()["id"]
            stream_id = client.post(f"/programs/{program_id}/streams", json={"source": camera.url, "fps": FPS}).json()[
                "id"
            ]
            time.sleep(3)
            for _ in range(restarts):
                camera.stop()
                time.sleep(3)  # down for 3 s: the stream backs off meanwhile
                camera.start()  # returns once the camera serves
                restarted = datetime.now().astimezone()
                delays.append(_first_answer_after(client, stream_id, restarted))
                time.sleep(3)
    return delays


def router_takeover(lease_s: float = 6.0, tick_s: float = 1.0) -> dict[str, Any]:
    """Seconds from killing the router that reads a stream to the other router's first answer of it."""
    from tests.postgres import PostgresServer  # the tests' throwaway server (a checkout, not a wheel)

    with tempfile.TemporaryDirectory() as state, PostgresServer() as postgres:
        database = postgres.database()
        settings = {"stream_lease_s": str(lease_s), "stream_tick_s": str(tick_s)}
        policy = start_policy(Path(state) / "policy")
        first = start_router(database, policy.url, Path(state) / "first.log", **settings)
        second = start_router(database, policy.url, Path(state) / "second.log", **settings)
        with stopping(first, second, policy), rtsp_source(VTEST, fps=FPS, loop=True) as camera:
            program_id = register_stub(first.url)
            body = {"source": camera.url, "fps": FPS}
            stream_id = httpx.post(f"{first.url}/programs/{program_id}/streams", json=body, timeout=30).json()["id"]
            time.sleep(5)
            first.kill()
            killed = datetime.now().astimezone()
            with httpx.Client(base_url=second.url, timeout=30) as client:
                delay = _first_answer_after(client, stream_id, killed)
                owner = client.get(f"/streams/{stream_id}").json()["owner"]
    return {"lease_s": lease_s, "tick_s": tick_s, "seconds_to_next_answer": delay, "new_owner": owner}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, nargs="*", default=None, help="Indices into the track's queries.")
    parser.add_argument(
        "--policies", nargs="*", default=["fast"], help="Policies to stream with: algorithms, static:largest, ..."
    )
    parser.add_argument("--recovery-only", action="store_true", help="Measure recovery only.")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "video": VTEST.name,
        "fps": FPS,
        "lambda": LAMBDA,
        "backends": BACKENDS,
        "provenance": provenance(),
    }
    if args.out.is_file():  # keep what an earlier run measured and this one does not, and its provenance
        earlier = json.loads(args.out.read_text())
        earlier.pop("machine", None)  # before provenance records
        kept = earlier.pop("earlier_provenance", [])
        report["earlier_provenance"] = [*kept, earlier.pop("provenance")] if "provenance" in earlier else kept
        report = {**earlier, **report}
    if not args.recovery_only:
        queries = track_queries()
        chosen = args.queries if args.queries else list(range(len(queries)))
        rows = run_streams(queries, chosen, args.policies)
        measured = {(r["policy"], r["query"]) for r in rows}  # a rerun replaces those queries' rows only
        kept = [r for r in report.get("streams", []) if (r["policy"], r["query"]) not in measured]
        report["streams"] = kept + rows
        report["averages"] = averages(report["streams"])
        print(json.dumps({"averages": report["averages"]}, indent=1))
    recovery = {"policies": args.policies, "camera_restart_s": camera_restart(), "router_takeover": router_takeover()}
    report["recovery_runs"] = [*report.get("recovery_runs", []), recovery]  # every run's, kept
    print(json.dumps({"recovery": recovery}, indent=1))
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
