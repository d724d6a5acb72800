"""A stream survives the router that reads it: two router processes on one PostgreSQL database, a
stream of a real video started on the first, the first killed with SIGKILL mid-stream. The second
takes the stream's lease over when it runs out and goes on from where the first left the video;
a client reading the events from the second router, across the takeover, sees every event once,
numbered without a gap. (The routers answer with stub backends: what is tested is the lease.)"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.router_replicas import register, start_policy, start_router, stopping
from fmprog.vision.video import SAMPLE_VIDEOS
from tests.postgres import PostgresServer, serving_or_skipped
from tests.servers import wait_until

pytestmark = pytest.mark.timeout(300)
VIDEO = SAMPLE_VIDEOS / "vtest.avi"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    yield from serving_or_skipped()


def _stream(url: str, stream_id: str) -> dict:
    response = httpx.get(f"{url}/streams/{stream_id}", timeout=10)
    response.raise_for_status()
    return response.json()


class Reader:
    """Reads a stream's events over SSE in a thread, reconnecting with Last-Event-ID when cut."""

    def __init__(self, url: str, stream_id: str):
        self.url, self.stream_id = url, stream_id
        self.events: list[dict] = []
        self.ids: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            headers = {"Last-Event-ID": str(self.ids[-1])} if self.ids else {}
            try:
                with httpx.stream(
                    "GET", f"{self.url}/streams/{self.stream_id}/events", headers=headers, timeout=30
                ) as response:
                    event_id = None
                    for line in response.iter_lines():
                        if line.startswith("id: "):
                            event_id = int(line[4:])
                        elif line.startswith("data: "):
                            self.ids.append(event_id)
                            self.events.append(json.loads(line[6:]))
                        if self.stop.is_set():
                            return
            except httpx.HTTPError:
                time.sleep(0.2)


@pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} is missing (Debian's opencv-doc)")
def test_a_killed_routers_stream_is_taken_over_and_no_event_is_lost(postgres: PostgresServer, tmp_path: Path):
    database = postgres.database()
    settings = {"stream_file_roots": json.dumps([str(SAMPLE_VIDEOS)]), "stream_lease_s": "3", "stream_tick_s": "0.5"}
    policy = start_policy(tmp_path / "policy")
    first = start_router(database, policy.url, tmp_path / "first.log", **settings)
    second = start_router(database, policy.url, tmp_path / "second.log", **settings)
    with stopping(first, second, policy):
        program = register(first.url)
        response = httpx.post(
            f"{first.url}/programs/{program}/streams", json={"source": VIDEO.as_uri(), "fps": 10}, timeout=30
        )
        assert response.status_code == 201, response.text
        stream_id = response.json()["id"]
        owner = response.json()["owner"]
        reader = Reader(second.url, stream_id)  # the client reads from the router that survives
        wait_until(lambda: _stream(second.url, stream_id)["counters"]["answered"] >= 20, "20 frames answered")
        assert _stream(second.url, stream_id)["owner"] == owner

        first.kill()
        before = _stream(second.url, stream_id)
        wait_until(
            lambda: _stream(second.url, stream_id)["owner"] not in (None, owner),
            "the second router took the stream over",
        )
        wait_until(
            lambda: _stream(second.url, stream_id)["counters"]["answered"] >= before["counters"]["answered"] + 20,
            "20 more frames answered after the takeover",
        )
        assert httpx.delete(f"{second.url}/streams/{stream_id}", timeout=10).status_code == 204
        stopped = _stream(second.url, stream_id)
        assert stopped["state"] == "stopped"
        wait_until(lambda: len(reader.ids) >= stopped["counters"]["answered"], "the reader saw every event")
        reader.stop.set()

    assert reader.ids == list(range(1, len(reader.ids) + 1))  # every event once, in order, across the takeover
    frames = [event["frame"] for event in reader.events]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # the video went on, not over again
    taken_over = [event for event in reader.events if event["frame"] > before["counters"]["last_pts"] * 10]
    assert taken_over, "events after the takeover"
