"""Over real HTTP: a policy that keeps timing out is skipped for a cool-down (its circuit opens), so
frames stop waiting for it; after the cool-down one frame tries it again and, answered, closes it.
A refusal (4xx) is an answer and never opens it, and a frame the router refuses itself (a
decompression bomb) never reaches the policy at all."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from fmprog.backends import BackendCatalog
from fmprog.contract import PolicyDecision, PolicySpec
from fmprog.images import encode_png
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app
from router.settings import RouterSettings
from tests.bad_frames import BOMBS
from tests.fakes import box
from tests.router.conftest import example
from tests.servers import serving


@dataclass
class SlowPolicy:
    """A policy service that chooses the largest backends, and can be made to hang on decisions."""

    slow: bool = False
    ready: bool = True
    decisions_asked: int = 0
    in_flight: int = 0
    most_in_flight: int = 0  # decisions being made at once, at most
    specs: dict[str, PolicySpec] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/readyz")
        def ready() -> Response:
            return Response(status_code=200 if self.ready else 503)

        @app.post("/policies/check")
        def check() -> dict[str, str]:
            return {}

        @app.put("/policies/{program_id}")
        async def put(program_id: str, request: Request) -> dict[str, str]:
            self.specs[program_id] = PolicySpec.model_validate_json(await request.body())
            return {}

        @app.post("/policies/{program_id}/decisions")
        def decide(program_id: str) -> PolicyDecision:
            with self.lock:
                self.decisions_asked += 1
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.slow:
                time.sleep(1.0)
            with self.lock:
                self.in_flight -= 1
            spec = self.specs[program_id]
            return PolicyDecision(algorithm="fake", backends={site.id: site.largest for site in spec.sites})

        return app


def _metric(router: str, line: str) -> bool:
    return line in httpx.get(f"{router}/metrics").text


def test_a_policy_that_keeps_timing_out_is_skipped_for_a_cool_down(tmp_path, zoo):
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    policy = SlowPolicy()
    frame = {"image": base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()}
    with serving(policy.app()) as policy_url:
        settings = RouterSettings(
            database=tmp_path / "router.db",
            policy_url=policy_url,
            policy_timeout_s=0.3,
            policy_breaker_failures=2,
            policy_breaker_reset_s=30.0,
            policy_probe_s=0.1,
            synthesis_backend=None,
            outbox_retry_s=3600,
        )
        app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
        with serving(app) as router:
            body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.1}
            program = httpx.post(f"{router}/programs", json=body).json()
            frame["program_id"] = program["id"]

            def answer() -> bool:
                reply = httpx.post(f"{router}/answer", json=frame, timeout=30)
                assert reply.status_code == 200, reply.text
                return reply.json()["fallback"]

            assert answer() is False and policy.decisions_asked == 1
            policy.slow, policy.ready = True, False
            assert [answer(), answer()] == [True, True]  # two timeouts in a row: the circuit opens
            assert policy.decisions_asked == 3
            assert _metric(router, "fmprog_policy_circuit_open 1.0")
            assert [answer(), answer(), answer()] == [True, True, True]
            assert policy.decisions_asked == 3  # skipped: these frames did not wait for it
            pid = program["id"]
            assert _metric(router, f'fmprog_fallbacks_total{{program="{pid}",reason="policy_open_circuit"}} 3.0')
            assert _metric(router, f'fmprog_fallbacks_total{{program="{pid}",reason="policy_unavailable"}} 2.0')

            policy.slow, policy.ready = (
                False,
                True,
            )  # ready again: the probe lets one frame try the policy (half-open), long before 30 s
            deadline = time.monotonic() + 20
            while answer() is True:
                assert time.monotonic() < deadline, "the policy was not asked again after it became ready"
                time.sleep(0.05)
            assert policy.decisions_asked == 4
            assert _metric(router, "fmprog_policy_circuit_open 0.0")
            assert answer() is False and policy.decisions_asked == 5


def test_the_breaker_does_not_ask_the_policy_one_frame_at_a_time(tmp_path, zoo):
    """Concurrent frames wait for their decisions together, not in turn behind the breaker."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    policy = SlowPolicy(slow=True)  # each decision takes 1 s
    frame = {"image": base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()}
    with serving(policy.app()) as policy_url:
        settings = RouterSettings(
            database=tmp_path / "router.db", policy_url=policy_url, policy_timeout_s=5, synthesis_backend=None
        )
        app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
        with serving(app) as router:
            body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.1}
            frame["program_id"] = httpx.post(f"{router}/programs", json=body).json()["id"]
            with ThreadPoolExecutor(max_workers=3) as pool:
                replies = list(pool.map(lambda _: httpx.post(f"{router}/answer", json=frame, timeout=30), range(3)))
            assert [r.json()["fallback"] for r in replies] == [False] * 3
            assert policy.most_in_flight == 3  # in turn, it would be 1


