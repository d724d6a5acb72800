"""The router's Prometheus metrics, in a registry of its own (one per app, so tests stay apart).

Cost is in the paper's unit (millions of parameters per invocation), labelled by program,
function and backend, so a dashboard can sum cost per program or per backend over time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fmprog.contract import is_yes
from router.schemas import AnswerResult

STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class _Running:
    """Running accuracy and F1 of one program, from feedback."""

    right: int = 0
    total: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.answers = Counter("fmprog_answers_total", "Frames answered.", ["program", "fallback"], registry=r)
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
            "backend calls included), record (SQLite).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.backend_calls = Counter(
            "fmprog_backend_calls_total", "Backend invocations.", ["program", "function", "backend", "ok"], registry=r
        )
        self.cost = Counter(
            "fmprog_cost_total",
            "Cost units (millions of parameters) charged.",
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
        self.feedback = Counter("fmprog_feedback_total", "Feedback received.", ["program", "outcome"], registry=r)
        self.accuracy = Gauge("fmprog_program_accuracy", "Running accuracy from feedback.", ["program"], registry=r)
        self.f1 = Gauge("fmprog_program_f1", "Running F1 on positives (binary tasks).", ["program"], registry=r)
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
        self.outbox = Gauge("fmprog_policy_outbox", "Policy messages waiting for delivery.", registry=r)
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
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()

    def watch_backend_circuit(self, backend: str, circuit_open: Callable[[], bool]) -> None:
        """Publish ``fmprog_backend_circuit_open{backend}`` from ``circuit_open()``, read at each scrape."""
        self.backend_circuit_open.labels(backend).set_function(lambda: 1.0 if circuit_open() else 0.0)

    def answered(self, result: AnswerResult, latency_s: float) -> None:
        """Count one answer that took ``latency_s`` end to end, and every backend call it made."""
        program = result.program_id
        self.answers.labels(program, str(result.fallback).lower()).inc()
        self.answer_latency.labels(program).observe(latency_s)
        for call in result.trace:
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

    def labelled(self, program_id: str, kind: str, answer: object, label: str, right: bool) -> None:
        """Update running accuracy (and F1 for binary tasks) with one new label."""
        with self._lock:
            running = self._running.setdefault(program_id, _Running())
        with running.lock:
            running.total += 1
            running.right += right
            if kind == "binary":
                said, truth = is_yes(answer), is_yes(label)
                running.tp += said and truth
                running.fp += said and not truth
                running.fn += truth and not said
                denominator = 2 * running.tp + running.fp + running.fn
                self.f1.labels(program_id).set(2 * running.tp / denominator if denominator else 1.0)
            self.accuracy.labels(program_id).set(running.right / running.total)
