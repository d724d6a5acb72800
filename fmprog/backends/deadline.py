"""The deadline of the run a thread is making backend calls for, so that a call cannot outlive it.

A run of a program has a time limit, backend calls included; a backend that stops answering (its
replicas gone, a proxy that hangs) would otherwise hold the run, its slot and its worker for the
client's whole timeout. While a run makes its calls (``run_deadline(deadline)``, set by whatever
runs the program), a client asks ``call_timeout(its own timeout)`` how long one call may wait.

A call cut short by the run's deadline that had waited less than ``STALL_S`` says nothing about
the backend (the program had spent its time elsewhere): the client should not count it against the
backend's circuit, so that a program calling backends at the end of its time cannot open another
tenant's circuits. One that waited longer than that without a reply is a backend that stalls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from time import perf_counter

STALL_S = 1.0

_deadline: ContextVar[float | None] = ContextVar("fmprog_run_deadline", default=None)


@contextlib.contextmanager
def run_deadline(deadline: float) -> Iterator[None]:
    """While the block runs (in this thread), backend calls end by ``deadline`` (``perf_counter`` time)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def call_timeout(limit_s: float) -> tuple[float, bool]:
    """How long a call may wait: ``limit_s``, or what is left of the run's time when that is less
    (then also True: the run's deadline is what bounds the call). At most 0 when nothing is left."""
    deadline = _deadline.get()
    if deadline is None:
        return limit_s, False
    left = deadline - perf_counter()
    return (left, True) if left < limit_s else (limit_s, False)
