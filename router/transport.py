"""How the router reaches its backends: Ray Serve DeploymentHandles, or HTTP.

With ``backend_transport: handle`` the router joins the Ray cluster at ``ray_address`` as a driver
(it stays a service of its own, outside Serve: its HTTP API, database, program workers and streams
do not share a process, a restart or a scaling rule with the replicas) and calls each backend's
Serve application through a DeploymentHandle: no HTTP proxy hop, no PNG encoding, and a large
frame goes once per answer into Ray's object store, crops sent as places in it
(``services.client.HandleBackend``). A backend the configuration names that has no Serve
application there (served elsewhere: an OpenAI-compatible server, a remote engine behind the
backend routes) is still called over HTTP at ``serve_url``. With ``backend_transport: http`` every
backend is called over HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import BackendCatalog
from router.settings import RouterSettings

logger = logging.getLogger(__name__)

Kind = Literal["handle", "http"]


@dataclass
class Transport:
    """The backends as the router calls them, how each is reached, and what to close at the end."""

    backends: BackendRegistry
    kinds: dict[str, Kind]
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception:
                logger.exception("closing the backend transport failed")
        self._closers.clear()


def connect(catalog: BackendCatalog, settings: RouterSettings) -> Transport:
    """Clients of every backend of ``catalog`` by ``settings.backend_transport``; joins the Ray
    cluster first for handles (blocking: call it from a worker thread, where Ray leaves the
    process's signal handlers alone)."""
    from services.client import HandleBackend, HttpBackend

    options: dict[str, Any] = {
        "timeout_s": settings.backend_timeout_s,
        "breaker_failures": settings.backend_breaker_failures,
        "breaker_reset_s": settings.backend_breaker_reset_s,
    }
    closers: list[Callable[[], None]] = []
    handles: dict[str, Any] = {}
    if settings.backend_transport == "handle":
        if not settings.ray_address:
            raise ValueError("backend_transport 'handle' needs ray_address")
        handles = _join_ray(settings.ray_address, [spec.name for spec in catalog.backends], closers)
    models, kinds = {}, {}
    for spec in catalog.backends:
        if spec.name in handles:
            models[spec.name] = HandleBackend(spec, handles[spec.name], **options).model()
            kinds[spec.name] = "handle"
        else:
            client = HttpBackend(spec, settings.serve_url, **options)
            closers.append(client.close)
            models[spec.name] = client.model()
            kinds[spec.name] = "http"
    logger.info("backends: %s", ", ".join(f"{name} ({kind})" for name, kind in kinds.items()))
    return Transport(BackendRegistry.from_specs(list(catalog.backends), models), kinds, closers)


def _join_ray(address: str, names: list[str], closers: list[Callable[[], None]]) -> dict[str, Any]:
    """Join the Ray cluster at ``address`` as a driver; the DeploymentHandle of each named backend
    whose Serve application runs there (the others are left to HTTP, with a warning)."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        closers.append(ray.shutdown)
    handles = {}
    for name in names:
        try:
            handles[name] = serve.get_app_handle(name)
        except RayServeException as exc:
            logger.warning("backend %s has no Serve application at %s (%s): calling it over HTTP", name, address, exc)
    return handles
