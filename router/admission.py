"""Admission: which frames a router runs now, which wait, and which it refuses.

Per tenant, a quota (``TenantQuota``); for the router, a bounded number of runs at once and of frames
waiting. Knows nothing of HTTP: a refusal is ``QuotaExceeded`` (the caller's own limit, 429) or
``Overloaded`` (the router's, 503), each with the seconds after which trying again makes sense.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

from router.errors import Overloaded, QuotaExceeded

STORED_CACHE_S = 5.0  # how long a tenant's stored bytes, read from the database, are trusted
STORED_RETRY_S = 60  # a tenant over its stored bytes waits for retention or a deletion: not soon


class TenantQuota(BaseModel):
    """What one tenant may use of one router. None: no limit of that kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_in_flight: int | None = Field(
        default=8,
        ge=1,
        le=10_000,
        description="Frames of the tenant running or waiting at once; past it, 429. Also the most program runs "
        "the tenant holds while others wait: the router's slots are shared fairly among the tenants waiting.",
    )
    frames_per_s: float | None = Field(
        default=None, gt=0, le=1_000_000, description="Frames a second, averaged over a burst of as many; past it, 429."
    )
    max_stored_mb: float | None = Field(
        default=None,
        gt=0,
        description="Megabytes of the tenant's stored answers (their answers, traces and decisions); past it, "
        "frames get 429 until retention or a deleted program frees room.",
    )
    max_streams: int | None = Field(default=4, ge=0, le=10_000, description="Streams the tenant runs at once.")


@dataclass(frozen=True, slots=True)
class TenantLoad:
    """One tenant's frames at this router: those holding a slot and those waiting for one."""

    running: int
    waiting: int


@dataclass(eq=False, slots=True)
class _Waiter:
    """A frame waiting for a slot; ``granted`` once a freed slot was handed to it."""

    order: int
    event: anyio.Event
    granted: bool = False


