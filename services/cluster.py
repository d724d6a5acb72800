"""Start Ray and Serve on this machine (or join a cluster) and deploy a backend configuration."""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmprog.backends.config import BackendCatalog, load_catalog
from fmprog.web import is_loopback
from services.app import run_backends

FREE_PORTS_FROM = 20000  # above Ray's default worker ports (10002-19999)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests, benchmarks and demos on one machine).

    It is drawn below the kernel's ephemeral range: a port from that range can be taken, between
    this check and the server's bind, as the local end of any outgoing connection (Ray opens many
    while it starts), and the server then fails to bind."""
    low = _ephemeral_ports()[0]
    draw = random.SystemRandom()
    for _ in range(200):
        port = draw.randrange(FREE_PORTS_FROM, low) if low > FREE_PORTS_FROM + 1000 else 0
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError(f"no free TCP port on {host}")


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux; the usual default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


class ServeSettings(BaseModel):
    """Where and what to serve; validated once, before anything starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path = Field(description="Backend configuration (YAML), e.g. deploy/config/synthetic.yaml.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    backends: list[str] | None = Field(default=None, description="Serve only these backends (default: all).")
    ray_address: str | None = Field(default=None, description="Join this Ray cluster instead of starting one.")
    num_cpus: float | None = Field(default=None, gt=0, description="Logical CPUs of a local Ray (default: all).")
    num_gpus: float | None = Field(default=None, ge=0)


@dataclass
class LocalCluster:
    catalog: BackendCatalog
    handles: dict[str, Any]
    base_url: str
    ray_address: str  # the Ray cluster's GCS (host:port), for drivers that join it


def _loopback_ray() -> dict[str, Any]:
    """``ray.init`` options that keep a Ray started here on loopback: its GCS, raylet, workers and
    agents then listen on 127.0.0.1 only (checked with ``ss -ltnp``: without them they listen on
    every interface). Ray turns a node address of 127.0.0.1 into the machine's outward address
    unless it believes it runs single-node (its macOS and Windows default), which
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` says; Ray reads that variable when it is imported."""
    import sys

    if "ray._private.ray_constants" in sys.modules and os.environ.get(_RAY_SINGLE_NODE) != "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # imported before we could set the variable
    return {"_node_ip_address": "127.0.0.1"}


_RAY_SINGLE_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def serve_backends(settings: ServeSettings) -> Iterator[LocalCluster]:
    """Start (or join) Ray, start Serve's HTTP proxy, deploy the backends and wait until they are
    healthy; shut Serve and a Ray started here down on exit. A Ray started here for a proxy on
    loopback listens on loopback only."""
    if settings.ray_address is None and is_loopback(settings.host):
        os.environ[_RAY_SINGLE_NODE] = "0"  # before Ray is imported: see _loopback_ray
    import ray
    from ray import serve

    catalog = load_catalog(settings.config)
    if settings.backends:
        unknown = sorted(set(settings.backends) - {b.name for b in catalog.backends})
        if unknown:
            raise ValueError(
                f"unknown backends {unknown}; {settings.config} defines {[b.name for b in catalog.backends]}"
            )
    started_ray = not ray.is_initialized()
    if started_ray:
        local = _loopback_ray() if settings.ray_address is None and is_loopback(settings.host) else {}
        ray.init(
            **local,
            address=settings.ray_address,
            num_cpus=settings.num_cpus,
            num_gpus=settings.num_gpus,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        handles = run_backends(catalog, settings.backends)
        address = ray.get_runtime_context().gcs_address
        yield LocalCluster(catalog, handles, f"http://{settings.host}:{settings.port}", address)
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()
