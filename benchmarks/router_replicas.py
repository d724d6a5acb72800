"""``POST /answer`` throughput with one router and with two routers on one PostgreSQL database.

The routers run as processes (``python -m benchmarks.router_replicas serve``) with stub backends
in process (a detector and a VQA model that answer from the frame's pixels at once), programs run
in the router's own process, and one policy service process decides for both; so what is measured
is the router itself, its store on PostgreSQL and the policy's round trip, not the models. The same
frames go to one router, then, split between them, to two, from the same number of clients; both
routers run throughout, and the two measurements alternate for ``--rounds`` rounds (medians).

Everything shares this machine's cores (PostgreSQL, the policy, the routers and the clients), so
the ratio says how much a second router process gains on this machine, not on a cluster where each
replica has cores of its own.

    .venv/bin/python -m benchmarks.router_replicas [--frames 600] [--clients 16] [--rounds 5] [--database URL]
        [--out benchmarks/results/router_replicas.json]

Without ``--database`` a throwaway PostgreSQL server is started (Debian's ``postgresql`` binaries,
as the tests do).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from benchmarks.provenance import provenance
from benchmarks.router_http import stream_answers
from fmprog.backends import BackendCatalog, BackendRegistry, BackendSpec, Detection, Function
from fmprog.images import encode_png
from services.cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "examples" / "programs" / "person_on_bike.py"
OUT = ROOT / "benchmarks" / "results" / "router_replicas.json"
COSTS = {"detect-small": 172.0, "detect-large": 232.0, "vqa-small": 3750.0, "vqa-large": 73400.0}


# -- a router with stub backends, as a process -------------------------------------------------------


class StubDetector:
    """A person and a bicycle when the frame's red channel is bright enough; no model."""

    def detect(self, image: np.ndarray, noun: str) -> list[Detection]:
        if float(image[..., 0].mean()) < 64:
            return []
        return [Detection(box=(10.0, 10.0, 40.0, 60.0), score=0.9)]


class StubVQA:
    """Yes when the frame's green channel is bright; no model."""

    def vqa(self, image: np.ndarray, question: str) -> str:
        return "yes" if float(image[..., 1].mean()) >= 128 else "no"


def stub_backends() -> tuple[BackendCatalog, BackendRegistry]:
    specs = [BackendSpec(name=name, function=Function(name.split("-")[0]), cost=cost) for name, cost in COSTS.items()]
    models = {name: StubDetector() if name.startswith("detect") else StubVQA() for name in COSTS}
    return BackendCatalog(backends=specs), BackendRegistry.from_specs(specs, models)


def serve(port: int, database: str, policy_url: str) -> None:
    """Run one router on 127.0.0.1:``port`` until SIGTERM (settings from FMPROG_ROUTER_* too)."""
    import uvicorn

    from router.app import create_app
    from router.settings import RouterSettings

    catalog, backends = stub_backends()
    settings = RouterSettings(
        database=database, policy_url=policy_url, port=port, synthesis_backend=None, program_workers=0
    )
    app = create_app(settings, catalog=catalog, backends=backends)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def frame(i: int) -> str:
    """Frame ``i`` of a deterministic stream (base64 PNG), mixing the stubs' yes and no answers."""
    rng = np.random.default_rng(i)
    image = np.full((48, 64, 3), 0, np.uint8)
    image[..., 0] = 200 if i % 3 else 20  # a third of the frames have no bicycle
    image[..., 1] = 200 if i % 4 < 2 else 40  # half say yes when asked
    image[..., 2] = rng.integers(0, 255)
    return base64.b64encode(encode_png(image)).decode("ascii")


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url}/readyz did not answer")


