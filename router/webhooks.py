"""A stream's webhook: each of its events POSTed to a URL, in order, at least once.

``WebhookSender`` is a thread beside the stream's runner. It reads the stream's events from the
database after the last one it settled (``seq``, saved with the stream's counters, so a router
taking the stream over goes on from there) and POSTs each as JSON. A 2xx settles the event. A
timeout, a failed connection, a 408, a 429 or a 5xx is retried with backoff (``attempts`` in all);
a 4xx otherwise is a refusal that retrying cannot change. An event refused, or never acknowledged
after its retries, is kept as a dead letter (``stream_dead_letters``) and the sender goes on with the
next one: one bad event does not stall the stream.
"""

from __future__ import annotations

import logging
import threading

import httpx

from fmprog.streams.source import redacted
from router.metrics import RouterMetrics
from router.schemas import StreamEvent
from router.stream_store import StreamStore

logger = logging.getLogger(__name__)
RETRYABLE = frozenset({408, 429})


class WebhookSender:
    def __init__(
        self,
        url: str,
        stream_id: str,
        events: StreamStore,
        metrics: RouterMetrics,
        *,
        seq: int,
        attempts: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
        poll_s: float = 0.2,
    ):
        self.url = url
        self.stream_id = stream_id
        self.events = events
        self.metrics = metrics
        self.seq = seq  # the last event settled (delivered or dead-lettered)
        self.failed = 0
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self._client = httpx.Client(timeout=timeout_s)
        self._stopped = threading.Event()
        self._draining = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"webhook-{stream_id[:8]}", daemon=True)

    def start(self) -> WebhookSender:
        self._thread.start()
        return self

    def stop(self, drain_s: float = 2.0) -> None:
        """Stop, after sending what is left for up to ``drain_s``."""
        self._draining.set()
        self._thread.join(drain_s)
        self._stopped.set()
        self._thread.join(self.attempts * (self.backoff_s * 4 + 5))
        self._client.close()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                pending = self.events.events_after(self.stream_id, self.seq, limit=50)
            except Exception:
                logger.exception("stream %s: the webhook's events could not be read; retried", self.stream_id)
                pending = []
            if not pending:
                if self._draining.is_set():
                    return
                self._stopped.wait(self.poll_s)
                continue
            for event in pending:
                if self._stopped.is_set():
                    return
                self._send(event)
                self.seq = event.seq

    def _send(self, event: StreamEvent) -> None:
        reason = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._client.post(
                    self.url,
                    content=event.model_dump_json(),
                    headers={
                        "content-type": "application/json",
                        "x-fmprog-stream": self.stream_id,
                        "x-fmprog-event": str(event.seq),
                    },
                )
            except httpx.HTTPError as exc:
                reason = f"no reply: {type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    self.metrics.stream_webhook.labels(self.stream_id, "delivered").inc()
                    return
                reason = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code < 500 and response.status_code not in RETRYABLE:
                    break  # refused: the same event would be refused again
            if attempt < self.attempts and self._stopped.wait(self.backoff_s * 2 ** (attempt - 1)):
                break
        self.failed += 1
        self.metrics.stream_webhook.labels(self.stream_id, "dead_letter").inc()
        logger.warning(
            "stream %s: event %d not taken by the webhook %s (%s); kept as a dead letter",
            self.stream_id,
            event.seq,
            redacted(self.url),
            reason,
        )
        try:
            self.events.add_dead_letter(self.stream_id, event.seq, self.url, reason, attempt)
        except Exception:
            logger.exception("stream %s: the dead letter of event %d was not stored", self.stream_id, event.seq)
