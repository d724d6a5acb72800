"""Streams: the router pulls a camera's (or a video's) frames, answers them, and keeps the answers as events.

``StreamManager`` starts a stream for a program (``start``), runs the streams this router holds
the lease of (one ``StreamRunner`` each: a ``StreamReader`` thread sampling the source into a
one-frame mailbox, and a thread answering the latest frame through ``RouterService.answer_frame``
with the stream as the camera, so the reuse gate applies) and, every ``tick_s`` (``tick``), renews
those leases with the counters, stops the streams a client stopped or another router took over,
and claims the running streams whose lease ran out: a router that dies loses its streams to the
others within a lease. Each answered frame is an event (``stream_events``), numbered from 1; a
client reads them as Server-Sent Events from any router, resuming after the last it saw.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from fmprog.streams.source import LatestFrame, SampledFrame, SourceError, StreamReader, check_source
from router.errors import NotFound, QuotaExceeded, RouterError, SourceRejected
from router.schemas import StreamCounters, StreamCreate, StreamEvent, StreamPublic
from router.service import RouterService
from router.store import utc_now
from router.stream_store import StreamStore
from router.webhooks import WebhookSender

logger = logging.getLogger(__name__)


def router_identity() -> str:
    """This router's name as a lease owner: host, process and a random suffix (a restarted router
    is a new owner, and waits for its old leases to run out like any other router)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class StreamRunner:
    """Reads one stream and answers its frames (two threads) until stopped or the source ends."""

    def __init__(
        self,
        manager: StreamManager,
        stream: StreamPublic,
        *,
        seq: int,
        backoff_s: tuple[float, float],
    ):
        self.manager = manager
        self.stream = stream
        self.seq = seq
        self.base = stream.counters  # what earlier owners counted
        self.counters = stream.counters.model_copy()
        self.last_error = stream.last_error
        self.mailbox = LatestFrame()
        self.reader = StreamReader(
            stream.source,
            stream.fps,
            self.mailbox,
            start_pts=stream.counters.last_pts,
            backoff_s=backoff_s,
            name=stream.id[:8],
        )
        self.webhook = (
            None
            if stream.webhook is None
            else WebhookSender(
                stream.webhook, stream.id, manager.events, manager.service.metrics, seq=stream.counters.webhook_seq
            )
        )
        self._stopped = threading.Event()
        self._seen = (0, 0, 0)  # the reader's received, dropped, reconnects counted in the metrics
        self.ended = False
        self.program_gone = False
        self.last_run_cost = 0.0
        self._counting = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"stream-{stream.id[:8]}", daemon=True)

    def start(self) -> StreamRunner:
        self.reader.start()
        self._thread.start()
        if self.webhook is not None:
            self.webhook.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopped.set()
        self.reader.stop(timeout_s)
        self._thread.join(timeout_s)
        if self.webhook is not None:
            self.webhook.stop()

    @property
    def finished(self) -> bool:
        """The source ended (a file) or the program was deleted: the stream is over."""
        return self.ended or self.program_gone

    def snapshot(self) -> StreamCounters:
        """The counters now, the reader's added to what earlier owners counted."""
        reader = self.reader.counters
        metrics, stream = self.manager.service.metrics, self.stream.id
        received, dropped, reconnects = reader.received, reader.dropped, reader.reconnects
        with self._counting:  # the reader's counts reach the metrics once, whoever asks
            seen, self._seen = self._seen, (received, dropped, reconnects)
        metrics.stream_frames.labels(stream, "received").inc(max(0, received - seen[0]))
        metrics.stream_frames.labels(stream, "dropped").inc(max(0, dropped - seen[1]))
        metrics.stream_reconnects.labels(stream).inc(max(0, reconnects - seen[2]))
        if self.reader.last_error is not None:
            self.last_error = self.reader.last_error
        return self.counters.model_copy(
            update={
                "received": self.base.received + received,
                "dropped": self.base.dropped + dropped,
                "reconnects": self.base.reconnects + reconnects,
                "last_pts": max(self.counters.last_pts, self.reader.last_pts),
                **(
                    {}
                    if self.webhook is None
                    else {
                        "webhook_seq": self.webhook.seq,
                        "webhook_failed": self.base.webhook_failed + self.webhook.failed,
                    }
                ),
            }
        )

    def _run(self) -> None:
        while not self._stopped.is_set():
            frame = self.mailbox.take(0.25)
            if frame is None:
                if self.reader.state == "ended":
                    self.ended = True
                    return
                continue
            try:
                self._answer(frame)
            except NotFound:
                self.program_gone = True
                return
            except Exception as exc:
                self.counters = self.counters.model_copy(update={"failed": self.counters.failed + 1})
                self.manager.service.metrics.stream_frames.labels(self.stream.id, "failed").inc()
                # a refusal (a spent budget) is the program's; anything else is a fault. An event
                # number another router took meanwhile (it took the stream over) fails here too.
                level = logging.INFO if isinstance(exc, RouterError) else logging.ERROR
                logger.log(level, "stream %s: frame %d not answered: %s", self.stream.id, frame.index, exc)

    def _answer(self, frame: SampledFrame) -> None:
        stream = self.stream
        result = self.manager.service.answer_frame(
            stream.program_id,
            frame.image,
            frame_id=f"{stream.id}:{frame.index}",
            camera=f"stream:{stream.id}" if stream.reuse else None,
            max_age=stream.max_age,
        )
        lag = time.monotonic() - frame.received
        self.seq += 1
        event = StreamEvent(
            seq=self.seq,
            stream_id=stream.id,
            frame=frame.index,
            pts=frame.pts,
            answer=result.answer,
            decision_id=result.decision_id,
            cost=result.cost,
            reused=result.reused,
            error=result.error,
            lag_s=round(lag, 4),
            created_at=utc_now(),
        )
        self.manager.events.add_event(event)
        saved = self.last_run_cost if result.reused else 0.0  # what the reused run cost
        if not result.reused:
            self.last_run_cost = result.cost
        counters = self.counters
        self.counters = counters.model_copy(
            update={
                "answered": counters.answered + 1,
                "reused": counters.reused + int(result.reused),
                "cost": counters.cost + result.cost,
                "saved_cost": counters.saved_cost + saved,
                "lag_s": event.lag_s,
                "last_pts": frame.pts + 1 / stream.fps,
            }
        )
        metrics = self.manager.service.metrics
        metrics.stream_frames.labels(stream.id, "answered").inc()
        if result.reused:
            metrics.stream_frames.labels(stream.id, "reused").inc()
            metrics.stream_saved_cost.labels(stream.id).inc(saved)
        metrics.stream_lag.labels(stream.id).observe(lag)


