"""Integration: the default configuration (fmprog/configs/synthetic.yaml) served by a real local Ray Serve,
every backend called over HTTP through the Serve proxy and through a DeploymentHandle, with real
models answering generated frames (the text readers read the signs drawn on objects)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from fmprog.backends import BackendRegistry, Function
from fmprog.backends.base import box_iou
from fmprog.backends.frames import FramePart
from fmprog.images import encode_base64_png, encode_png
from fmprog.program import Executor, compile_program
from fmprog.scene import generate_scene
from services.client import SHARE_FRAMES_FROM_BYTES, BackendCallError, HandleBackend, HttpBackend
from services.cluster import ServeSettings, free_port, serve_backends
from tests.signs import signs

ROOT = Path(__file__).resolve().parents[2]
CPU_CONFIG = ROOT / "fmprog" / "configs" / "synthetic.yaml"
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster():
    settings = ServeSettings(config=CPU_CONFIG, port=free_port(), num_cpus=2)
    with serve_backends(settings) as served:
        yield served


@pytest.fixture(scope="module")
def http(cluster):
    clients = {spec.name: HttpBackend(spec, cluster.base_url) for spec in cluster.catalog.backends}
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="module")
def handles(cluster):
    return {spec.name: HandleBackend(spec, cluster.handles[spec.name]) for spec in cluster.catalog.backends}


def _same_boxes(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose([d.box for d in a], [d.box for d in b], atol=0.02)


def _easy_scenes(n: int, start: int = 1000):
    return [generate_scene(start + i, "easy") for i in range(n)]


def test_every_backend_is_deployed_and_healthy(cluster, http):
    assert set(cluster.handles) == {spec.name for spec in cluster.catalog.backends}
    for name, client in http.items():
        health = client.health()
        assert health["status"] == 200, health
        assert health["healthy"] is True
        assert health["engine"] == cluster.catalog.get(name).engine.kind
        assert health["peak_rss_mb"] > 0


@pytest.mark.parametrize("backend", ["detect-small", "detect-large"])
def test_detectors_find_the_named_object_over_http_and_handle(http, handles, backend):
    scenes = _easy_scenes(12)
    hits = 0
    for scene in scenes:
        target = max(scene.objects, key=lambda o: o.visibility)
        noun = f"{target.color} {target.shape}"
        over_http = http[backend].model().detect(scene.image, noun)
        through_handle = handles[backend].model().detect(scene.image, noun)
        _same_boxes(over_http, through_handle)
        wanted = [o for o in scene.objects if o.color == target.color and o.shape == target.shape]
        if over_http and any(box_iou(over_http[0].box, o.box) >= 0.5 for o in wanted):
            hits += 1
    assert hits >= 9, f"{backend}: the top box matched a named object on {hits} of {len(scenes)} easy frames"


@pytest.mark.parametrize("backend", ["vqa-small", "vqa-large"])
def test_vqa_answers_about_crops_and_frames_over_http_and_handle(http, handles, backend):
    scenes = _easy_scenes(12, start=2000)
    right = 0
    for scene in scenes:
        target = max(scene.objects, key=lambda o: o.visibility)
        x0, y0, x1, y1 = target.box
        crop = np.ascontiguousarray(scene.image[y0:y1, x0:x1])
        answer = http[backend].model().vqa(crop, "What color is this?")
        assert answer == handles[backend].model().vqa(crop, "What color is this?")
        right += answer == target.color
    assert right >= 9, f"{backend}: {right} of {len(scenes)} colours right on easy crops"
    scene = scenes[0]
    count = sum(o.shape == scene.objects[0].shape for o in scene.objects)
    answer = http[backend].model().vqa(scene.image, f"How many {scene.objects[0].shape}s are there?")
    assert answer.isdigit(), answer
    assert abs(int(answer) - count) <= 1


def test_llms_answer_over_http_and_handle(http, handles):
    prompt = "What is 2 + 3? Answer with a number only."
    assert "5" in http["llm-large"].model().llm(prompt)
    for backend in ("llm-small", "llm-large"):
        over_http = http[backend].model().llm("Name one primary colour.")
        assert over_http.strip()
        assert handles[backend].model().llm("Name one primary colour.") == over_http


# Tesseract (ocr-small) reads a sign cut out; PP-OCR (ocr-large) finds it on the whole object.
@pytest.mark.parametrize(("backend", "view", "least"), [("ocr-small", "plate", 4), ("ocr-large", "crop", 5)])
def test_text_readers_read_signs_over_http_and_handle(http, handles, backend, view, least):
    found = signs(6, start=200)
    images = [getattr(s, view) for s in found]
    read = [http[backend].model().ocr(image) for image in images]
    assert read == [handles[backend].model().ocr(image) for image in images]
    right = sum(answer == s.text for answer, s in zip(read, found, strict=True))
    assert right >= least, f"{backend}: {[(s.text, answer) for answer, s in zip(read, found, strict=True)]}"
    assert http[backend].model().ocr(np.full((40, 60, 3), 90, np.uint8)) == ""


def test_concurrent_calls_are_batched_and_answered_like_single_calls(http):
    client = http["detect-small"]
    scenes = _easy_scenes(24, start=3000)
    singles = [client.model().detect(s.image, "object") for s in scenes]
    payloads = [{"image": encode_base64_png(s.image), "noun": "object"} for s in scenes]
    with ThreadPoolExecutor(max_workers=24) as pool:
        replies = list(pool.map(lambda p: client.reply(Function.detect, p), payloads))
    assert max(r.batch_size for r in replies) > 1, "no two concurrent calls were batched"
    for reply, single in zip(replies, singles, strict=True):
        _same_boxes(reply.detections, single)


def test_bad_requests_get_a_clear_4xx(cluster):
    base = cluster.base_url
    image = encode_base64_png(np.zeros((8, 8, 3), np.uint8))
    cases = [
        ("/detect-small/detect", {"image": "%%%", "noun": "circle"}, 422, "image: image is not valid base64"),
        ("/detect-small/detect", {"image": image}, 422, "body.noun: Field required"),
        ("/detect-small/vqa", {"image": image, "question": "What is this?"}, 404, "serves detect, not vqa"),
        ("/llm-small/llm", {"prompt": ""}, 422, "body.prompt"),
        ("/vqa-small/vqa", {"image": image, "question": "q", "extra": 1}, 422, "body.extra"),
        ("/ocr-small/ocr", {"image": "%%%"}, 422, "image: image is not valid base64"),
        ("/ocr-large/ocr", {}, 422, "body.image: Field required"),
        ("/ocr-large/ocr", {"image": image, "question": "What does it say?"}, 422, "body.question"),
        ("/ocr-small/detect", {"image": image, "noun": "sign"}, 404, "serves ocr, not detect"),
        ("/detect-small/ocr", {"image": image}, 404, "serves detect, not ocr"),
    ]
    for path, body, status, message in cases:
        response = httpx.post(base + path, json=body, timeout=30)
        assert response.status_code == status, (path, response.text)
        assert message in response.json()["detail"], (path, response.text)
    assert httpx.get(base + "/no-such-backend/healthz", timeout=30).status_code == 404


def test_handle_rejects_a_non_frame(handles):
    with pytest.raises(BackendCallError, match="H x W x 3 uint8") as refused:
        handles["vqa-small"].reply(Function.vqa, np.zeros((4, 4), np.float32), "What is this?")
    assert not refused.value.retryable  # the same call gets the same refusal


def test_concurrent_handle_calls_share_requests_and_answer_like_single_calls(handles):
    client = handles["detect-small"]
    scenes = _easy_scenes(24, start=3100)
    singles = [client.model().detect(s.image, "object") for s in scenes]
    before = client.health()
    with ThreadPoolExecutor(max_workers=24) as pool:
        replies = list(pool.map(lambda s: client.reply(Function.detect, s.image, "object"), scenes))
    after = client.health()
    assert max(r.batch_size for r in replies) > 1, "no two concurrent calls went together"
    assert after["calls"] - before["calls"] == 24
    assert after["batches"] - before["batches"] < 24
    for reply, single in zip(replies, singles, strict=True):
        _same_boxes(reply.detections, single)


def test_a_large_frame_goes_once_through_the_object_store_and_answers_as_over_http(cluster, http):
    """A 768x768 frame (above the size worth sharing): each run puts it into Ray's object store
    once, every call sends its crop as a place in it, and the answers are those over HTTP."""
    import ray

    puts = []

    def put(frame):
        puts.append(frame.shape)
        return ray.put(frame)

    through = {
        spec.name: HandleBackend(spec, cluster.handles[spec.name], put=put).model() for spec in cluster.catalog.backends
    }
    over_http = {name: client.model() for name, client in http.items()}
    program = compile_program(PROGRAM)
    decision = {site.id: f"{site.function.value}-large" for site in program.call_sites}
    for scene in _easy_scenes(3, start=4100):
        frame = np.ascontiguousarray(scene.image.repeat(6, axis=0).repeat(6, axis=1))  # 128 -> 768 pixels
        assert frame.nbytes >= SHARE_FRAMES_FROM_BYTES
        before = len(puts)
        traces = [
            Executor(BackendRegistry.from_specs(list(cluster.catalog.backends), models)).run(program, frame, decision)
            for models in (through, over_http)
        ]
        assert len(puts) == before + 1, "the frame was not put exactly once for the run"
        assert traces[0].error is None, traces[0].error
        assert traces[0].answer == traces[1].answer
        assert len(traces[0].invocations) == len(traces[1].invocations) >= 2
    # a part of a stored frame through the single-call method too: the crop it names is answered
    crop = frame[96:480, 192:576]
    part = FramePart(ray.put(frame), (96, 192, 384, 384))
    alone = cluster.handles["vqa-large"].vqa.remote(part, "What color is this?").result()
    assert alone.text == over_http["vqa-large"].vqa(np.ascontiguousarray(crop), "What color is this?")


def test_a_failing_call_fails_alone_within_its_handle_request(cluster):
    client = HandleBackend(cluster.catalog.get("llm-small"), cluster.handles["llm-small"])
    too_long = "cat " * 4500  # beyond llm-small's 2048-token context
    replies = client._send([(too_long,), ("Say hello.",), ("Name a shape.",)])  # one request, three calls
    assert isinstance(replies[0], BackendCallError) and replies[0].retryable
    assert "llm-small" in str(replies[0])
    assert all(r.text for r in replies[1:])


PROGRAM = """
def execute_command(image):
    image_patch = ImagePatch(image)
    shapes = image_patch.find("object")
    if not shapes:
        return "no"
    leftmost = sorted(shapes, key=lambda s: s.horizontal_center)[0]
    return leftmost.simple_query("What color is this?")
