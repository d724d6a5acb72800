"""Over real HTTP (uvicorn), through the router's client: a request for a decision carries what the
algorithm reads of the frame (``fmprog.contract.frame_input``): nothing (an empty body) for one
that reads no pixels, the PNG of the thumbnail for one that reads only that, and the policy
decides on it as on the whole frame."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from fmprog.contract import Feedback, PolicySpec, frame_input
from fmprog.images import encode_png, thumbnail
from policy.app import create_app
from policy.settings import PolicySettings
from router.policy_client import HttpPolicyClient, PolicyRejected
from tests.servers import serving

SITES = [
    {"id": "find@3:4", "function": "detect", "backends": [{"name": "ds", "cost": 1}, {"name": "dl", "cost": 5}]},
    {"id": "query@4:8", "function": "vqa", "backends": [{"name": "vs", "cost": 2}, {"name": "vl", "cost": 9}]},
]
RAW = {"content-type": "application/octet-stream"}


def spec(algorithm: str) -> PolicySpec:
    return PolicySpec.model_validate({"sites": SITES, "lambda": 0.01, "algorithm": algorithm, "seed": 4})


@pytest.fixture
def served(tmp_path):
    """The policy service over real HTTP (uvicorn in a thread); no background training meanwhile."""
    settings = PolicySettings(state_dir=tmp_path / "served", max_request_bytes=1_000_000, train_interval_s=3600)
    with serving(create_app(settings)) as url:
        yield url


def test_an_algorithm_that_reads_no_pixels_decides_on_an_empty_body(served):
    assert frame_input(spec("cascade")).pixels == "none"
    client = HttpPolicyClient(served)
    client.register("a" * 32, spec("cascade"))
    decision = client.decide("a" * 32, "d1", None)
    assert decision.algorithm == "cascade" and decision.gates and set(decision.backends) == {"find@3:4", "query@4:8"}
    raw = httpx.post(f"{served}/policies/{'a' * 32}/decisions", params={"decision_id": "d2"}, content=b"", headers=RAW)
    assert raw.status_code == 200, raw.text
    assert httpx.get(f"{served}/policies/{'a' * 32}").json()["pending"] == 2
    client.close()


def test_an_algorithm_that_reads_pixels_refuses_an_empty_body(served):
    client = HttpPolicyClient(served)
    client.register("b" * 32, spec("fast"))
    url = f"{served}/policies/{'b' * 32}/decisions"
    refused = httpx.post(url, params={"decision_id": "d1"}, content=b"", headers=RAW)
    assert refused.status_code in (400, 422), refused.text
    assert "algorithm fast reads the frame: send one" in refused.json()["detail"]
    with pytest.raises(PolicyRejected, match="reads the frame"):
        client.decide("b" * 32, "d2", None)
    assert httpx.get(f"{served}/policies/{'b' * 32}").json()["pending"] == 0
    client.close()


def test_a_thumbnail_decides_as_the_whole_frame(served):
    """Two policies of one spec and seed, one sent each frame, the other its thumbnail (as PNG),
    with the same feedback after each decision: the same decisions throughout."""
    wanted = frame_input(spec("fast"))
    assert wanted.pixels == "thumbnail"
    client = HttpPolicyClient(served, timeout_s=30)
    whole, small = "c" * 32, "d" * 32
    prefix = {whole: "w", small: "t"}  # decision ids are unique across programs
    for program in (whole, small):
        client.register(program, spec("fast"))
    rng = np.random.default_rng(8)
    for i in range(8):
        frame = rng.integers(0, 256, size=(60 + i, 80 - i, 3), dtype=np.uint8)
        replies = {
            whole: client.decide(whole, f"w{i}", encode_png(frame)),
            small: client.decide(small, f"t{i}", encode_png(thumbnail(frame, wanted.side))),
        }
        assert replies[small].model_dump() == replies[whole].model_dump()
        chosen = replies[whole].backends["find@3:4"]
        loss = float(chosen == "ds" and frame.mean() > 127.5) + 0.25 * (i % 3)
        costs = {"find@3:4": 1.0 if chosen == "ds" else 5.0}
        for program in (whole, small):
            label = Feedback(decision_id=f"{prefix[program]}{i}", loss=loss, executed_sites=["find@3:4"], costs=costs)
            client.feedback(program, label)
    assert httpx.get(f"{served}/policies/{small}").json()["observed"] == 8
    client.close()
