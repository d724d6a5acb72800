"""The router's settings: one validated class, read from ``FMPROG_ROUTER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fmprog.backends.config import (
    DEFAULT_CONFIG,
    BackendCatalog,
    BackendName,
    BackendSpec,
    ConfigError,
    CostWeight,
    Function,
    load_catalog,
)
from fmprog.backends.engine_config import LlamaCppEngineOptions, OpenAIEngineOptions
from fmprog.program import ExecutionLimits
from fmprog.rewards import RewardConfig
from fmprog.streams.gates import ReuseSettings
from fmprog.web import is_loopback
from router.admission import TenantQuota

SYNTHESIS_N_BATCH = 64  # prompt batch of a llama.cpp synthesizer (as fast as 512 on a CPU, measured)
DEFAULT_LAMBDA = 100.0
"""The cost weight of a program registered without one when neither the router's settings nor the backend
configuration (its ``default_lambda``) give one."""


class RouterSettings(BaseSettings):
    """Where state lives, where backends and the policy are, and the limits of the public API."""

    model_config = SettingsConfigDict(env_prefix="FMPROG_ROUTER_", extra="forbid", frozen=True)

    database: Path | str = Field(
        default=Path("state/router.sqlite3"),
        description="Where programs, decisions, feedback and the policy outbox live: a SQLite file (one router), or a "
        "PostgreSQL URL, postgresql+psycopg://user:password@host:5432/db (several routers on one database).",
    )
    database_pool_size: int = Field(
        default=10, ge=1, le=200, description="PostgreSQL connections kept open (as many again may open under load)."
    )
    retention_days: float = Field(
        default=30.0,
        gt=0,
        le=36500,
        description="Decisions (answers) and their feedback older than this are deleted in the background; the "
        "label counts per program, the programs, the policy outbox and the dead letters are kept.",
    )
    prune_interval_s: float = Field(
        default=3600.0, gt=0, le=86400, description="How often decisions past retention_days are pruned."
    )
    label_window_s: float = Field(
        default=3600.0,
        gt=0,
        le=30 * 86400,
        description="A decision's label is taken for this long after its answer; then the decision expires "
        "(a later label is refused with 410). Keep it below the policy's pending_timeout_s.",
    )
    expiry_reward: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="None: an expired decision teaches the policy nothing. A number: the policy learns from it "
        "as if labelled with this task reward, charged the decision's real costs.",
    )
    expire_interval_s: float = Field(
        default=60.0, gt=0, le=86400, description="How often decisions past label_window_s are expired."
    )
    teacher_threads: int = Field(default=2, ge=1, le=64, description="Threads that run programs' teachers.")
    teacher_queue: int = Field(
        default=64, ge=1, le=100000, description="Teacher runs waiting at most; a frame past it is not taught."
    )
    backends_config: Path = Field(default=Path(DEFAULT_CONFIG), description="Backend configuration (YAML).")
    backends: list[BackendName] | None = Field(
        default=None,
        min_length=1,
        description='Offer only these backends of the configuration: a JSON list (["detect-small", "vqa-small"]) '
        "or comma-separated names; unset or empty: all of them.",
    )
    serve_url: str = Field(default="http://127.0.0.1:8000", description="Ray Serve's HTTP proxy.")
    backend_transport: Literal["http", "handle"] = Field(
        default="http",
        description="How backends are called: 'http' through the Serve proxy at serve_url (any backend that "
        "speaks the backend routes, inside Ray or not); 'handle' through Ray Serve DeploymentHandles, the router "
        "joining the Ray cluster at ray_address as a driver (the frame goes once per answer through Ray's object "
        "store, crops as coordinates). A backend without a Serve application there is still called over HTTP. "
        "'http' is the default of a router started alone; fmprog up uses 'handle'. A driver needs a Ray node on "
        "its machine: on Kubernetes the router would run in a Ray pod to use handles, so the manifests keep 'http'.",
    )
    ray_address: str | None = Field(
        default=None,
        description="The Ray cluster (its GCS, host:port) the router joins with backend_transport 'handle'.",
    )
    backend_timeout_s: float = Field(default=60.0, gt=0, description="Limit of one backend call.")
    backend_retries: int = Field(
        default=1, ge=0, le=5, description="Retries of a failed backend call before another backend is tried."
    )
    backend_retry_backoff_s: tuple[float, float] = Field(
        default=(0.05, 0.2),
        description="Pause before each retry of a backend call, drawn uniformly between the two bounds (jitter), "
        "in seconds: a JSON pair such as [0.05, 0.2]; [0, 0] retries at once.",
    )
    backend_breaker_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Calls in a row a backend fails to answer (timeouts, unreachable, 5xx) before it is skipped for "
        "backend_breaker_reset_s: its calls then fail at once and the call site's alternates answer.",
    )
    backend_breaker_reset_s: float = Field(
        default=30.0, gt=0, le=3600, description="How long a failing backend is skipped before it is tried again."
    )
    policy_url: str | None = Field(default=None, description="Policy service; None answers with the fallback.")
    policy_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="How long the router waits for the policy's decision on a frame (and its other replies but "
        "registrations) before it goes on without it: the frame then gets the fallback decision.",
    )
    policy_register_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long the router waits for the policy to check or build a program's policy (the first one "
        "of an algorithm may load its libraries, torch, for seconds) before the registration waits in the outbox "
        "for the delivery thread; its program's frames get the fallback decision until it is delivered.",
    )
    policy_breaker_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Decisions in a row the policy fails to give (timeouts, unreachable, 5xx) before it is skipped "
        "for policy_breaker_reset_s: frames then get the fallback decision at once instead of waiting for it.",
    )
    policy_breaker_reset_s: float = Field(
        default=30.0, gt=0, le=3600, description="How long a failing policy is skipped before it is tried again."
    )
    policy_probe_s: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description="While the policy's circuit is open, how often its readiness is probed: once it answers, the "
        "next frame asks the policy again (half-open), so a restarted policy decides frames within about this long.",
    )
    policy_api_key: SecretStr | None = Field(
        default=None, description="The policy service's bearer key (its FMPROG_POLICY_API_KEY); None: sent without."
    )
    fallback: Literal["cheapest", "largest"] = Field(
        default="cheapest",
        description="The fallback decision, for a frame the policy does not decide (none configured, unreachable, "
        "refusing, its circuit open, or its decision not fitting the program): every call site's cheapest "
        "candidate, or its dearest (largest).",
    )
    default_lambda: CostWeight | None = Field(
        default=None,
        description="The cost weight (lambda) of a program registered without one; its reply says "
        'lambda_source "default". None: the backend configuration\'s default_lambda (0.001 for real.yaml, whose '
        "costs are millions of multiply-adds, and for gpu.yaml; 100 for synthetic.yaml, millions of parameters of "
        "tiny models), else 100.",
    )
    outbox_retry_s: float = Field(default=5.0, gt=0, description="How often undelivered policy messages are retried.")
    rewards: RewardConfig = Field(
        default=RewardConfig(),
        description="How a label scores an answer (JSON, fmprog.rewards.RewardConfig): the authors' binary and "
        'open-form values (scheme "authors", the default; its values can be set) or the paper\'s 0/1 loss '
        '(scheme "loss").',
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="The shared bearer key for the public endpoints, at least 16 characters: the default "
        "tenant's key. Required to listen beyond loopback unless require_keys. None: open, and then only requests "
        "that arrive on a loopback address are answered (403 otherwise), whatever address the server was bound to.",
    )
    require_keys: bool = Field(
        default=False,
        description="Every request needs a key, the shared api_key or a tenant's (fmprog keys create), even while "
        "no tenant key exists; lets the router listen beyond loopback with tenant keys only.",
    )
    max_request_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        description="Largest request body, in bytes; a larger one is refused with 413.",
    )
    answer_threads: int = Field(
        default=32, ge=1, le=256, description="Frames answered at once; more wait (backend calls block a thread)."
    )
    program_workers: int = Field(
        default=32,
        ge=0,
        le=256,
        description="Worker processes that run programs, each killed at its run's deadline (a frame holds one "
        "while its backend calls are made; started on demand); 0: programs run in the router's own process.",
    )
    program_worker_memory_mb: int = Field(
        default=1536, ge=512, description="Address space of each program worker (RLIMIT_AS), interpreter included."
    )
    program_memory_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of the machine's memory (or of its cgroup's limit, when smaller) the program workers' "
        "address spaces may add up to: the pool holds at most this share divided by program_worker_memory_mb "
        "workers (and at most program_workers); the router logs it when that is fewer than program_workers.",
    )
    answer_queue: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Frames waiting for one of the answer_threads slots, all tenants together; past it a frame "
        "gets 503 with Retry-After at once instead of waiting.",
    )
    answer_reserve: float = Field(
        default=0.25,
        ge=0,
        lt=1,
        description="Share of the slots that run frames (answer_threads, or the program workers when fewer) kept "
        "for tenants running no frame: a tenant keeping the others busy with slow programs cannot make another "
        "tenant's frame wait for one of them to end. 0: a lone tenant may use every slot.",
    )
    tenant_quota: TenantQuota = Field(
        default_factory=TenantQuota,
        description="What each tenant may use of this router (JSON): max_in_flight, frames_per_s, max_stored_mb, "
        "max_streams; past it, 429 with Retry-After.",
    )
    tenant_quotas: dict[str, TenantQuota] = Field(
        default_factory=dict,
        description='Quotas of named tenants, instead of tenant_quota (JSON: {"acme": {"max_in_flight": 32}}).',
    )
    max_answer_bytes: int = Field(
        default=65_536,
        ge=16,
        le=16 * 2**20,
        description="Largest answer a program may return, in bytes of its JSON encoding (compact, UTF-8; at most "
        "16 MiB); a larger one ends the run with resource_limit (POST /answer replies with that error and a null "
        "answer) and is neither returned nor stored.",
    )
    stream_file_roots: list[Path] = Field(
        default_factory=list,
        description="Directories whose video files a stream may read (file:// sources); none by default. `fmprog "
        "up` allows OpenCV's sample videos.",
    )
    stream_lease_s: float = Field(
        default=6.0,
        gt=0,
        le=3600,
        description="How long a router holds a stream without renewing: another router takes over a stream whose "
        "owner died after this long.",
    )
    stream_tick_s: float = Field(
        default=1.0, gt=0, le=600, description="How often leases are renewed and free streams claimed."
    )
    max_streams: int = Field(default=16, ge=0, le=1000, description="Streams one router reads at most.")
    stream_backoff_s: tuple[float, float] = Field(
        default=(0.25, 2.0),
        description="A dropped source is reconnected after the first wait, doubling up to the second (seconds).",
    )
    reuse: ReuseSettings = Field(
        default_factory=ReuseSettings,
        description="Without a policy service, how this router's own reuse gates decide: tolerance, exploration "
        "(JSON). With one, the policy's settings decide.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="The address the router listens on; beyond loopback it needs api_key or require_keys.",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="The port the router listens on.")
    restarts: int = Field(
        default=0, ge=0, description="Times a supervisor (fmprog up) restarted this router; published as a metric."
    )

    # Program synthesis (POST /programs with a query).
    synthesis_backend: BackendName | None = Field(
        default="llm-large",
        description="The backend of backends_config whose model writes programs, run inside the router "
        "(a llama_cpp or openai engine); unset (empty) disables synthesis unless synthesis_engine is set.",
    )
    synthesis_engine: LlamaCppEngineOptions | OpenAIEngineOptions | None = Field(
        default=None,
        description="The synthesizer's engine given in full (JSON), instead of synthesis_backend's: e.g. "
        '{"kind": "openai", "base_url": "http://vllm:8000/v1", "model": "Qwen/Qwen2.5-Coder-32B-Instruct"}, or the '
        "1.5B model that make synthesizer-1.5b installs, $(cat fmprog/configs/synthesizer-qwen1.5b.json).",
    )
    synthesis_attempts: int = Field(
        default=3, ge=1, le=10, description="Programs asked of the model per query before the query is refused."
    )
    synthesis_max_tokens: int = Field(default=512, ge=64, le=8192, description="Longest reply of the model.")
    synthesis_context: int = Field(
        default=4096, ge=1024, le=131072, description="Context window (tokens) of a llama.cpp synthesis_backend."
    )
    synthesis_threads: int | None = Field(
        default=None, ge=1, le=256, description="Threads of a llama.cpp synthesis_backend; None: every core."
    )
    synthesis_dry_run_frames: int = Field(
        default=3, ge=0, le=32, description="Generated frames each candidate program is run on before it is accepted."
    )
    synthesis_preload: bool = Field(
        default=False, description="Load the synthesizer's model at start-up rather than on first use."
    )

    @field_validator("database", mode="before")
    @classmethod
    def _file_or_url(cls, value: object) -> object:
        """A URL stays text (its driver checked: SQLite, or PostgreSQL through psycopg); anything else is a path."""
        if isinstance(value, str) and "://" in value:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                url = make_url(value)
            except (ArgumentError, ValueError) as exc:
                raise ValueError(f"not a database URL: {exc}") from None
            if url.drivername in {"postgresql", "postgres"}:
                url = url.set(drivername="postgresql+psycopg")
            if url.drivername not in {"postgresql+psycopg", "sqlite", "sqlite+pysqlite"}:
                raise ValueError(
                    f"database URL driver {url.drivername!r}: use postgresql+psycopg://... or a SQLite file path"
                )
            if url.drivername == "postgresql+psycopg" and not url.database:
                raise ValueError("a PostgreSQL URL must name the database: postgresql+psycopg://user@host:5432/db")
            return url.render_as_string(hide_password=False)
        if isinstance(value, str):
            return Path(value)
        return value

    def database_file(self) -> Path | None:
        """The SQLite file of ``database``, or None for a database server."""
        if isinstance(self.database, Path):
            return self.database
        return None

    @field_validator("synthesis_backend", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

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

    @field_validator("backend_retry_backoff_s")
    @classmethod
    def _backoff_bounds(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        low, high = bounds
        if not 0 <= low <= high <= 10:
            raise ValueError("must be [low, high] seconds with 0 <= low <= high <= 10")
        return bounds

    @model_validator(mode="after")
    def _safe(self) -> RouterSettings:
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 16:
            raise ValueError("api_key must be at least 16 characters")
        if not is_loopback(self.host) and self.api_key is None and not self.require_keys:
            raise ValueError(
                f"refusing to listen on {self.host} without an api_key (set FMPROG_ROUTER_API_KEY, or "
                "FMPROG_ROUTER_REQUIRE_KEYS=true to take tenant keys only)"
            )
        if self.backend_transport == "handle" and not self.ray_address:
            raise ValueError("backend_transport 'handle' needs ray_address (the Ray cluster's GCS, host:port)")
        return self

    def execution_limits(self) -> ExecutionLimits:
        """The limits of each run of a program: the runtime's defaults, with ``max_answer_bytes``."""
        return ExecutionLimits(max_answer_bytes=self.max_answer_bytes)

    def lambda_for(self, catalog: BackendCatalog) -> float:
        """The default lambda: this setting, else the backend configuration's, else ``DEFAULT_LAMBDA``."""
        for value in (self.default_lambda, catalog.default_lambda):
            if value is not None:
                return value
        return DEFAULT_LAMBDA

    def load_catalog(self) -> BackendCatalog:
        """The backends this router offers: ``backends_config``, restricted to ``backends`` when
        given. Raises ConfigError (a ValueError) for an unreadable configuration or unknown names."""
        return select_backends(load_catalog(self.backends_config), self.backends, source=self.backends_config)

    def synthesis_spec(self) -> BackendSpec | None:
        """The synthesizer's model as a backend specification (its engine not built), or None when
        synthesis is disabled. ``synthesis_engine`` is used as given; otherwise ``synthesis_backend``'s
        engine from the full ``backends_config`` (not restricted by ``backends``), with the synthesis
        context and threads for llama.cpp. Temperature is 0 either way (a repair must not depend on
        luck) and ``synthesis_max_tokens`` bounds each reply. Raises ConfigError for an unknown
        backend or one whose engine cannot run inside the router."""
        if self.synthesis_engine is not None:
            engine = self.synthesis_engine
            if isinstance(engine, LlamaCppEngineOptions) and engine.n_threads is None:
                engine = engine.model_copy(update={"n_threads": self._synthesis_threads()})
            name = "synthesizer"
        elif self.synthesis_backend is not None:
            catalog = load_catalog(self.backends_config)
            try:
                backend = catalog.get(self.synthesis_backend)
            except KeyError:
                known = [spec.name for spec in catalog.backends if spec.function == Function.llm]
                raise ConfigError(
                    f"synthesis_backend {self.synthesis_backend!r} is not in {self.backends_config} "
                    f"(its llm backends: {known})"
                ) from None
            engine = backend.engine
            if backend.function != Function.llm or not isinstance(engine, LlamaCppEngineOptions | OpenAIEngineOptions):
                served = f"{backend.function.value} backend, {engine.kind if engine else 'no'} engine"
                raise ConfigError(
                    f"synthesis_backend {self.synthesis_backend!r} ({served}) cannot write programs in the router: "
                    "it needs an llm backend served by llama_cpp or openai; or set synthesis_engine (e.g. an "
                    "OpenAI-compatible endpoint such as vLLM)"
                )
            if isinstance(engine, LlamaCppEngineOptions):
                # Small prompt batches: a conversation reuses all but the last few tokens of a cached prefix.
                threads = self._synthesis_threads()
                update = {"n_ctx": self.synthesis_context, "n_threads": threads, "n_batch": SYNTHESIS_N_BATCH}
                engine = engine.model_copy(update=update)
            name = f"{backend.name}-synthesizer"
        else:
            return None
        engine = engine.model_copy(update={"temperature": 0.0, "max_tokens": self.synthesis_max_tokens})
        return BackendSpec(name=name, function=Function.llm, cost=1, engine=engine)

    def _synthesis_threads(self) -> int:
        """Threads of a llama.cpp synthesizer: ``synthesis_threads``, else every core."""
        from fmprog.engines.llama_cpp import available_cpus

        return self.synthesis_threads or available_cpus()


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
    return catalog.model_copy(update={"backends": [spec for spec in catalog.backends if spec.name in names]})