"""


def test_a_program_runs_against_the_served_backends(cluster, http):
    registry = BackendRegistry.from_specs(
        list(cluster.catalog.backends), {name: client.model() for name, client in http.items()}
    )
    program = compile_program(PROGRAM)
    decision = {site.id: f"{site.function.value}-large" for site in program.call_sites}
    executor = Executor(registry)
    right = 0
    scenes = _easy_scenes(6, start=4000)
    for scene in scenes:
        trace = executor.run(program, scene.image, decision)
        assert trace.error is None, trace.error
        assert {i.backend for i in trace.invocations} == {"detect-large", "vqa-large"}
        leftmost = min(scene.objects, key=lambda o: o.center[0])
        right += trace.answer == leftmost.color
    assert right >= 4, f"{right} of {len(scenes)} programs answered the leftmost object's colour"


def test_a_program_reads_a_sign_through_the_served_backends(cluster, http):
    registry = BackendRegistry.from_specs(
        list(cluster.catalog.backends), {name: client.model() for name, client in http.items()}
    )
    program = compile_program((ROOT / "examples" / "programs" / "read_sign.py").read_text())
    decision = {site.id: f"{site.function.value}-large" for site in program.call_sites}
    circled = [s for s in signs(40, start=300) if s.obj.shape == "circle"][:4]
    assert len(circled) == 4
    right = 0
    for sign in circled:
        trace = Executor(registry).run(program, sign.scene.image, decision)
        assert trace.error is None, trace.error
        right += trace.answer == sign.text
        if trace.answer != "no sign":
            assert [i.function for i in trace.invocations] == [Function.detect, Function.ocr]
            assert trace.cost == pytest.approx(cluster.catalog.get("detect-large").cost + 4.0)
    assert right >= 2, f"read {right} of {len(circled)} signs on circles"


def test_a_failing_call_fails_alone_within_its_batch(cluster):
    too_long = "cat " * 4500  # within the request limit, beyond llm-small's 2048-token context
    bodies = [{"prompt": too_long}, {"prompt": "Say hello."}, {"prompt": "Name a shape."}]
    with ThreadPoolExecutor(max_workers=3) as pool:
        responses = list(
            pool.map(lambda b: httpx.post(f"{cluster.base_url}/llm-small/llm", json=b, timeout=120), bodies)
        )
    assert responses[0].status_code == 503
    assert "llm-small" in responses[0].json()["detail"]
    assert [r.status_code for r in responses[1:]] == [200, 200]
    assert all(r.json()["text"] for r in responses[1:])


def test_a_router_with_handles_answers_through_the_served_backends(cluster, tmp_path):
    """The router's ``handle`` transport: every backend reached through its DeploymentHandle (this
    process is already a driver of the cluster), answers recorded as over HTTP."""
    from fastapi.testclient import TestClient

    from router.app import create_app
    from router.settings import RouterSettings

    settings = RouterSettings(
        database=tmp_path / "router.db",
        backends_config=CPU_CONFIG,
        backends=["detect-large", "vqa-large", "detect-small", "vqa-small"],
        synthesis_backend=None,
        backend_transport="handle",
        ray_address=cluster.ray_address,
        program_workers=1,
    )
    with TestClient(create_app(settings)) as client:
        assert set(client.app.state.service.answerer.executor.backends) == set(settings.backends)
        program = client.post("/programs", json={"source": PROGRAM, "kind": "open"})
        assert program.status_code == 201, program.text
        right = 0
        for scene in _easy_scenes(4, start=4200):
            reply = client.post(
                "/answer",
                params={"program_id": program.json()["id"]},
                content=encode_png(scene.image),
                headers={"content-type": "image/png"},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["error"] is None
            assert [call["backend"] for call in reply.json()["trace"]] == ["detect-small", "vqa-small"]
            right += reply.json()["answer"] == min(scene.objects, key=lambda o: o.center[0]).color
        assert right >= 2


def test_a_backend_without_a_serve_application_is_called_over_http(cluster, tmp_path):
    from fmprog.backends import BackendCatalog, BackendSpec
    from router.settings import RouterSettings
    from router.transport import connect

    elsewhere = BackendSpec(name="detect-elsewhere", function=Function.detect, cost=1)
    catalog = BackendCatalog(backends=[cluster.catalog.get("detect-small"), elsewhere])
    settings = RouterSettings(
        database=tmp_path / "router.db",
        backend_transport="handle",
        ray_address=cluster.ray_address,
        serve_url=cluster.base_url,
        synthesis_backend=None,
    )
    transport = connect(catalog, settings)
    try:
        assert transport.kinds == {"detect-small": "handle", "detect-elsewhere": "http"}
        with pytest.raises(BackendCallError, match="HTTP 404"):  # the proxy has no such application
            transport.backends["detect-elsewhere"].model.detect(np.zeros((8, 8, 3), np.uint8), "cup")
    finally:
        transport.close()
    import ray

    assert ray.is_initialized()  # a driver that was already connected stays connected
