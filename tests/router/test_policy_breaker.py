"""Over real HTTP: a policy that keeps timing out is skipped for a cool-down (its circuit opens), so
frames stop waiting for it; after the cool-down one frame tries it again and, answered, closes it."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
from fastapi import FastAPI, Request

from fmprog.backends import BackendCatalog
from fmprog.contract import PolicyDecision, PolicySpec
from fmprog.images import encode_png
from router.app import create_app
from router.settings import RouterSettings
from tests.fakes import box
from tests.router.conftest import example
from tests.servers import serving


@dataclass
class SlowPolicy:
    """A policy service that chooses the largest backends, and can be made to hang on decisions."""

    slow: bool = False
    decisions_asked: int = 0
    specs: dict[str, PolicySpec] = field(default_factory=dict)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/readyz")
        def ready() -> dict[str, str]:
            return {"status": "ready"}

        @app.post("/policies/check")
        def check() -> dict[str, str]:
            return {}

        @app.put("/policies/{program_id}")
        async def put(program_id: str, request: Request) -> dict[str, str]:
            self.specs[program_id] = PolicySpec.model_validate_json(await request.body())
            return {}

        @app.post("/policies/{program_id}/decisions")
        def decide(program_id: str) -> PolicyDecision:
            self.decisions_asked += 1
            if self.slow:
                time.sleep(1.0)
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
            policy_breaker_reset_s=1.0,
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
            policy.slow = True
            assert [answer(), answer()] == [True, True]  # two timeouts in a row: the circuit opens
            assert policy.decisions_asked == 3
            assert _metric(router, "fmprog_policy_circuit_open 1.0")
            assert [answer(), answer(), answer()] == [True, True, True]
            assert policy.decisions_asked == 3  # skipped: these frames did not wait for it
            pid = program["id"]
            assert _metric(router, f'fmprog_fallbacks_total{{program="{pid}",reason="policy_open_circuit"}} 3.0')
            assert _metric(router, f'fmprog_fallbacks_total{{program="{pid}",reason="policy_unavailable"}} 2.0')

            policy.slow = False
            time.sleep(1.2)  # the cool-down: then one frame tries the policy again
            assert answer() is False and policy.decisions_asked == 4
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
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=3) as pool:
                replies = list(pool.map(lambda _: httpx.post(f"{router}/answer", json=frame, timeout=30), range(3)))
            assert [r.json()["fallback"] for r in replies] == [False] * 3
            assert time.perf_counter() - started < 2.5  # in turn: more than 3 s
