"""Integration: the largest frame the router accepts is answered by a backend served by a real
Ray Serve (the router re-encodes the frame as an uncompressed PNG for the backend's route), and a
frame one row over the limit is refused by the router at once, before any backend call."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fmprog.images import MAX_IMAGE_PIXELS
from router.app import create_app
from router.settings import RouterSettings
from services.cluster import ServeSettings, free_port, serve_backends

ROOT = Path(__file__).resolve().parents[2]
CPU_CONFIG = ROOT / "fmprog" / "configs" / "synthetic.yaml"
pytestmark = pytest.mark.timeout(600)

SOURCE = """def execute_command(image):
    image_patch = ImagePatch(image)
    return "yes" if image_patch.exists("circle") else "no"
"""


@pytest.fixture(scope="module")
def serve_url():
    settings = ServeSettings(config=CPU_CONFIG, port=free_port(), num_cpus=2, backends=["detect-small"])
    with serve_backends(settings) as served:
        yield served.base_url


def _png(height: int, width: int) -> bytes:
    """A compressed PNG (small on the wire to the router; the router sends it uncompressed)."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[height // 4 : height // 2, width // 4 : width // 2] = (200, 30, 30)
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def test_the_largest_frame_is_answered_and_one_over_is_refused_at_once(serve_url, tmp_path):
    side = 4096
    assert side * side == MAX_IMAGE_PIXELS
    settings = RouterSettings(
        database=tmp_path / "router.db",
        backends_config=CPU_CONFIG,
        backends=["detect-small"],
        serve_url=serve_url,
        synthesis_backend=None,
        backend_retries=0,
    )
    with TestClient(create_app(settings)) as client:
        response = client.post("/programs", json={"source": SOURCE, "kind": "binary", "lambda": 0.001})
        assert response.status_code == 201, response.text
        program_id = response.json()["id"]

        def answer(image: bytes):
            files = {"image": ("frame.png", image, "image/png")}
            return client.post("/answer", data={"program_id": program_id}, files=files)

        largest = answer(_png(side, side))
        assert largest.status_code == 200, largest.text
        trace = largest.json()["trace"]
        assert largest.json()["error"] is None, largest.text
        assert [(i["backend"], i["ok"]) for i in trace] == [("detect-small", True)], trace

        started = time.perf_counter()
        over = answer(_png(side + 1, side))
        assert time.perf_counter() - started < 2
        assert over.status_code == 422, over.text
        assert over.json()["detail"] == (
            f"image: image is {side}x{side + 1}, more than the limit of {MAX_IMAGE_PIXELS} pixels (width x height)"
        )
