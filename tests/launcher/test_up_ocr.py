"""Text reading end to end through ``fmprog up``: Ray Serve with a detector and both text readers,
the policy and the router as processes; a program with a ``read_text()`` call site registered over
the router's HTTP API, and frames with signs answered, routed, charged and traced."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from fmprog.images import encode_png
from launcher.process import StackProcess
from launcher.settings import StackSettings
from tests.signs import signs

ROOT = Path(__file__).resolve().parents[2]
CPU = ROOT / "fmprog" / "configs" / "synthetic.yaml"
BACKENDS = ["detect-large", "ocr-small", "ocr-large"]
PROGRAM = (ROOT / "examples" / "programs" / "read_sign.py").read_text()
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    settings = StackSettings.on_free_ports(config=CPU, backends=BACKENDS, state_dir=tmp_path_factory.mktemp("stack"))
    with StackProcess(settings):
        yield settings.router_url


def test_a_read_text_site_is_offered_the_text_readers(router):
    reply = httpx.post(f"{router}/programs", json={"source": PROGRAM, "kind": "open", "lambda": 1.0}, timeout=60)
    assert reply.status_code == 201, reply.text
    sites = {site["id"]: site for site in reply.json()["call_sites"]}
    assert sites["read_text@6:22"]["function"] == "ocr"
    offered = {c["name"]: c["cost"] for c in sites["read_text@6:22"]["candidates"]}
    assert offered == {"ocr-small": 0.4, "ocr-large": 4.0}


def test_frames_with_signs_are_answered_with_the_text_read(router):
    program = httpx.post(
        f"{router}/programs",
        json={
            "source": PROGRAM,
            "kind": "open",
            "lambda": 1.0,
            "backends": {"detect": ["detect-large"], "ocr": ["ocr-large"]},
        },
        timeout=60,
    ).json()
    circled = [s for s in signs(40, start=300) if s.obj.shape == "circle"][:3]
    right = 0
    for sign in circled:
        image = base64.b64encode(encode_png(sign.scene.image)).decode()
        reply = httpx.post(f"{router}/answer", json={"program_id": program["id"], "image": image}, timeout=60)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["error"] is None, answer["error"]
        right += answer["answer"] == sign.text
        if answer["answer"] != "no sign":
            assert answer["decision"]["read_text@6:22"] == "ocr-large"
            assert [(call["function"], call["backend"]) for call in answer["trace"]] == [
                ("detect", "detect-large"),
                ("ocr", "ocr-large"),
            ]
            assert answer["cost"] == pytest.approx(sum(call["cost"] for call in answer["trace"]))
    assert right >= 2, f"read {right} of {len(circled)} signs"
