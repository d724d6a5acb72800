"""Settings of ``fmprog up``: what it starts, where each part listens and keeps its state, validated
together with the router's and the policy's own settings before anything starts."""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from fmprog.backends.config import DEFAULT_CONFIG, BackendCatalog, BackendName, is_config_name
from fmprog.vision.video import SAMPLE_VIDEOS
from policy.settings import PolicySettings
from router.settings import RouterSettings
from services.cluster import ServeSettings, free_port

LOCALHOST = "127.0.0.1"
READY = "ready"  # ``fmprog up`` prints a line starting with this once everything answers
Port = Annotated[int, Field(ge=1, le=65535)]


class StackError(RuntimeError):
    """A part of the cluster could not start, or stopped on its own."""


def _problems(exc: ValidationError, service: str) -> str:
    """One line naming each problem of a service's settings: ``router settings: fallback: ...``."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{service} settings: {where + ': ' if where else ''}{message}")
    return "; ".join(problems)


def http_url(host: str, port: int) -> str:
    try:
        bracketed = ipaddress.ip_address(host).version == 6
    except ValueError:
        bracketed = False
    return f"http://[{host}]:{port}" if bracketed else f"http://{host}:{port}"


class StackSettings(BaseModel):
    """What ``fmprog up`` starts, where it listens and where it keeps state; validated, with the
    router's and the policy's own settings, before anything starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path = Field(
        default=Path(DEFAULT_CONFIG),
        description="Backend configuration: a packaged one's name (real, synthetic, gpu) or a YAML file's path.",
    )
    backends: list[BackendName] | None = Field(
        default=None, min_length=1, description="Serve and offer only these backends of the configuration."
    )
    host: str = Field(
        default=LOCALHOST,
        description="The router's address. The policy (with a bearer key of its own) and the Serve proxy (no "
        "authentication) always listen on 127.0.0.1.",
    )
    router_port: Port = Field(default=8080, description="The router's port.")
    policy_port: Port = Field(default=8081, description="The policy's port, on 127.0.0.1.")
    serve_port: Port = Field(default=8000, description="Ray Serve's HTTP proxy's port, on 127.0.0.1.")
    state_dir: Path = Field(default=Path("state"), description="Router database, policy state and logs.")
    num_cpus: float | None = Field(default=None, gt=0, description="Logical CPUs of the local Ray (default: all).")
    backend_transport: Literal["handle", "http"] = Field(
        default="handle",
        description="How the router calls the backends: through DeploymentHandles, joining the local Ray as a "
        "driver ('handle'), or through the Serve proxy ('http').",
    )
    api_key: SecretStr | None = Field(default=None, description="The router's bearer key; required off loopback.")
    policy_api_key: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)),
        description="The policy's bearer key, given to the policy and the router: a new random one each run.",
    )
    ready_timeout_s: float = Field(default=180.0, gt=0, description="Wait this long for the services to answer.")
    stop_timeout_s: float = Field(default=15.0, gt=0, description="Wait this long for a service to stop, then kill.")
    restart_backoff_s: float = Field(
        default=0.5, gt=0, description="Wait before restarting a service that died; doubled for each recent death."
    )
    restart_backoff_max_s: float = Field(default=30.0, gt=0, description="The longest wait before a restart.")
    max_restarts: int = Field(
        default=5, ge=0, description="Restarts of a service within restart_window_s; one more death stops all (exit 1)."
    )
    restart_window_s: float = Field(default=300.0, gt=0, description="The window max_restarts counts deaths in.")

    @classmethod
    def on_free_ports(cls, **values: Any) -> StackSettings:
        """Settings whose three services listen on distinct ports that were free a moment ago (tests,
        benchmarks and demos on one machine)."""
        ports: list[int] = []
        while len(ports) < 3:
            if (port := free_port()) not in ports:
                ports.append(port)
        router, policy, serve = ports
        return cls(router_port=router, policy_port=policy, serve_port=serve, **values)

    @model_validator(mode="after")
    def _check(self) -> StackSettings:
        ports = {"router": self.router_port, "policy": self.policy_port, "serve": self.serve_port}
        for name, port in ports.items():
            others = [other for other, p in ports.items() if p == port and other != name]
            if others:
                raise ValueError(f"the {name} and {others[0]} ports are both {port}")
        try:
            router = self.router_settings()  # its own rules: no open router off loopback, key length, ...
        except ValidationError as exc:
            raise ValueError(_problems(exc, "router")) from None
        try:
            self.policy_settings()
        except ValidationError as exc:
            raise ValueError(_problems(exc, "policy")) from None
        router.load_catalog()  # ConfigError (a ValueError): unreadable configuration, unknown backends
        return self

    @property
    def router_url(self) -> str:
        return http_url(self.host, self.router_port)

    @property
    def policy_url(self) -> str:
        return http_url(LOCALHOST, self.policy_port)

    @property
    def serve_url(self) -> str:
        return http_url(LOCALHOST, self.serve_port)

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def router_settings(self, ray_address: str = "127.0.0.1:6379") -> RouterSettings:
        """The router's settings; ``ray_address`` is the local Ray's, known once it has started."""
        return RouterSettings(
            backend_transport=self.backend_transport,
            ray_address=ray_address if self.backend_transport == "handle" else None,
            database=self.state_dir.resolve() / "router.sqlite3",
            backends_config=self.config if is_config_name(self.config) else self.config.resolve(),
            backends=self.backends,
            serve_url=self.serve_url,
            policy_url=self.policy_url,
            policy_api_key=self.policy_api_key,
            api_key=self.api_key,
            host=self.host,
            port=self.router_port,
            stream_file_roots=[SAMPLE_VIDEOS],
        )

    def policy_settings(self) -> PolicySettings:
        return PolicySettings(
            state_dir=self.state_dir.resolve() / "policy",
            api_key=self.policy_api_key,
            host=LOCALHOST,
            port=self.policy_port,
        )

    def serve_settings(self) -> ServeSettings:
        return ServeSettings(
            config=self.config, host=LOCALHOST, port=self.serve_port, backends=self.backends, num_cpus=self.num_cpus
        )

    def catalog(self) -> BackendCatalog:
        """The backends served and offered."""
        return self.router_settings().load_catalog()
