"""The router's Prometheus metrics, in a registry of its own (one per app, so tests stay apart).

Label counts per program (right, wrong; TP, FP, FN, TN) and each program's name and tenant
(``fmprog_program_info``) come from the store at each scrape, so they are exact across several
routers and restarts. Cost is in the paper's unit (millions of
parameters per invocation), labelled by program,
function and backend, so a dashboard can sum cost per program or per backend over time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import fields

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router.admission import TenantLoad
from router.schemas import FrameResult
from router.store import ProgramInfo, QualityCounts
from router.tenants import DEFAULT_TENANT

logger = logging.getLogger(__name__)

STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.answers = Counter("fmprog_answers_total", "Frames answered.", ["program", "fallback"], registry=r)
        self.tenant_answers = Counter(
            "fmprog_tenant_answers_total",
            "Frames answered, by the tenant whose program answered.",
            ["tenant"],
            registry=r,
        )
        self.tenant_cost = Counter(
            "fmprog_tenant_cost_total",
            "Cost units charged (as fmprog_cost_total), by the tenant whose program ran.",
            ["tenant"],
            registry=r,
        )
        self.refused = Counter(
            "fmprog_refused_total",
            "Frames refused instead of answered, by tenant and reason: QuotaExceeded (429: the tenant's quota), "
            "Overloaded (503: the router's queue is full), BackendsUnavailable (503: no backend reachable).",
            ["tenant", "reason"],
            registry=r,
        )
        self.answer_latency = Histogram(
            "fmprog_answer_latency_seconds",
            "End-to-end answer latency: decoding, the policy's decision and the program run.",
            ["program"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.answer_stage = Histogram(
            "fmprog_answer_stage_seconds",
            "Time of each stage of answering a frame in the router: program (read and compiled), decode "
            "(the frame), policy_wait (for the policy's decision, after decoding), run (the program, "
            "backend calls included), record (the store).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.backend_calls = Counter(
            "fmprog_backend_calls_total", "Backend invocations.", ["program", "function", "backend", "ok"], registry=r
        )
        self.gated_answers = Counter(
            "fmprog_gated_answers_total",
            "Frames answered with calls decided by the policy's gates at each invocation.",
            ["program"],
            registry=r,
        )
        self.escalations = Counter(
            "fmprog_escalations_total",
            "Answers re-asked of a dearer backend (its call also counts in fmprog_backend_calls_total).",
            ["program", "function", "from_backend", "backend"],
            registry=r,
        )
        self.out_of_vocabulary = Counter(
            "fmprog_out_of_vocabulary_calls_total",
            "Backend calls outside the backend's declared vocabulary (a noun or question it cannot see or answer; "
            "it answered anyway, as well as it could), by program, function and backend.",
            ["program", "function", "backend"],
            registry=r,
        )
        self.cost = Counter(
            "fmprog_cost_total",
            "Cost units charged, in the backend configuration's unit (millions of parameters, the paper's, or "
            "millions of multiply-adds per call).",
            ["program", "function", "backend"],
            registry=r,
        )
        self.backend_latency = Histogram(
            "fmprog_backend_latency_seconds",
            "Measured backend call latency, as the router sees it.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_seconds = Counter(
            "fmprog_backend_seconds_total",
            "Measured backend seconds (wall clock of backend calls, as the router sees them).",
            ["program", "function", "backend"],
            registry=r,
        )
        self.feedback = Counter(
            "fmprog_feedback_total",
            "Labels taken (new, repeat, teacher) and refused because the decision had expired (expired).",
            ["program", "outcome"],
            registry=r,
        )
        self.labels_requested = Counter(
            "fmprog_labels_requested_total",
            "Answers whose label was asked for within the program's label budget (label_requested).",
            ["program"],
            registry=r,
        )
        self.teacher_cost = Counter(
            "fmprog_teacher_cost_total",
            "Cost units charged by programs' teachers (apart from fmprog_cost_total, the answers' own).",
            ["program", "function", "backend"],
            registry=r,
        )
        self.teacher_labels = Counter(
            "fmprog_teacher_labels_total",
            "Teacher runs by outcome: labelled, failed (no label from it), refused (the decision was labelled "
            "otherwise or expired meanwhile), skipped (the teachers' queue was full).",
            ["program", "outcome"],
            registry=r,
        )
        self.budget_remaining = Gauge(
            "fmprog_program_budget_remaining",
            "Cost units left of a program's budget in the current window, as of this router's last answer for "
            "it (take min over routers).",
            ["program"],
            registry=r,
        )
        self.expired = Counter(
            "fmprog_decisions_expired_total",
            "Decisions expired unlabelled after the label window (label_window_s).",
            ["program"],
            registry=r,
        )
        self.policy_latency = Histogram(
            "fmprog_policy_decision_latency_seconds",
            "Time to get a decision from the policy.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "fmprog_fallbacks_total",
            "Fallback decisions (no policy, policy unavailable or refusing, its circuit open, its decision not "
            "fitting) and backend retries and replacements.",
            ["program", "reason"],
            registry=r,
        )
        self.errors = Counter(
            "fmprog_errors_total", "Requests answered with an error.", ["route", "status"], registry=r
        )
        self.outbox = Gauge(
            "fmprog_policy_outbox",
            "Policy messages waiting for delivery (the store's outbox, shared by the routers on one database).",
            registry=r,
        )
        self.pruned = Counter(
            "fmprog_pruned_total",
            "Rows deleted by retention (decisions and their feedback older than retention_days).",
            ["table"],
            registry=r,
        )
        self.policy_circuit_open = Gauge(
            "fmprog_policy_circuit_open",
            "1 while the policy is skipped after failing decisions in a row (frames get the fallback), else 0.",
            registry=r,
        )
        self.backend_circuit_open = Gauge(
            "fmprog_backend_circuit_open",
            "1 while a backend is skipped after failing calls in a row (its calls fail at once and the "
            "alternates answer), else 0; read from the backend's client when scraped.",
            ["backend"],
            registry=r,
        )
        self.dead_letters = Counter(
            "fmprog_policy_dead_letters",
            "Policy messages the policy refused, kept as dead letters (GET /dead-letters), by kind "
            "(register, feedback, delete).",
            ["kind"],
            registry=r,
        )
        self.syntheses = Counter(
            "fmprog_syntheses_total",
            "Programs synthesised from queries, by outcome (synthesised, cached, failed, unavailable).",
            ["outcome"],
            registry=r,
        )
        self.synthesis_latency = Histogram(
            "fmprog_synthesis_seconds",
            "Time to synthesise a program from a query (model calls, validation, dry runs).",
            buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320),
            registry=r,
        )
        self.synthesis_attempts = Counter(
            "fmprog_synthesis_attempts_total", "Programs asked of the synthesizer's model.", registry=r
        )
        self.restarts = Counter(
            "fmprog_service_restarts",
            "Times the supervisor (fmprog up) restarted this service after it died (set at start-up).",
            registry=r,
        )
        self.reused = Counter(
            "fmprog_reused_answers_total",
            "Frames of a camera answered by reusing the last answer (the frame barely differed), by program.",
            ["program"],
            registry=r,
        )
        self.stream_frames = Counter(
            "fmprog_stream_frames_total",
            "Frames of each stream this router read, by outcome: received (sampled from the source), answered "
            "(reused ones included), reused, dropped (replaced by a newer frame before they were answered), "
            "failed.",
            ["stream", "outcome"],
            registry=r,
        )
        self.stream_lag = Histogram(
            "fmprog_stream_lag_seconds",
            "Seconds from a stream frame's arrival to its answer.",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_reconnects = Counter(
            "fmprog_stream_reconnects_total", "Times a stream's source was reconnected.", ["stream"], registry=r
        )
        self.stream_saved_cost = Counter(
            "fmprog_stream_saved_cost_total",
            "What a stream's reused frames would have cost had they run (their last run's cost).",
            ["stream"],
            registry=r,
        )
        self.stream_webhook = Counter(
            "fmprog_stream_webhook_events_total",
            "Stream events sent to the stream's webhook, by outcome: delivered, dead_letter (refused, or never "
            "acknowledged after the retries).",
            ["stream", "outcome"],
            registry=r,
        )
        self.streams_running = Gauge(
            "fmprog_streams_running", "Streams this router reads now (it holds their leases).", registry=r
        )

        self.quality = _QualityCollector(dict)
        r.register(self.quality)
        self.program_info = _ProgramInfoCollector(list)
        r.register(self.program_info)

    def watch_quality(self, read: Callable[[], dict[str, QualityCounts]]) -> None:
        """Publish the label counts per program that ``read()`` returns at each scrape (the store's,
        shared by every router on the database): ``fmprog_program_labels_total{program, outcome}``
        (right, wrong) and ``fmprog_program_binary_labels_total{program, outcome}`` (tp, fp, fn, tn)."""
        self.quality.read = read

    def watch_programs(self, read: Callable[[], list[ProgramInfo]]) -> None:
        """Publish ``fmprog_program_info{program, name, tenant} 1`` for each program ``read()``
        returns at each scrape (the store's: every router's registrations, none once deleted)."""
        self.program_info.read = read

    def watch_outbox(self, pending: Callable[[], int]) -> None:
        """Publish ``fmprog_policy_outbox`` from ``pending()``, read at each scrape: the messages
        waiting now, whether or not a delivery round has run since they were queued."""
        self.outbox.set_function(pending)

    def watch_admission(self, read: Callable[[], dict[str, TenantLoad]]) -> None:
        """Publish ``fmprog_tenant_frames{tenant, state}`` (running, waiting) from ``read()``, per
        tenant, at each scrape."""
        self.registry.register(_AdmissionCollector(read))

    def watch_backend_circuit(self, backend: str, circuit_open: Callable[[], bool]) -> None:
        """Publish ``fmprog_backend_circuit_open{backend}`` from ``circuit_open()``, read at each scrape."""
        self.backend_circuit_open.labels(backend).set_function(lambda: 1.0 if circuit_open() else 0.0)

    def answered(self, result: FrameResult, latency_s: float, tenant: str = DEFAULT_TENANT) -> None:
        """Count one answer of ``tenant``'s program that took ``latency_s`` end to end, and every
        backend call it made."""
        program = result.program_id
        self.answers.labels(program, str(result.fallback).lower()).inc()
        self.tenant_answers.labels(tenant).inc()
        self.tenant_cost.labels(tenant).inc(sum(call.cost for call in result.trace))
        self.answer_latency.labels(program).observe(latency_s)
        if any(call.features is not None for call in result.trace):
            self.gated_answers.labels(program).inc()
        for call in result.trace:
            if call.escalated_from is not None:
                self.escalations.labels(program, call.function, call.escalated_from, call.backend).inc()
            if call.out_of_vocabulary is not None:
                self.out_of_vocabulary.labels(program, call.function, call.backend).inc()
            self.backend_calls.labels(program, call.function, call.backend, str(call.ok).lower()).inc()
            self.cost.labels(program, call.function, call.backend).inc(call.cost)
            self.backend_latency.labels(call.backend).observe(call.latency_s)
            self.backend_seconds.labels(program, call.function, call.backend).inc(call.latency_s)
            if call.attempt > 1:
                self.fallbacks.labels(program, "backend_retry").inc()
            elif call.fallback_from is not None:
                self.fallbacks.labels(program, "backend_replaced").inc()

    def synthesised(self, outcome: str, attempts: int, latency_s: float) -> None:
        """Count one synthesis from a query: its outcome, the model calls it made and its time."""
        self.syntheses.labels(outcome).inc()
        self.synthesis_attempts.inc(attempts)
        self.synthesis_latency.observe(latency_s)


class _QualityCollector(Collector):
    """Label counts read from the store when scraped. Every router on one database reports the same
    cluster-wide counts, so dashboards take ``max`` over routers, not ``sum``."""

    _labelnames = ("program", "outcome")

    def __init__(self, read: Callable[[], dict[str, QualityCounts]]):
        self.read = read

    def describe(self) -> Iterator[CounterMetricFamily]:
        """The families without samples (what the registry checks at registration: no store read)."""
        yield from self._families()

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily]:
        labels = CounterMetricFamily(
            "fmprog_program_labels",
            "Labelled answers per program since its first label, right or wrong, counted by the store for every "
            "router on it (take max over routers): accuracy over a window is increase(right) / increase(all).",
            labels=["program", "outcome"],
        )
        binary = CounterMetricFamily(
            "fmprog_program_binary_labels",
            "Labelled answers of binary programs (positive: yes) as tp, fp, fn, tn, counted by the store for every "
            "router on it (take max over routers): F1 over a window is 2 tp / (2 tp + fp + fn) of the increases.",
            labels=["program", "outcome"],
        )
        return labels, binary

    def collect(self) -> Iterator[CounterMetricFamily]:
        labels, binary = self._families()
        try:
            counts = self.read()
        except Exception as exc:  # a scrape must not fail with the database: the counts are skipped
            logger.warning("label counts not published, the store cannot be read: %s", exc)
            counts = {}
        for program, count in sorted(counts.items()):
            labels.add_metric([program, "right"], count.right)
            labels.add_metric([program, "wrong"], count.wrong)
            if count.tp + count.fp + count.fn + count.tn:
                for field in fields(QualityCounts)[2:]:
                    binary.add_metric([program, field.name], getattr(count, field.name))
        yield labels
        yield binary


class _ProgramInfoCollector(Collector):
    """``fmprog_program_info``: 1 for each registered program, labelled with its name (empty when it
    has none) and tenant, read from the store when scraped; join on ``program`` to show names."""

    def __init__(self, read: Callable[[], list[ProgramInfo]]):
        self.read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "fmprog_program_info",
            "1 for each registered program (every router's, from the store), labelled with its name (empty: none) "
            "and tenant: join on program to show names beside the per-program metrics.",
            labels=["program", "name", "tenant"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        try:
            names = self.read()
        except Exception as exc:  # a scrape must not fail with the database: the names are skipped
            logger.warning("program names not published, the store cannot be read: %s", exc)
            names = []
        for program in names:
            family.add_metric([program.id, program.name or "", program.tenant], 1)
        yield family


class _AdmissionCollector(Collector):
    """``fmprog_tenant_frames``: each tenant's frames running and waiting in this router, read at scrape time."""

    def __init__(self, read: Callable[[], dict[str, TenantLoad]]):
        self.read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "fmprog_tenant_frames",
            "Frames of a tenant in this router now: running (holding a slot) or waiting for one.",
            labels=["tenant", "state"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for tenant, load in sorted(self.read().items()):
            family.add_metric([tenant, "running"], load.running)
            family.add_metric([tenant, "waiting"], load.waiting)
        yield family
