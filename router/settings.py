"""The router's settings: one validated class, read from ``FMPROG_ROUTER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from policy.rewards import RewardConfig


class RouterSettings(BaseSettings):
    """Where state lives, where backends and the policy are, and the limits of the public API."""

    model_config = SettingsConfigDict(env_prefix="FMPROG_ROUTER_", extra="forbid", frozen=True)

    database: Path = Field(default=Path("state/router.sqlite3"), description="SQLite file for programs and decisions.")
    backends_config: Path = Field(default=Path("deploy/config/cpu.yaml"), description="Backend configuration (YAML).")
    serve_url: str = Field(default="http://127.0.0.1:8000", description="Ray Serve's HTTP proxy.")
    backend_timeout_s: float = Field(default=60.0, gt=0)
    policy_url: str | None = Field(default=None, description="Policy service; None answers with the fallback.")
    policy_timeout_s: float = Field(default=2.0, gt=0)
    fallback: Literal["cheapest", "largest"] = "cheapest"
    outbox_retry_s: float = Field(default=5.0, gt=0, description="How often undelivered policy messages are retried.")
    rewards: RewardConfig = RewardConfig()
    api_key: SecretStr | None = Field(default=None, description="Bearer key for the public endpoints; None: open.")
    max_request_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    answer_threads: int = Field(default=8, ge=1, le=256)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)

    @model_validator(mode="after")
    def _safe(self) -> RouterSettings:
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 16:
            raise ValueError("api_key must be at least 16 characters")
        if self.host not in {"127.0.0.1", "localhost", "::1"} and self.api_key is None:
            raise ValueError(f"refusing to listen on {self.host} without an api_key (set FMPROG_ROUTER_API_KEY)")
        return self
