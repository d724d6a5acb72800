"""Smoke run of the Compose stack on this machine (``make compose-smoke``).

    .venv/bin/python scripts/compose_smoke.py [--frames 100]

Starts router, policy, serve, the router's PostgreSQL and Prometheus from docker-compose.yml with
deploy/compose.smoke.yaml (host network, everything on 127.0.0.1; the images ``make images``
built), registers examples/programs/triangle_left_of_circle.py, streams generated frames through
the router with a label for each, and checks that every answer and label was a 200 without an
error, that the router's /metrics counts the program's cost, that Prometheus scraped that cost
series, and that every socket the containers listen on is on 127.0.0.1. Then
``docker compose down -v``, passed or failed. Exit status 0 when every check passed.
Needs a running dockerd and Docker Compose v2 (``docker compose``; scripts/install_compose_plugin.sh).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROJECT = "fmprog-smoke"
COMPOSE_FILES = ("docker-compose.yml", "deploy/compose.smoke.yaml")
SERVICES = ("serve", "policy", "postgres", "router", "prometheus")
IMAGES = (
    "fmprog/serve-cpu:0.1.0",
    "fmprog/policy:0.1.0",
    "fmprog/router:0.1.0",
    "fmprog/postgres:15-bookworm",
    "fmprog/prometheus:bookworm",
)
ROUTER_URL = "http://127.0.0.1:18080"
PROMETHEUS_URL = "http://127.0.0.1:19090"
PROGRAM = ROOT / "examples/programs/triangle_left_of_circle.py"
COST_SERIES = "fmprog_cost_total"
# Listeners off loopback that the stack cannot avoid: Ray Serve 2.60 binds each replica's
# inter-deployment gRPC server to [::]:0, hard-coded (ray/serve/_private/replica.py); the proxy
# reaches it on 127.0.0.1, so no traffic leaves loopback. Reported, not failed.
UNAVOIDABLE_WILDCARD_LISTENERS = ("ray::ServeReplica:",)
DOCKERD_HINT = "nohup dockerd --bridge=none --iptables=false --ip6tables=false > /var/log/dockerd.log 2>&1 &"


class SmokeFailure(Exception):
    """A check of the smoke run failed; the message says which."""


@dataclass
class StreamResult:
    answered: int = 0
    fallbacks: int = 0
    cost: float = 0.0
    seconds: float = 0.0


# -- the engine and Compose -------------------------------------------------------------------------


def compose_command() -> list[str]:
    """Docker Compose v2: the docker CLI plugin, else a ``docker-compose`` that is v2."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        found = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip().lstrip("v").startswith(("2.", "5.")):
            return command
    raise SmokeFailure(
        "Docker Compose v2 is missing (Debian's docker-compose 1.29 cannot read docker-compose.yml); "
        "install the CLI plugin with scripts/install_compose_plugin.sh"
    )


def check_engine() -> None:
    if shutil.which("docker") is None:
        raise SmokeFailure("no docker CLI; apt-get install docker.io")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        raise SmokeFailure(f"dockerd is not running; start it with:\n    {DOCKERD_HINT}")
    missing = [
        image
        for image in IMAGES
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode != 0
    ]
    if missing:
        raise SmokeFailure(f"images missing: {', '.join(missing)}; build them with `make images`")


def stack_environment() -> dict[str, str]:
    """Fresh keys and database password for this run (the stack's volumes go with it)."""
    return {
        **os.environ,
        "FMPROG_ROUTER_API_KEY": secrets.token_hex(24),
        "FMPROG_POLICY_API_KEY": secrets.token_hex(24),
        "FMPROG_POSTGRES_PASSWORD": secrets.token_hex(24),
    }


