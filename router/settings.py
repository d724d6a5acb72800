"""The router's settings: one validated class, read from ``FMPROG_ROUTER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fmprog.backends.config import BackendCatalog, BackendName, ConfigError, load_catalog
from policy.rewards import RewardConfig


class RouterSettings(BaseSettings):
    """Where state lives, where backends and the policy are, and the limits of the public API."""

    model_config = SettingsConfigDict(env_prefix="FMPROG_ROUTER_", extra="forbid", frozen=True)

    database: Path = Field(default=Path("state/router.sqlite3"), description="SQLite file for programs and decisions.")
    backends_config: Path = Field(default=Path("deploy/config/cpu.yaml"), description="Backend configuration (YAML).")
    backends: list[BackendName] | None = Field(
        default=None,
        min_length=1,
        description='Offer only these backends of the configuration: a JSON list (["detect-small", "vqa-small"]) '
        "or comma-separated names; unset or empty: all of them.",
    )
    serve_url: str = Field(default="http://127.0.0.1:8000", description="Ray Serve's HTTP proxy.")
    backend_timeout_s: float = Field(default=60.0, gt=0, description="Limit of one backend call.")
    backend_retries: int = Field(
        default=1, ge=0, le=5, description="Retries of a failed backend call before another backend is tried."
    )
    policy_url: str | None = Field(default=None, description="Policy service; None answers with the fallback.")
    policy_timeout_s: float = Field(default=2.0, gt=0)
    fallback: Literal["cheapest", "largest"] = "cheapest"
    outbox_retry_s: float = Field(default=5.0, gt=0, description="How often undelivered policy messages are retried.")
    rewards: RewardConfig = RewardConfig()
    api_key: SecretStr | None = Field(default=None, description="Bearer key for the public endpoints; None: open.")
    max_request_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    answer_threads: int = Field(
        default=32, ge=1, le=256, description="Frames answered at once; more wait (backend calls block a thread)."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)

    @field_validator("backends", mode="before")
    @classmethod
    def _names_from_text(cls, value: object) -> object:
        """Comma-separated names as well as a JSON list (what reaches here when it was not JSON)."""
        if isinstance(value, str):
            names = [name.strip() for name in value.split(",") if name.strip()]
            return names or None
        return value

    @field_validator("backends")
    @classmethod
    def _unique_backends(cls, backends: list[str] | None) -> list[str] | None:
        if backends is not None:
            duplicated = sorted({name for name in backends if backends.count(name) > 1})
            if duplicated:
                raise ValueError(f"backend {duplicated[0]!r} is listed twice")
        return backends

    @model_validator(mode="after")
    def _safe(self) -> RouterSettings:
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 16:
            raise ValueError("api_key must be at least 16 characters")
        if self.host not in {"127.0.0.1", "localhost", "::1"} and self.api_key is None:
            raise ValueError(f"refusing to listen on {self.host} without an api_key (set FMPROG_ROUTER_API_KEY)")
        return self

    def load_catalog(self) -> BackendCatalog:
        """The backends this router offers: ``backends_config``, restricted to ``backends`` when
        given. Raises ConfigError (a ValueError) for an unreadable configuration or unknown names."""
        return select_backends(load_catalog(self.backends_config), self.backends, source=self.backends_config)


def select_backends(
    catalog: BackendCatalog, names: list[str] | None, *, source: object = "the configuration"
) -> BackendCatalog:
    """``catalog`` restricted to ``names`` (in catalog order); all of it when ``names`` is None.
    Raises ConfigError naming the unknown backends and the ones ``source`` defines."""
    if names is None:
        return catalog
    known = [spec.name for spec in catalog.backends]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown backends {unknown}; {source} defines {known}")
    return BackendCatalog(backends=[spec for spec in catalog.backends if spec.name in names])