class Admission:
    """Which frames a router runs now, which wait, and which it refuses, for one router process.

    A frame arriving is checked against its tenant's quota (frames a second, stored bytes, frames in
    flight), then gets one of the router's ``slots`` at once if one is free and nobody waits, or waits
    in a queue of at most ``queue`` frames (all tenants together), or is refused as ``Overloaded``.
    A freed slot is handed straight to a waiting frame of the tenant with the fewest frames running
    (ties: the tenant whose oldest waiter came first; within a tenant, first come first served), so a
    tenant with many waiters cannot hold more than its share while others wait. The last ``reserve``
    free slots go only to a tenant with no frame running: a tenant keeping every slot busy with slow
    programs would otherwise make another's first frame wait for one of them to end. A frame refused or
    cancelled before it ran gives its frames-a-second token back: the rate counts frames that ran.
    All calls are on one event loop, so the bookkeeping needs no locks.
    """

    def __init__(
        self,
        slots: int,
        queue: int,
        quota: TenantQuota,
        quotas: dict[str, TenantQuota] | None = None,
        *,
        stored_bytes: Callable[[str], int] | None = None,
        reserve: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if slots < 1 or queue < 0 or not 0 <= reserve < slots:
            raise ValueError(
                f"admission needs slots >= 1, queue >= 0 and 0 <= reserve < slots, not {slots}, {queue} and {reserve}"
            )
        self.slots = slots
        self.queue = queue
        self.reserve = reserve
        self._default = quota
        self._quotas = dict(quotas or {})
        self._stored_bytes = stored_bytes
        self._clock = clock
        self._running: dict[str, int] = {}
        self._waiters: dict[str, deque[_Waiter]] = {}
        self._arrivals = itertools.count()
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant: (tokens, when counted)
        self._stored: dict[str, tuple[int, float]] = {}  # tenant: (bytes, when read)
        self._reads: dict[str, anyio.Lock] = {}  # one database read of a tenant's bytes at a time
        self._hold_s: float | None = None  # how long a frame holds a slot, a moving average

    def quota(self, tenant: str) -> TenantQuota:
        """The tenant's own quota, or the router's default."""
        return self._quotas.get(tenant, self._default)

    @property
    def running(self) -> int:
        """Frames holding a slot, all tenants together."""
        return sum(self._running.values())

    @property
    def waiting(self) -> int:
        """Frames waiting for a slot, all tenants together."""
        return sum(len(waiters) for waiters in self._waiters.values())

    def snapshot(self) -> dict[str, TenantLoad]:
        """Each tenant with a frame running or waiting, for the metrics; idle tenants are left out."""
        tenants = sorted(self._running.keys() | self._waiters.keys())
        return {t: TenantLoad(self._running.get(t, 0), len(self._waiters.get(t, ()))) for t in tenants}

    @asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        """Hold one of the router's slots for a frame of ``tenant`` while the block runs, waiting for
        one if need be; raises ``QuotaExceeded`` or ``Overloaded`` instead when the frame is refused.
        The slot is given back however the block ends (an error, the client gone)."""
        quota = self.quota(tenant)
        self._take_token(tenant, quota)
        try:
            await self._check_stored(tenant, quota)
            self._check_in_flight(tenant, quota)
            await self._acquire(tenant)
        except BaseException:  # refused or cancelled before it ran: its frames-a-second token is given back
            if quota.frames_per_s is not None:
                tokens, then = self._buckets[tenant]
                self._buckets[tenant] = (min(max(1.0, quota.frames_per_s), tokens + 1), then)
            raise
        started = self._clock()
        try:
            yield
        finally:
            held_s = self._clock() - started
            self._hold_s = held_s if self._hold_s is None else 0.8 * self._hold_s + 0.2 * held_s
            self._release(tenant)

    def _take_token(self, tenant: str, quota: TenantQuota) -> None:
        rate = quota.frames_per_s
        if rate is None:
            return
        capacity, now = max(1.0, rate), self._clock()
        tokens, then = self._buckets.get(tenant, (capacity, now))
        tokens = min(capacity, tokens + (now - then) * rate)
        if tokens < 1 - 1e-9:  # the tolerance: a clock advanced by exactly retry_after_s finds the token
            self._buckets[tenant] = (tokens, now)
            retry = (1 - tokens) / rate
            raise QuotaExceeded(
                f"tenant {tenant!r} sent frames faster than its frames_per_s of {rate:g}: retry after {retry:.3g} s",
                retry,
            )
        self._buckets[tenant] = (tokens - 1, now)

    async def _check_stored(self, tenant: str, quota: TenantQuota) -> None:
        if quota.max_stored_mb is None or self._stored_bytes is None:
            return
        stored = self._fresh_stored(tenant)
        if stored is None:
            lock = self._reads.get(tenant) or self._reads.setdefault(tenant, anyio.Lock())
            async with lock:  # frames arriving together wait for one read rather than each making one
                stored = self._fresh_stored(tenant)
                if stored is None:
                    now = self._clock()
                    stored = await anyio.to_thread.run_sync(self._stored_bytes, tenant)
                    self._stored[tenant] = (stored, now)
        if stored >= quota.max_stored_mb * 2**20:
            raise QuotaExceeded(
                f"tenant {tenant!r} stores {stored / 2**20:.1f} MB, its max_stored_mb of {quota.max_stored_mb:g}: "
                f"retry after {STORED_RETRY_S} s",
                STORED_RETRY_S,
            )

    def _fresh_stored(self, tenant: str) -> int | None:
        stored, when = self._stored.get(tenant, (0, -math.inf))
        return stored if self._clock() - when < STORED_CACHE_S else None

    def _check_in_flight(self, tenant: str, quota: TenantQuota) -> None:
        limit = quota.max_in_flight
        in_flight = self._running.get(tenant, 0) + len(self._waiters.get(tenant, ()))
        if limit is not None and in_flight >= limit:
            raise QuotaExceeded(
                f"tenant {tenant!r} has {in_flight} frames in flight, its max_in_flight of {limit}: retry after 1 s", 1
            )

    def _may_start(self, tenant: str, free: int) -> bool:
        """Whether a frame of ``tenant`` may take one of ``free`` slots: the reserved ones only
        while the tenant runs no frame."""
        return free > self.reserve or (free > 0 and not self._running.get(tenant))

    async def _acquire(self, tenant: str) -> None:
        # Waiters left while slots are free are kept off the reserve: a frame that may start, starts.
        waiting = self.waiting
        if self._may_start(tenant, self.slots - self.running):
            self._running[tenant] = self._running.get(tenant, 0) + 1
            return
        if waiting >= self.queue:
            # Time for the frames now waiting to start at the average hold (1 s before any ran, 60 s at most).
            retry = float(min(60, max(1, math.ceil((waiting + 1) * (self._hold_s or 0.0) / self.slots))))
            raise Overloaded(
                f"router overloaded: its {self.slots} slots are busy and {waiting} frames wait, its queue of "
                f"{self.queue}; tenant {tenant!r}'s frame is refused: retry after {retry:g} s",
                retry,
            )
        waiter = _Waiter(next(self._arrivals), anyio.Event())
        self._waiters.setdefault(tenant, deque()).append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:  # cancelled (the client went away): leave the queue, or pass the slot on
            if waiter.granted:
                self._release(tenant)
            else:
                self._remove(tenant, waiter)
            raise

    def _release(self, tenant: str) -> None:
        """Give the tenant's slot back, handing it at once to the waiter next in fairness (one that
        may start: see ``reserve``)."""
        self._running[tenant] -= 1
        if not self._running[tenant]:
            del self._running[tenant]
        free = self.slots - self.running
        candidates = [t for t in self._waiters if self._may_start(t, free)]
        if not candidates:
            return
        chosen = min(candidates, key=lambda t: (self._running.get(t, 0), self._waiters[t][0].order))
        waiter = self._waiters[chosen][0]
        self._remove(chosen, waiter)
        waiter.granted = True
        self._running[chosen] = self._running.get(chosen, 0) + 1
        waiter.event.set()

    def _remove(self, tenant: str, waiter: _Waiter) -> None:
        waiters = self._waiters[tenant]
        waiters.remove(waiter)
        if not waiters:
            del self._waiters[tenant]