class StreamManager:
    """The streams this router reads, and their leases (see the module's docstring)."""

    def __init__(
        self,
        service: RouterService,
        *,
        file_roots: list[Path],
        lease_s: float = 6.0,
        max_streams: int = 16,
        backoff_s: tuple[float, float] = (0.25, 2.0),
        owner: str | None = None,
    ):
        self.service = service
        self.events = StreamStore(service.store)
        self.file_roots = file_roots
        self.lease_s = lease_s
        self.max_streams = max_streams
        self.backoff_s = backoff_s
        self.owner = owner or router_identity()
        self._runners: dict[str, StreamRunner] = {}
        self._lock = threading.Lock()

    # -- the API's operations -------------------------------------------------------------------

    def start(
        self, program_id: str, request: StreamCreate, *, tenant: str | None = None, max_streams: int | None = None
    ) -> StreamPublic:
        """Start reading a stream for a program: NotFound, QuotaExceeded (``tenant`` already runs
        ``max_streams`` streams, on any router), SourceRejected (a source this router refuses), or
        the stream, running here."""
        program = self.service.programs.get(program_id)
        if tenant is not None and max_streams is not None and self.events.running(tenant) >= max_streams:
            raise QuotaExceeded(
                f"tenant {tenant!r} runs {max_streams} streams, its max_streams: stop one first", retry_after_s=60
            )
        try:
            target = check_source(request.source, self.file_roots)
        except SourceError as exc:
            raise SourceRejected(str(exc)) from None
        stream_id = uuid.uuid4().hex
        stored = request.model_copy(update={"source": target if request.source.startswith("file:") else request.source})
        now = utc_now()
        with self._lock:
            if len(self._runners) >= self.max_streams:  # stored unowned: a router with room claims it
                self.events.add(stream_id, program_id, stored, None, None, tenant=program.tenant)
            else:
                lease = now + timedelta(seconds=self.lease_s)
                self.events.add(stream_id, program_id, stored, self.owner, lease, tenant=program.tenant)
                self._run(self.events.claim(stream_id, self.owner, now, lease))
        return self.get(stream_id)

    def get(self, stream_id: str) -> StreamPublic:
        stream = self.events.get(stream_id)
        with self._lock:
            runner = self._runners.get(stream_id)
        if runner is not None:  # fresher than the stored counters
            stream = stream.model_copy(update={"counters": runner.snapshot(), "last_error": runner.last_error})
        return stream

    def stop(self, stream_id: str) -> None:
        """Stop a stream (NotFound): stored at once; its owner stops reading it at its next tick
        (at once when that is this router)."""
        self.events.stop(stream_id)
        with self._lock:
            runner = self._runners.pop(stream_id, None)
        if runner is not None:
            runner.stop()
            self.events.renew(stream_id, self.owner, utc_now(), runner.snapshot(), runner.last_error)
            self.events.release(stream_id, self.owner)
        self._gauge()

    def stop_program(self, program_id: str) -> None:
        """Stop a deleted program's streams."""
        self.events.stop_program(program_id)
        with self._lock:
            ids = [i for i, runner in self._runners.items() if runner.stream.program_id == program_id]
        for stream_id in ids:
            self.stop(stream_id)

    def prune(self, retention: timedelta) -> int:
        """Delete stream events older than ``retention`` (as decisions are); how many."""
        return self.events.prune_events(utc_now() - retention)

    # -- leases ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Renew this router's leases (saving the counters), end the streams that are over, and
        claim running streams nobody holds."""
        now = utc_now()
        lease = now + timedelta(seconds=self.lease_s)
        with self._lock:
            runners = list(self._runners.items())
        for stream_id, runner in runners:
            counters = runner.snapshot()
            if runner.finished:
                self._drop(stream_id)
                self.events.renew(stream_id, self.owner, now, counters, runner.last_error)
                self.events.release(stream_id, self.owner, state="ended" if runner.ended else "stopped")
                continue
            state = self.events.renew(stream_id, self.owner, lease, counters, runner.last_error)
            if state != "running":  # stopped by a client (through any router), or taken over
                self._drop(stream_id)
                if state is not None:
                    self.events.release(stream_id, self.owner)
        with self._lock:
            room = self.max_streams - len(self._runners)
        for stream_id in self.events.claimable(now, limit=max(room, 0)):
            claimed = self.events.claim(stream_id, self.owner, now, lease)
            if claimed is not None:
                logger.info("stream %s: taken over (its lease ran out)", stream_id)
                with self._lock:
                    self._run(claimed)
        self._gauge()

    def close(self) -> None:
        """Stop every stream this router reads and give their leases up: another router takes them
        over at its next tick."""
        with self._lock:
            runners, self._runners = dict(self._runners), {}
        for stream_id, runner in runners.items():
            runner.stop()
            try:
                self.events.renew(stream_id, self.owner, utc_now(), runner.snapshot(), runner.last_error)
                self.events.release(stream_id, self.owner)
            except Exception:
                logger.exception("stream %s: its lease was not given up (it runs out)", stream_id)
        self._gauge()

    def _run(self, stream: StreamPublic | None) -> None:
        """Start a runner for a stream just claimed (under the lock)."""
        if stream is None or stream.id in self._runners:
            return
        last = self.events.last_event(stream.id)
        if last is not None:  # the events are the truth: the last owner may have died before saving its counters
            counters = stream.counters
            resume = max(counters.last_pts, last.pts + 1 / stream.fps)
            stream = stream.model_copy(
                update={"counters": counters.model_copy(update={"answered": last.seq, "last_pts": resume})}
            )
        seq = 0 if last is None else last.seq
        self._runners[stream.id] = StreamRunner(self, stream, seq=seq, backoff_s=self.backoff_s).start()

    def _drop(self, stream_id: str) -> None:
        with self._lock:
            runner = self._runners.pop(stream_id, None)
        if runner is not None:
            runner.stop()

    def _gauge(self) -> None:
        with self._lock:
            self.service.metrics.streams_running.set(len(self._runners))
