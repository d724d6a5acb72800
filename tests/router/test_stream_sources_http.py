"""Streams from real camera protocols on loopback (``benchmarks.camera``): RTSP from GStreamer's RTSP
server, an HTTP MJPEG camera and a video file over HTTP, each playing OpenCV's ``vtest.avi``. The
RTSP camera is killed mid-stream and started again on the same port: the stream reconnects and
answers again. The router answers with a stub detector (what is tested is the source)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from benchmarks.camera import VTEST, file_over_http, mjpeg_source, rtsp_available, rtsp_source
from benchmarks.router_replicas import PROGRAM, stub_backends
from router.app import create_app
from router.settings import RouterSettings
from tests.servers import wait_until

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} is missing (Debian's opencv-doc)"),
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    catalog, backends = stub_backends()
    settings = RouterSettings(
        database=tmp_path / "router.db", synthesis_backend=None, stream_tick_s=0.2, stream_backoff_s=(0.2, 1.0)
    )
    with TestClient(create_app(settings, catalog=catalog, backends=backends)) as test_client:
        yield test_client


def start(client: TestClient, source: str, fps: float = 10) -> str:
    body = {"source": PROGRAM.read_text(), "kind": "binary", "lambda": 0.001}
    program = client.post("/programs", json=body).json()["id"]
    response = client.post(f"/programs/{program}/streams", json={"source": source, "fps": fps})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def counters(client: TestClient, stream_id: str) -> dict:
    return client.get(f"/streams/{stream_id}").json()["counters"]


@pytest.mark.skipif(bool(rtsp_available()), reason=f"no RTSP server here: {rtsp_available()}")
def test_an_rtsp_camera_that_restarts_is_reconnected_and_answered_again(client):
    with rtsp_source(fps=10, loop=True) as camera:
        stream_id = start(client, camera.url)
        wait_until(lambda: counters(client, stream_id)["answered"] >= 10, "10 frames of the camera answered")
        camera.stop()
        wait_until(lambda: client.get(f"/streams/{stream_id}").json()["last_error"] is not None, "the drop noticed")
        answered = counters(client, stream_id)["answered"]
        camera.start()
        wait_until(lambda: counters(client, stream_id)["answered"] >= answered + 10, "answered again after the restart")
        stream = client.get(f"/streams/{stream_id}").json()
        assert stream["state"] == "running" and stream["counters"]["reconnects"] >= 1
        with client.stream("GET", f"/streams/{stream_id}/events", params={"after": answered}) as events:
            first = next(line for line in events.iter_lines() if line.startswith("id: "))
        assert int(first[4:]) == answered + 1  # the events go on, numbered from where they were
        assert client.delete(f"/streams/{stream_id}").status_code == 204


def test_an_mjpeg_camera_is_answered_at_its_rate(client):
    with mjpeg_source(fps=10, loop=True) as camera:
        stream_id = start(client, camera.url, fps=5)
        started = time.monotonic()
        wait_until(lambda: counters(client, stream_id)["answered"] >= 10, "10 frames of the MJPEG camera answered")
        assert time.monotonic() - started >= 1.5  # sampled at 5 a second of a live camera, not as fast as it reads
        assert client.delete(f"/streams/{stream_id}").status_code == 204


def test_a_video_file_over_http_is_read_at_its_own_pace(client):
    with file_over_http() as server:
        stream_id = start(client, server.url, fps=10)
        wait_until(lambda: counters(client, stream_id)["answered"] >= 15, "15 frames of the file answered")
        stream = client.get(f"/streams/{stream_id}").json()
        assert stream["counters"]["last_pts"] < 10  # paced: about a second of video a second, not the whole file
        assert client.delete(f"/streams/{stream_id}").status_code == 204