class Stack:
    """The smoke stack under ``docker compose -p fmprog-smoke``."""

    def __init__(self, compose: list[str], env: dict[str, str]):
        self.env = env
        self.base = [*compose, "--project-name", PROJECT, "--project-directory", str(ROOT)]
        for file in COMPOSE_FILES:
            self.base += ["--file", str(ROOT / file)]

    def run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args], env=self.env, cwd=ROOT, text=True, capture_output=True, timeout=timeout_s, check=False
        )

    def up(self, timeout_s: int) -> None:
        up = self.run(
            "up", "--detach", "--no-build", "--pull", "never", "--wait", "--wait-timeout", str(timeout_s),
            *SERVICES, timeout_s=timeout_s + 60,
        )  # fmt: skip
        if up.returncode != 0:
            raise SmokeFailure(f"docker compose up failed:\n{up.stderr.strip()[-3000:]}")

    def container_ids(self) -> list[str]:
        return self.run("ps", "--quiet", "--no-trunc").stdout.split()

    def logs(self, tail: int = 40) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail)).stdout

    def down(self) -> None:
        down = self.run("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout_s=180)
        if down.returncode != 0:
            print(f"docker compose down failed:\n{down.stderr.strip()}", file=sys.stderr)


# -- the checks ---------------------------------------------------------------------------------------


def tcp_listeners() -> dict[str, str]:
    """Listening TCP sockets of this network namespace (the host's, which the stack shares): socket
    inode -> ``address:port``, from /proc/net/tcp and tcp6."""
    import ipaddress

    found = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # the kernel writes each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            ip = ipaddress.ip_address(packed)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found[fields[9]] = f"{ip}:{int(port, 16)}"
    return found


def container_sockets(container_ids: list[str]) -> dict[str, str]:
    """Socket inodes held open by the processes of these containers (found by their cgroups), each
    with the command line of a process holding it."""
    inodes: dict[str, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroup = (proc / "cgroup").read_text()
            if not any(cid in cgroup for cid in container_ids):
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = command[:80]
        except OSError:  # the process ended meanwhile
            continue
    return inodes


def off_loopback_listeners(container_ids: list[str]) -> list[str]:
    """``address:port`` of every socket the stack listens on that is not on 127.0.0.0/8."""
    import ipaddress

    listeners = tcp_listeners()
    owned = {
        listeners[inode]: command for inode, command in container_sockets(container_ids).items() if inode in listeners
    }
    if not owned:
        raise SmokeFailure("found no listening socket of the stack's containers")
    return sorted(
        f"{address} ({command})"
        for address, command in owned.items()
        if not ipaddress.ip_address(address.rsplit(":", 1)[0]).is_loopback
    )


def label(scene: Any) -> str:
    """The right answer of triangle_left_of_circle.py for a generated scene."""
    triangles = [o for o in scene.objects if o.shape == "triangle"]
    circles = [o for o in scene.objects if o.shape == "circle"]
    return "yes" if any(t.center[0] < c.center[0] for t in triangles for c in circles) else "no"


def labelled_frames(count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` generated frames as base64 PNG, each with its label."""
    from fmprog.images import encode_png
    from fmprog.scene import scene_stream

    return [(base64.b64encode(encode_png(s.image)).decode(), label(s)) for s in scene_stream(seed=seed, count=count)]


def expect(reply: Any, status: int, what: str) -> dict[str, Any]:
    if reply.status_code != status:
        raise SmokeFailure(f"{what}: HTTP {reply.status_code} {reply.text[:500]}")
    return reply.json()


def register(http: Any) -> str:
    body = {"source": PROGRAM.read_text(), "kind": "binary", "lambda": 1.0, "algorithm": "fast"}
    return expect(http.post("/programs", json=body), 201, "POST /programs")["id"]


def stream(http: Any, program_id: str, frames: list[tuple[str, str]]) -> StreamResult:
    """Each frame answered, then labelled; any non-200 or program error fails the run."""
    result = StreamResult()
    started = time.monotonic()
    for number, (image, truth) in enumerate(frames, start=1):
        answer = expect(http.post("/answer", json={"program_id": program_id, "image": image}), 200, f"frame {number}")
        if answer.get("error"):
            raise SmokeFailure(f"frame {number}: the program stopped: {answer['error']}")
        failed = [call for call in answer["trace"] if not call.get("ok", True)]
        if failed:
            raise SmokeFailure(f"frame {number}: backend calls failed: {failed}")
        body = {"decision_id": answer["decision_id"], "label": truth}
        expect(http.post("/feedback", json=body), 200, f"feedback on frame {number}")
        result.answered += 1
        result.fallbacks += bool(answer["fallback"])
        result.cost += answer["cost"]
    result.seconds = time.monotonic() - started
    return result


def router_cost_series(http: Any, program_id: str) -> list[str]:
    text = http.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith(COST_SERIES) and program_id in line]
    if not series:
        raise SmokeFailure(f"the router's /metrics has no {COST_SERIES} series for program {program_id}")
    return series


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise SmokeFailure(f"{what} within {timeout_s:g} s")
        time.sleep(1)


def prometheus_cost(program_id: str, timeout_s: float) -> list[dict[str, Any]]:
    """The cost series Prometheus scraped from the router for the program (its /api/v1/query)."""
    import httpx

    query = f'{COST_SERIES}{{job="fmprog-router",program="{program_id}"}}'

    def scraped() -> list[dict[str, Any]]:
        reply = httpx.get(f"{PROMETHEUS_URL}/api/v1/query", params={"query": query}, timeout=10)
        body = reply.json()
        return body["data"]["result"] if body.get("status") == "success" else []

    return wait_for(scraped, timeout_s, f"Prometheus did not return {query}")


def prometheus_targets_up(timeout_s: float) -> dict[str, str]:
    """Every scrape job's ``up`` in Prometheus, once all are 1 (router, policy, Ray)."""
    import httpx

    jobs = {"fmprog-router", "fmprog-policy", "ray"}

    def all_up() -> dict[str, str]:
        reply = httpx.get(f"{PROMETHEUS_URL}/api/v1/query", params={"query": "up"}, timeout=10).json()
        found = {r["metric"]["job"]: r["value"][1] for r in reply.get("data", {}).get("result", [])}
        return found if all(found.get(job) == "1" for job in jobs) else {}

    return wait_for(all_up, timeout_s, "Prometheus did not see every scrape target up")


def run(frames: int, seed: int, up_timeout_s: int) -> None:
    import httpx

    compose = compose_command()
    check_engine()
    print(f"== {frames} frames from seed {seed}")
    frames_to_send = labelled_frames(frames, seed)
    stack = Stack(compose, stack_environment())
    started = time.monotonic()
    passed = False
    try:
        print(f"== docker compose up: {', '.join(SERVICES)} (host network, 127.0.0.1)")
        stack.up(up_timeout_s)
        print(f"   healthy after {time.monotonic() - started:.0f} s")
        headers = {"authorization": f"Bearer {stack.env['FMPROG_ROUTER_API_KEY']}"}
        with httpx.Client(base_url=ROUTER_URL, headers=headers, timeout=120) as http:
            program_id = register(http)
            print(f"== program {program_id} registered; streaming")
            result = stream(http, program_id, frames_to_send)
            print(
                f"   {result.answered} answered and labelled in {result.seconds:.1f} s "
                f"({result.answered / result.seconds:.1f} frames/s), {result.fallbacks} fallback decisions, "
                f"cost {result.cost:.3f}"
            )
            series = router_cost_series(http, program_id)
            print(f"== router /metrics: {len(series)} {COST_SERIES} series, e.g. {series[0]}")
        containers = stack.container_ids()
        exposed = off_loopback_listeners(containers)
        unavoidable = [e for e in exposed if e.split("(", 1)[1].startswith(UNAVOIDABLE_WILDCARD_LISTENERS)]
        if len(unavoidable) < len(exposed):
            raise SmokeFailure(f"the stack listens off loopback: {', '.join(sorted(set(exposed) - set(unavoidable)))}")
        print(f"== every socket the {len(containers)} containers listen on is on 127.0.0.1, but for")
        print(f"   {len(unavoidable)} Serve replicas' internal gRPC servers on [::] (hard-coded in Ray Serve)")
        print(f"== Prometheus targets up: {json.dumps(prometheus_targets_up(timeout_s=60))}")
        scraped = prometheus_cost(program_id, timeout_s=60)
        by_backend = {f"{s['metric'].get('function')}/{s['metric'].get('backend')}": s["value"][1] for s in scraped}
        print(f"== Prometheus scraped {len(scraped)} {COST_SERIES} series: {json.dumps(by_backend)}")
        passed = True
    except (SmokeFailure, httpx.HTTPError, subprocess.TimeoutExpired) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        print(stack.logs(), file=sys.stderr)
        raise SmokeFailure(str(exc).splitlines()[0]) from exc
    finally:
        print("== docker compose down -v")
        stack.down()
        print(f"== {'passed' if passed else 'failed'} in {time.monotonic() - started:.0f} s (up to down)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="frames to stream (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="scene generator seed (default: %(default)s)")
    parser.add_argument(
        "--up-timeout", type=int, default=900, help="seconds for the stack to turn healthy (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        run(args.frames, args.seed, args.up_timeout)
    except SmokeFailure as exc:
        print(f"compose smoke: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
