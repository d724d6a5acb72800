"""The DeploymentHandle client's own logic against a fake handle (the real Ray Serve path is
tests/services/test_serve_cpu.py), and the coalescer under it: concurrent calls sent in few
requests without a timer, one call's failure its own, a failed request failing each of its calls,
timeouts, the breaker, and the frame sent once per run as parts of it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from fmprog.backends import BackendSpec, Function
from fmprog.backends.frames import FramePart, answering
from fmprog.backends.functions import DetectReply, Served
from fmprog.coalesce import Coalescer
from fmprog.engines import EngineError
from fmprog.images import ImageError
from services.client import SHARE_FRAMES_FROM_BYTES, BackendCallError, HandleBackend

SPEC = BackendSpec(
    name="detect-small", function=Function.detect, cost=1, batching={"max_batch_size": 8, "batch_wait_timeout_s": 0}
)


def _reply(n: int) -> DetectReply:
    return DetectReply(detections=[], backend="detect-small", batch_size=n, compute_s=0.0)


class Slow:
    """A ``send`` that takes ``delay_s`` per request and records each request's calls."""

    def __init__(self, delay_s: float = 0.05):
        self.delay_s = delay_s
        self.requests: list[list[tuple[Any, ...]]] = []
        self.lock = threading.Lock()

    def __call__(self, calls: list[tuple[Any, ...]]) -> list[Served | BaseException]:
        with self.lock:
            self.requests.append(calls)
        time.sleep(self.delay_s)
        return [_reply(len(calls)) for _ in calls]


def test_a_lone_call_is_sent_at_once():
    send = Slow(delay_s=0.0)
    coalescer = Coalescer(send, max_batch=8, max_in_flight=1)
    started = time.monotonic()
    assert coalescer.call(("a",), timeout_s=5).batch_size == 1
    assert time.monotonic() - started < 1.0  # no timer to wait out (a loose bound: shared machines)
    assert send.requests == [[("a",)]]


def test_concurrent_calls_share_requests_and_each_gets_its_own_reply():
    send = Slow(delay_s=0.05)
    coalescer = Coalescer(send, max_batch=8, max_in_flight=1)
    with ThreadPoolExecutor(max_workers=24) as pool:
        replies = list(pool.map(lambda i: coalescer.call((i,), timeout_s=30), range(24)))
    sent = [call for request in send.requests for call in request]
    assert sorted(sent) == [(i,) for i in range(24)]  # every call sent exactly once
    assert len(send.requests) < 24
    assert max(len(request) for request in send.requests) <= 8
    assert max(reply.batch_size for reply in replies) > 1


def test_no_more_requests_are_in_flight_than_allowed():
    in_flight, most = 0, 0
    lock = threading.Lock()

    def send(calls: list[tuple[Any, ...]]) -> list[Served | BaseException]:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.02)
        with lock:
            in_flight -= 1
        return [_reply(len(calls)) for _ in calls]

    coalescer = Coalescer(send, max_batch=4, max_in_flight=2)
    with ThreadPoolExecutor(max_workers=16) as pool:
        assert len(list(pool.map(lambda i: coalescer.call((i,), timeout_s=30), range(64)))) == 64
    assert most == 2


def test_one_calls_failure_is_its_own_and_a_failed_request_fails_each_of_its_calls():
    def send(calls: list[tuple[Any, ...]]) -> list[Served | BaseException]:
        if any(call == ("broken",) for call in calls):
            raise BackendCallError("the replica died")
        return [BackendCallError("refused", retryable=False) if c == ("bad",) else _reply(len(calls)) for c in calls]

    coalescer = Coalescer(send, max_batch=8, max_in_flight=1)
    with pytest.raises(BackendCallError, match="refused"):
        coalescer.call(("bad",), timeout_s=5)
    assert coalescer.call(("good",), timeout_s=5).backend == "detect-small"
    with pytest.raises(BackendCallError, match="the replica died") as failed:
        coalescer.call(("broken",), timeout_s=5)
    assert failed.value.retryable
    with ThreadPoolExecutor(max_workers=8) as pool:  # each call of a failed request gets its own exception
        waiting = [pool.submit(coalescer.call, ("broken",) if i == 0 else (i,), 5) for i in range(8)]
        failures = [f.exception() for f in waiting]
    broken = [f for f in failures if f is not None]
    assert broken and len({id(f) for f in broken}) == len(broken)
    assert coalescer.call(("good",), timeout_s=5)  # the slot was given back


