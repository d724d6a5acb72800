"""Calls of a remote service from many threads, coalesced into few requests.

A request to another process costs the caller and the callee a fixed price (a Ray Serve request,
an HTTP round trip: milliseconds of CPU on small machines) whatever it carries. When many threads
each make a small call at once, sending each alone pays that price per call; a ``Coalescer`` sends
them together instead, without a timer: a call that finds a request slot free goes at once (a lone
call never waits), and the calls that queue while the requests in flight run go together in the
next one.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class _Pending:
    """One call waiting in a ``Coalescer``: its arguments, then its outcome, or the turn to send."""

    __slots__ = ("arguments", "lead", "outcome", "woken")

    def __init__(self, arguments: tuple[Any, ...]):
        self.arguments = arguments
        self.outcome: Any = None  # the reply, or the exception the call failed with
        self.lead = False  # told to send the next request (the calls waiting, its own among them)
        self.woken = threading.Event()


class Coalescer(Generic[R]):
    """Calls of one remote service from many threads, sent together: one request carries every
    call waiting, up to ``max_batch``.

    A call that finds fewer than ``max_in_flight`` requests in flight sends one at once; one that
    finds them all busy waits, and goes with the next request, sent by the first waiting call when
    a request comes back. There is no timer: a lone call never waits, and under load a request
    carries what queued while the previous one ran. ``send`` takes a list of calls' arguments and
    returns, per call, its reply or the exception it failed with; when it raises, every call of
    its request fails with (a copy of) that exception."""

    def __init__(
        self,
        send: Callable[[list[tuple[Any, ...]]], list[R | BaseException]],
        *,
        max_batch: int,
        max_in_flight: int,
    ):
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be >= 1")
        self._send = send
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._waiting: deque[_Pending] = deque()
        self._in_flight = 0

    def call(self, arguments: tuple[Any, ...], timeout_s: float) -> R:
        """One call's reply (blocking); its exception raised; TimeoutError after ``timeout_s``
        without an outcome."""
        pending = _Pending(arguments)
        with self._lock:
            self._waiting.append(pending)
            pending.lead = self._in_flight < self.max_in_flight
            if pending.lead:
                self._in_flight += 1
        deadline = time.monotonic() + timeout_s
        while pending.outcome is None:
            if pending.lead:
                pending.lead = False
                self._send_waiting()
                continue
            if not pending.woken.wait(max(0.0, deadline - time.monotonic())):
                with self._lock:
                    if pending.outcome is None and not pending.lead:
                        if pending in self._waiting:
                            self._waiting.remove(pending)
                        raise TimeoutError(f"no reply within {timeout_s:g} s")
            pending.woken.clear()
        if isinstance(pending.outcome, BaseException):
            raise pending.outcome
        return pending.outcome

    def _send_waiting(self) -> None:
        """Send one request with the calls waiting; then hand the turn to the first call still
        waiting, or give the request slot back."""
        with self._lock:
            batch = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_batch))]
        try:
            outcomes: list[R | BaseException] = self._send([p.arguments for p in batch]) if batch else []
            if len(outcomes) != len(batch):
                raise RuntimeError(f"the reply answered {len(outcomes)} of {len(batch)} calls")
        except Exception as exc:  # the whole request failed: each of its calls with it, in its own copy
            outcomes = [copy.copy(exc) for _ in batch]
        with self._lock:
            for pending, outcome in zip(batch, outcomes, strict=True):
                pending.outcome = outcome
                pending.woken.set()
            if self._waiting:
                successor = self._waiting[0]
                successor.lead = True
                successor.woken.set()
            else:
                self._in_flight -= 1
