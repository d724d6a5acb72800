"""The policy service's settings: one validated class, read from ``FMPROG_POLICY_*`` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fmprog.streams.gates import ReuseSettings
from fmprog.web import is_loopback


class PolicySettings(BaseSettings):
    """Where the policies' state lives, how often they train and snapshot, and the limits of the API."""

    model_config = SettingsConfigDict(env_prefix="FMPROG_POLICY_", extra="forbid", frozen=True)

    state_dir: Path = Field(default=Path("state/policy"), description="SQLite log and parameter snapshots.")
    train_interval_s: float = Field(default=0.5, gt=0, description="How often the trainer looks for work.")
    snapshot_every: int = Field(default=64, ge=1, description="Snapshot a policy after this many new observations.")
    pending_timeout_s: float = Field(
        default=86400.0,
        gt=0,
        description="A decision still pending after this long is dropped, unlearned: a backstop for decisions "
        "the router never reports on (it expires its own sooner, after its label_window_s, and tells the policy).",
    )
    reuse: ReuseSettings = Field(
        default_factory=ReuseSettings,
        description="How the reuse gates of cameras' frames decide: tolerance, exploration (JSON).",
    )
    max_request_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        description="Largest request body, in bytes; a larger one is refused with 413.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key every route but /healthz, /readyz and /metrics requires, at least 16 characters, "
        "compared in constant time; required to listen beyond loopback. None: no key, and then only requests that "
        "arrive on a loopback address are answered (403 otherwise).",
    )
    host: str = Field(
        default="127.0.0.1", description="The address the policy listens on; beyond loopback it needs api_key."
    )
    port: int = Field(default=8081, ge=1, le=65535, description="The port the policy listens on.")
    restarts: int = Field(
        default=0, ge=0, description="Times a supervisor (fmprog up) restarted this policy; published as a metric."
    )

    @model_validator(mode="after")
    def _safe(self) -> PolicySettings:
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 16:
            raise ValueError("api_key must be at least 16 characters")
        if not is_loopback(self.host) and self.api_key is None:
            raise ValueError(f"refusing to listen on {self.host} without an api_key (set FMPROG_POLICY_API_KEY)")
        return self