class Service:
    """A service as a child process on a free port of 127.0.0.1 (``kill`` sends SIGKILL)."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(self.url, self.process)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def child_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMPROG_ROUTER_", "FMPROG_POLICY_"))}
    return {**env, "PYTHONPATH": str(ROOT), **variables}


def start_policy(state_dir: Path) -> Service:
    port = free_port()
    env = child_env(FMPROG_POLICY_STATE_DIR=str(state_dir), FMPROG_POLICY_TRAIN_INTERVAL_S="3600")
    command = [sys.executable, "-m", "uvicorn", "--factory", "policy.app:create_app", "--port", str(port)]
    command += ["--log-level", "warning"]
    state_dir.mkdir(parents=True, exist_ok=True)
    return Service(command, env, port, state_dir / "policy.log")


def start_router(database: str, policy_url: str, log: Path, **settings: str) -> Service:
    """A router with stub backends; ``settings`` are FMPROG_ROUTER_* variables (outbox_retry_s=...)."""
    port = free_port()
    env = child_env(**{f"FMPROG_ROUTER_{k.upper()}": v for k, v in settings.items()})
    command = [sys.executable, "-m", "benchmarks.router_replicas", "serve", "--port", str(port)]
    command += ["--database", database, "--policy-url", policy_url]
    return Service(command, env, port, log)


@contextlib.contextmanager
def stopping(*services: Service) -> Iterator[None]:
    try:
        yield
    finally:
        for service in services:
            service.stop()


def register(router: str) -> str:
    body = {"source": PROGRAM.read_text(), "kind": "binary", "lambda": 0.001, "algorithm": "fast"}
    response = httpx.post(f"{router}/programs", json=body, timeout=60)
    response.raise_for_status()
    return response.json()["id"]


# -- the benchmark ---------------------------------------------------------------------------------


def throughput(routers: list[str], program_id: str, images: list[str], clients: int) -> dict[str, float]:
    """Answers per second with ``clients`` clients, client ``c`` sending to router ``c % len(routers)``."""
    latencies, failures, fallbacks, elapsed = stream_answers(routers, program_id, images, clients)
    p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
    return {
        "routers": len(routers),
        "answers": len(latencies) - len(failures),
        "failures": len(failures),
        "fallbacks": sum(fallbacks),
        "seconds": round(elapsed, 2),
        "answers_per_s": round((len(latencies) - len(failures)) / elapsed, 2),
        "p50_ms": round(float(p50), 1),
        "p99_ms": round(float(p99), 1),
    }


def run(database: str, frames: int, clients: int, rounds: int, state: Path) -> dict[str, object]:
    """Both routers run throughout; each round measures one router, then the two, on the same frames."""
    images = [frame(i) for i in range(frames)]
    load_before = os.getloadavg()
    policy = start_policy(state / "policy")
    with stopping(policy):
        # a generous policy timeout: on a shared 2-core machine a decision can wait seconds for a
        # core, and a router that gave up on it would measure its fallback instead
        first = start_router(database, policy.url, state / "router-1.log", policy_timeout_s="30")
        second = start_router(database, policy.url, state / "router-2.log", policy_timeout_s="30")
        with stopping(first, second):
            program_id = register(first.url)
            warm = images[: max(1, frames // 10)]
            throughput([first.url, second.url], program_id, warm, clients)
            one, two = [], []
            for _ in range(rounds):
                one.append(throughput([first.url], program_id, images, clients))
                two.append(throughput([first.url, second.url], program_id, images, clients))
    one_median = float(np.median([r["answers_per_s"] for r in one]))
    two_median = float(np.median([r["answers_per_s"] for r in two]))
    return {
        "provenance": provenance(),
        "machine": {
            "load_average_1m_before": round(load_before[0], 2),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        },
        "frames": frames,
        "clients": clients,
        "rounds": rounds,
        "one_router": one,
        "two_routers": two,
        "one_router_median_answers_per_s": one_median,
        "two_routers_median_answers_per_s": two_median,
        "ratio": round(two_median / one_median, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    one = commands.add_parser("serve", help="run one router with stub backends (for this benchmark and the tests)")
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--database", required=True)
    one.add_argument("--policy-url", required=True)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each, alternating")
    parser.add_argument("--database", help="a PostgreSQL URL; default: a throwaway server")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.database, args.policy_url)
        return
    with tempfile.TemporaryDirectory(prefix="fmprog-replicas-") as state, contextlib.ExitStack() as stack:
        database = args.database
        if database is None:
            from tests.postgres import PostgresServer  # the tests' throwaway server (a checkout, not a wheel)

            database = stack.enter_context(PostgresServer()).database()
        result = run(database, args.frames, args.clients, args.rounds, Path(state))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
