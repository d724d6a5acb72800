"""Frames without base64, cameras and streams over the router's HTTP API, with a real detector
(YOLOv3-tiny at 320 px, run by OpenCV) on a real video (OpenCV's ``vtest.avi``).

- ``POST /answer`` takes the image as the body (JPEG or PNG) and batches as a multipart form.
- A frame of a named camera that barely differs from the camera's last run reuses its answer.
- ``POST /programs/{id}/streams`` reads a file source; its answers come back as Server-Sent Events
  that resume after ``Last-Event-ID``; ``GET``/``DELETE /streams/{id}``; bad sources get a 422.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fmprog.images import encode_jpeg
from fmprog.vision.video import SAMPLE_VIDEOS, VideoFrames
from launcher.program_run import load_backends
from router.app import create_app
from router.settings import RouterSettings
from tests.real_backends import REAL_CONFIG
from tests.servers import wait_until

pytestmark = pytest.mark.timeout(300)
VIDEO = SAMPLE_VIDEOS / "vtest.avi"
COUNT = 'def execute_command(image):\n    people = ImagePatch(image).find("person")\n    return str(len(people))\n'
BACKENDS = ["detect-yolo320"]

if not VIDEO.is_file():
    pytest.skip(f"{VIDEO} is missing (Debian's opencv-doc)", allow_module_level=True)


@pytest.fixture(scope="module")
def backends() -> Any:
    settings = RouterSettings(backends_config=REAL_CONFIG, backends=BACKENDS)
    return settings.load_catalog(), load_backends(list(settings.load_catalog().backends))


@pytest.fixture(scope="module")
def frames() -> VideoFrames:
    return VideoFrames(VIDEO)


@pytest.fixture
def client(tmp_path: Path, backends: Any) -> Iterator[TestClient]:
    app = router_app(
        tmp_path,
        backends,
        synthesis_backend=None,
        stream_file_roots=[SAMPLE_VIDEOS],
        stream_tick_s=0.2,
        reuse={"exploration": 0.0},
    )
    with TestClient(app) as test_client:
        yield test_client


def router_app(tmp_path: Path, backends: Any, **settings: Any) -> FastAPI:
    """The router on the real-image backends in this process, with a database in ``tmp_path``."""
    catalog, registry = backends
    configured = RouterSettings(database=tmp_path / "r.db", backends_config=REAL_CONFIG, backends=BACKENDS, **settings)
    return create_app(configured, catalog=catalog, backends=registry)


def register(client: TestClient, source: str = COUNT) -> str:
    response = client.post("/programs", json={"source": source, "kind": "open", "lambda": 0.001})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def jpeg(frames: VideoFrames, index: int) -> bytes:
    return encode_jpeg(frames[index])


def test_an_image_body_is_answered_as_its_base64_is(client, frames):
    program = register(client)
    image = jpeg(frames, 0)
    raw = client.post(
        "/answer",
        params={"program_id": program, "frame_id": "f0"},
        content=image,
        headers={"content-type": "image/jpeg"},
    )
    assert raw.status_code == 200, raw.text
    as_json = client.post("/answer", json={"program_id": program, "image": base64.b64encode(image).decode()})
    assert raw.json()["frame_id"] == "f0"
    assert raw.json()["answer"] == as_json.json()["answer"] and int(raw.json()["answer"]) >= 2  # people are there
    assert raw.json()["decision_id"] != as_json.json()["decision_id"]


@pytest.mark.parametrize(
    ("params", "content", "content_type", "status", "says"),
    [
        ({}, b"\xff\xd8", "image/jpeg", 422, "program_id is required"),
        ({"program_id": "p"}, b"", "image/png", 422, "the body is empty"),
        ({"program_id": "p"}, b"hello", "text/plain", 415, "content type 'text/plain'"),
        ({"program_id": "p", "camera": "a b"}, b"\xff\xd8", "image/jpeg", 422, "camera:"),
    ],
)
def test_a_bad_image_request_gets_a_4xx_naming_the_problem(client, params, content, content_type, status, says):
    response = client.post("/answer", params=params, content=content, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]


def test_a_corrupt_image_body_is_refused(client):
    program = register(client)
    response = client.post(
        "/answer", params={"program_id": program}, content=b"not a jpeg", headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 422 and response.json()["detail"].startswith("image:")


def test_a_multipart_batch_is_answered_in_order_each_frame_on_its_own(client, frames):
    program = register(client)
    files = [
        ("image", ("a.jpg", jpeg(frames, 0), "image/jpeg")),
        ("image", ("b.jpg", b"broken", "image/jpeg")),
        ("image", ("c.jpg", jpeg(frames, 300), "image/jpeg")),
    ]
    data = {"program_id": program, "frame_id": ["a", "b", "c"]}
    response = client.post("/answer", data=data, files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["frame_id"] for r in results] == ["a", "b", "c"]
    assert [r["status"] for r in results] == [200, 422, 200]
    assert results[1]["detail"].startswith("image:") and results[1]["result"] is None
    assert results[0]["result"]["frame_id"] == "a" and results[2]["result"]["frame_id"] == "c"
    mismatched = client.post("/answer", data={"program_id": program, "frame_id": ["a"]}, files=files)
    assert mismatched.status_code == 422 and "one per image" in mismatched.json()["detail"]


def test_a_cameras_unchanged_frame_reuses_the_last_answer_and_a_changed_one_runs(client, frames):
    program = register(client)

    def post(index: int) -> dict[str, Any]:
        response = client.post(
            "/answer",
            params={"program_id": program, "camera": "door-1"},
            content=jpeg(frames, index),
            headers={"content-type": "image/jpeg"},
        )
        assert response.status_code == 200, response.text
        return response.json()

    first, again, third = post(0), post(0), post(0)
    assert not first["reused"] and first["cost"] > 0
    for reused in (again, third):
        assert reused["reused"] and reused["reused_from"] == first["decision_id"]
        assert reused["cost"] == 0 and reused["trace"] == [] and reused["answer"] == first["answer"]
        assert reused["decision_id"] not in (first["decision_id"], again["decision_id"] if reused is third else "")
    moved = post(400)  # 40 s later: the people are elsewhere
    assert not moved["reused"] and moved["cost"] > 0
    other_camera = client.post(
        "/answer",
        params={"program_id": program, "camera": "door-2"},
        content=jpeg(frames, 400),
        headers={"content-type": "image/jpeg"},
    ).json()
    assert not other_camera["reused"]  # cameras do not share their last runs
    label = client.post("/feedback", json={"decision_id": again["decision_id"], "label": first["answer"]})
    assert label.status_code == 200, label.text  # a label for a reused frame is taken (it teaches the gate)
    samples = _metrics(client, "fmprog_reused_answers_total")
    assert samples[(("program", program),)] == 2


def _metrics(client: TestClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == name
    }


def _events(
    client: TestClient, stream_id: str, count: int, params: dict[str, Any] | None = None, **headers: str
) -> list[tuple[int, dict[str, Any]]]:
    """The first ``count`` events the stream's event stream sends (after ``Last-Event-ID``)."""
    events: list[tuple[int, dict[str, Any]]] = []
    event_id = None
    with client.stream("GET", f"/streams/{stream_id}/events", params=params, headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                events.append((event_id, json.loads(line[6:])))
                if len(events) == count:
                    break
    return events


def test_a_file_stream_is_answered_as_events_that_resume_after_the_last_id(client):
    program = register(client)
    started = client.post(f"/programs/{program}/streams", json={"source": f"file://{VIDEO}", "fps": 5})
    assert started.status_code == 201, started.text
    stream = started.json()
    assert stream["state"] == "running" and stream["owner"] and stream["fps"] == 5
    stream_id = stream["id"]
    wait_until(lambda: client.get(f"/streams/{stream_id}").json()["counters"]["answered"] >= 12, "12 frames answered")

    first = _events(client, stream_id, 10)
    assert [event_id for event_id, _ in first] == list(range(1, 11))
    assert [event["seq"] for _, event in first] == list(range(1, 11))
    frames_seen = [event["frame"] for _, event in first]
    assert frames_seen == sorted(frames_seen) and len(set(frames_seen)) == 10  # at 5 fps: every other frame
    assert all(event["frame"] % 1 == 0 and abs(event["pts"] - event["frame"] / 5) < 0.11 for _, event in first)
    for _, event in first:
        assert set(event) >= {"frame", "pts", "answer", "decision_id", "cost", "reused", "lag_s"}
        assert event["cost"] == 0 if event["reused"] else event["cost"] > 0

    resumed = _events(client, stream_id, 3, **{"Last-Event-ID": "6"})
    assert [event_id for event_id, _ in resumed] == [7, 8, 9]
    assert [event for _, event in resumed] == [event for _, event in first[6:9]]
    by_query = _events(client, stream_id, 1, params={"after": 9})
    assert by_query[0][0] == 10

    decision = first[0][1]["decision_id"]
    assert client.post("/feedback", json={"decision_id": decision, "label": "3"}).status_code == 200

    assert client.delete(f"/streams/{stream_id}").status_code == 204
    stopped = client.get(f"/streams/{stream_id}").json()
    assert stopped["state"] == "stopped" and stopped["owner"] is None
    counters = stopped["counters"]
    assert counters["answered"] >= 12 and counters["received"] >= counters["answered"]
    assert counters["reused"] + (counters["answered"] - counters["reused"]) == counters["answered"]
    total = counters["answered"]
    everything = _events(client, stream_id, total + 5)  # ends once stopped and every event is sent
    assert len(everything) == total
    assert client.delete(f"/streams/{stream_id}").status_code == 204  # stopping a stopped stream: nothing to do
    frames_metric = _metrics(client, "fmprog_stream_frames_total")
    assert frames_metric[(("outcome", "answered"), ("stream", stream_id))] == total
    assert [s["id"] for s in client.get("/streams", params={"program_id": program}).json()] == [stream_id]


def write_clip(path: Path, frames: VideoFrames, count: int) -> Path:
    """The first ``count`` frames of the video as a short clip (MPEG-4 at 10 fps), written with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 768, 576, "yuv420p"
        for index in range(count):
            for packet in video.encode(av.VideoFrame.from_ndarray(frames[index], format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    return path


def test_a_stream_of_a_file_ends_at_its_end_with_every_frame_answered_or_counted(tmp_path, backends, frames):
    clip = write_clip(tmp_path / "clip.avi", frames, 12)
    with TestClient(router_app(tmp_path, backends, stream_file_roots=[tmp_path], stream_tick_s=0.2)) as client:
        program = register(client)
        stream_id = client.post(f"/programs/{program}/streams", json={"source": clip.as_uri(), "fps": 10}).json()["id"]
        wait_until(lambda: client.get(f"/streams/{stream_id}").json()["state"] == "ended", "the stream ended")
        ended = client.get(f"/streams/{stream_id}").json()
        counters = ended["counters"]
        assert counters["received"] == 12 and ended["owner"] is None
        assert counters["answered"] + counters["dropped"] + counters["failed"] == 12
        events = _events(client, stream_id, 100)
        assert len(events) == counters["answered"]
        assert events[-1][1]["frame"] == 11 and events[-1][1]["pts"] == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("ftp://camera/live", "the scheme must be one of"),
        ("file:///etc/passwd", "files are allowed only under"),
        ("file://other-host/video.avi", "a file URL names a path on this host"),
        ("rtsp:///live", "names no host"),
        (f"file://{SAMPLE_VIDEOS}/no-such.avi", "no such file"),
    ],
)
def test_a_source_the_router_will_not_read_is_refused(client, source, says):
    program = register(client)
    response = client.post(f"/programs/{program}/streams", json={"source": source})
    assert response.status_code == 422 and says in response.json()["detail"], response.text


def test_streams_of_unknown_programs_and_unknown_streams_are_404(client):
    assert client.post("/programs/" + "0" * 32 + "/streams", json={"source": f"file://{VIDEO}"}).status_code == 404
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
        assert client.request(method, f"/streams/{'0' * 32}{path}").status_code == 404
    program = register(client)
    bad_fps = client.post(f"/programs/{program}/streams", json={"source": f"file://{VIDEO}", "fps": 0})
    assert bad_fps.status_code == 422


def test_deleting_a_program_stops_its_streams(client):
    program = register(client)
    stream_id = client.post(f"/programs/{program}/streams", json={"source": f"file://{VIDEO}", "fps": 5}).json()["id"]
    assert client.delete(f"/programs/{program}").status_code == 204
    assert client.get(f"/streams/{stream_id}").json()["state"] == "stopped"


def test_no_file_is_a_source_where_the_router_allows_no_directory(tmp_path, backends):
    with TestClient(router_app(tmp_path, backends)) as client:
        program = register(client)
        response = client.post(f"/programs/{program}/streams", json={"source": f"file://{VIDEO}"})
        assert response.status_code == 422 and "file sources are not allowed here" in response.json()["detail"]


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook: event 2 fails once with a 503, event 3 is always refused (400), the rest are taken."""

    received: ClassVar[list[tuple[int, dict[str, Any]]]] = []
    tries: ClassVar[Counter[int]] = Counter()

    def do_POST(self) -> None:
        seq = int(self.headers["x-fmprog-event"])
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Receiver.tries[seq] += 1
        status = 400 if seq == 3 else 503 if seq == 2 and Receiver.tries[seq] == 1 else 200
        if status == 200:
            Receiver.received.append((seq, body))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_streams_webhook_gets_every_event_once_retried_and_the_refused_one_is_a_dead_letter(
    tmp_path, backends, frames
):
    clip = write_clip(tmp_path / "clip.avi", frames, 12)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/events"
    try:
        with TestClient(router_app(tmp_path, backends, stream_file_roots=[tmp_path])) as client:
            program = register(client)
            body = {"source": clip.as_uri(), "fps": 10, "webhook": hook}
            stream_id = client.post(f"/programs/{program}/streams", json=body).json()["id"]
            wait_until(lambda: client.get(f"/streams/{stream_id}").json()["state"] == "ended", "the stream ended")
            answered = client.get(f"/streams/{stream_id}").json()["counters"]["answered"]
            wait_until(lambda: len(Receiver.received) == answered - 1, "every event but the refused one delivered")
            stream = client.get(f"/streams/{stream_id}").json()
            letters = client.get(f"/streams/{stream_id}/dead-letters").json()
            events = _events(client, stream_id, 100)
    finally:
        server.shutdown()
    assert stream["webhook"] == hook
    assert [seq for seq, _ in Receiver.received] == [seq for seq in range(1, answered + 1) if seq != 3]
    assert Receiver.tries[2] == 2 and Receiver.tries[3] == 1  # retried after a 503; a 400 is not retried
    assert [body for _, body in Receiver.received] == [event for seq, event in events if seq != 3]
    assert [(letter["seq"], letter["attempts"]) for letter in letters] == [(3, 1)]
    assert letters[0]["reason"].startswith("HTTP 400")
    assert stream["counters"]["webhook_failed"] == 1 and stream["counters"]["webhook_seq"] == answered


def test_a_router_at_its_stream_limit_leaves_a_new_stream_to_another(tmp_path, backends):
    app = router_app(tmp_path, backends, stream_file_roots=[SAMPLE_VIDEOS], stream_tick_s=0.2, max_streams=0)
    with TestClient(app) as client:
        program = register(client)
        stream = client.post(f"/programs/{program}/streams", json={"source": f"file://{VIDEO}"}).json()
        time.sleep(0.5)  # a few ticks: this router claims nothing
        again = client.get(f"/streams/{stream['id']}").json()
    assert stream["state"] == "running" and stream["owner"] is None
    assert again["owner"] is None and again["counters"]["answered"] == 0