def _router_app(tmp_path, policy_url: str, zoo):
    """A router on ``policy_url`` whose policy circuit opens after two failures in a row."""
    settings = RouterSettings(
        database=tmp_path / "router.db",
        policy_url=policy_url,
        policy_breaker_failures=2,
        policy_breaker_reset_s=60,
        synthesis_backend=None,
        program_workers=0,
        outbox_retry_s=3600,
    )
    return create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())


def test_bomb_frames_neither_reach_the_policy_nor_open_its_circuit(tmp_path, zoo):
    """The blast radius of a bad frame: the router refuses it (422) from its header before asking
    the real policy service, so one client's bombs never make other clients' frames fallbacks."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    policy_app = create_policy_app(PolicySettings(state_dir=tmp_path / "policy", train_interval_s=3600))
    good = {"image": base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()}
    with serving(policy_app) as policy_url:
        app = _router_app(tmp_path, policy_url, zoo)
        with serving(app) as router:
            body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.1, "algorithm": "fast"}
            program_id = httpx.post(f"{router}/programs", json=body).json()["id"]
            for name, (make, size) in BOMBS.items():
                reply = httpx.post(
                    f"{router}/answer?program_id={program_id}",
                    content=make(),
                    headers={"content-type": "image/png"},
                    timeout=30,
                )
                assert reply.status_code == 422, (name, reply.text)
                assert f"image is {size}, more than the limit" in reply.json()["detail"]
            reply = httpx.post(f"{router}/answer", json={**good, "program_id": program_id}, timeout=30)
            assert reply.status_code == 200 and reply.json()["fallback"] is False, reply.text
            assert _metric(router, "fmprog_policy_circuit_open 0.0")
            assert httpx.get(f"{policy_url}/policies/{program_id}").json()["pending"] == 1  # the good frame only


def test_a_policy_refusing_decisions_with_4xx_never_opens_its_circuit(tmp_path, zoo):
    """A 4xx from the policy is its answer about the request (the caller's bad input), not a
    failure of the policy: however many in a row, every frame still asks it. Only 5xx, timeouts
    and lost connections count toward the breaker."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.set_vqa(lambda image, question: "yes")
    policy = SlowPolicy()
    refusing = {"status": 422}
    app_of_policy = policy.app()

    @app_of_policy.middleware("http")
    async def refuse_decisions(request: Request, call_next):  # type: ignore[no-untyped-def]
        if request.url.path.endswith("/decisions") and refusing["status"]:
            policy.decisions_asked += 1
            return JSONResponse({"detail": "image: not a frame this policy reads"}, status_code=refusing["status"])
        return await call_next(request)

    frame = {"image": base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()}
    with serving(app_of_policy) as policy_url:
        app = _router_app(tmp_path, policy_url, zoo)
        with serving(app) as router:
            body = {"source": example("person_on_bike"), "kind": "binary", "lambda": 0.1}
            frame["program_id"] = pid = httpx.post(f"{router}/programs", json=body).json()["id"]
            for status in (422, 404, 400, 413):
                refusing["status"] = status
                reply = httpx.post(f"{router}/answer", json=frame, timeout=30)
                assert reply.status_code == 200 and reply.json()["fallback"] is True, reply.text
            assert policy.decisions_asked == 4  # every frame asked: the circuit never opened
            assert _metric(router, "fmprog_policy_circuit_open 0.0")
            assert _metric(router, f'fmprog_fallbacks_total{{program="{pid}",reason="policy_rejected"}} 4.0')
            assert 'reason="policy_open_circuit"' not in httpx.get(f"{router}/metrics").text
            refusing["status"] = 0
            reply = httpx.post(f"{router}/answer", json=frame, timeout=30)
            assert reply.json()["fallback"] is False and policy.decisions_asked == 5
            refusing["status"] = 503  # a failure of the policy: two in a row open the circuit
            assert [httpx.post(f"{router}/answer", json=frame, timeout=30).json()["fallback"] for _ in range(3)] == [
                True
            ] * 3
            assert policy.decisions_asked == 7
            assert _metric(router, "fmprog_policy_circuit_open 1.0")