def test_a_call_waiting_past_its_timeout_fails_and_the_rest_go_on():
    release = threading.Event()

    def send(calls: list[tuple[Any, ...]]) -> list[Served | BaseException]:
        if ("stuck",) in calls:
            release.wait(10)
        return [_reply(len(calls)) for _ in calls]

    coalescer = Coalescer(send, max_batch=8, max_in_flight=1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        stuck = pool.submit(coalescer.call, ("stuck",), 30)
        time.sleep(0.1)
        with pytest.raises(TimeoutError, match="no reply within"):
            coalescer.call(("waiting",), timeout_s=0.2)
        release.set()
        assert stuck.result(10).batch_size == 1
    assert coalescer.call(("after",), timeout_s=5).batch_size == 1


class FakeHandle:
    """A DeploymentHandle's shape: ``handle.calls.remote(function, calls).result(timeout_s=...)``."""

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[tuple[str, list[tuple[Any, ...]]]] = []
        self.calls = self

    def remote(self, function: str, calls: list[tuple[Any, ...]]) -> Any:
        self.requests.append((function, calls))
        handle = self

        class Response:
            def result(self, timeout_s: float) -> Any:
                return handle.answer(calls)

            def cancel(self) -> None:
                pass

        return Response()


def test_handle_client_maps_each_calls_outcome():
    def answer(calls):
        out = []
        for _image, noun in calls:
            if noun == "engine":
                out.append(EngineError("out of memory"))
            elif noun == "image":
                out.append(ImageError("a frame must be an H x W x 3 uint8 array"))
            else:
                out.append(_reply(len(calls)))
        return out

    client = HandleBackend(SPEC, FakeHandle(answer), breaker_failures=2)
    image = np.zeros((4, 4, 3), np.uint8)
    assert client.model().detect(image, "cup") == []
    with pytest.raises(BackendCallError, match="ImageError: a frame must be") as refused:
        client.model().detect(image, "image")
    assert not refused.value.retryable
    for _ in range(2):
        with pytest.raises(BackendCallError, match="EngineError: out of memory") as failed:
            client.model().detect(image, "engine")
        assert failed.value.retryable
    assert client.circuit_open()  # two failures in a row; the refusal did not count
    with pytest.raises(BackendCallError, match="circuit open"):
        client.model().detect(image, "cup")


def test_handle_client_sends_a_large_frame_once_per_run_and_crops_as_places():
    puts: list[np.ndarray] = []
    handle = FakeHandle(lambda calls: [_reply(len(calls)) for _ in calls])
    client = HandleBackend(SPEC, handle, put=lambda frame: puts.append(frame) or f"ref{len(puts)}")
    side = int(np.ceil(np.sqrt(SHARE_FRAMES_FROM_BYTES / 3))) + 1
    frame = np.zeros((side, side, 3), np.uint8)
    model = client.model()
    with answering(frame):
        model.detect(frame, "cup")
        model.detect(frame[10:20, 5:25], "cup")
        model.detect(np.zeros((4, 4, 3), np.uint8), "cup")  # not part of the frame: sent as it is
    assert len(puts) == 1 and puts[0] is frame
    sent = [call[0] for _, calls in handle.requests for call in calls]
    assert sent[0] == FramePart("ref1", (0, 0, side, side))
    assert sent[1] == FramePart("ref1", (10, 5, 10, 20))
    assert isinstance(sent[2], np.ndarray)
    small = np.zeros((8, 8, 3), np.uint8)
    with answering(small):
        model.detect(small, "cup")  # a small frame travels inside the call
    assert len(puts) == 1
    assert isinstance(handle.requests[-1][1][0][0], np.ndarray)
