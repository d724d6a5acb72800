"""A client that keeps streaming frames with feedback to a router while parts of the cluster are
killed under it, and what it takes to check that nothing acknowledged was lost."""

from __future__ import annotations

import base64
import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fmprog.images import encode_png
from fmprog.scene import scene_stream

RETRY_PAUSE_S = 0.1
GIVE_UP_AFTER_S = 120.0  # a request the cluster has not answered by then fails the stream


def truth(scene: Any) -> str:
    """The label of ``examples/programs/triangle_left_of_circle.py`` for a generated scene."""
    triangles = [o for o in scene.objects if o.shape == "triangle"]
    circles = [o for o in scene.objects if o.shape == "circle"]
    return "yes" if any(t.center[0] < c.center[0] for t in triangles for c in circles) else "no"


def labelled_frames(seed: int, count: int) -> list[tuple[str, str]]:
    """``count`` generated frames as base64 PNG, each with its label."""
    return [(base64.b64encode(encode_png(s.image)).decode(), truth(s)) for s in scene_stream(seed=seed, count=count)]


@dataclass(frozen=True)
class Labelled:
    """One frame answered and its label acknowledged by the router."""

    answer: dict[str, Any]
    feedback: dict[str, Any]
    at: float  # time.monotonic() when the label was acknowledged
    feedback_sends: int  # 1, or more where the router did not answer the label's first sends


@dataclass
class FrameStream:
    """Streams ``frames`` (cycling) to ``router`` for ``program_id`` in a thread: each frame is
    answered, then labelled. A request the router does not answer (no connection, a timeout, a 5xx)
    is sent again until it is, as a client of a cluster that heals would; the stream stops only
    between frames, so every answer it got is labelled. A 4xx, or a request unanswered for
    ``GIVE_UP_AFTER_S``, ends the stream with ``failure`` set."""

    router: str
    program_id: str
    frames: list[tuple[str, str]]
    labelled: list[Labelled] = field(default_factory=list)
    retried: int = 0  # requests sent again because the router did not answer
    failure: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> FrameStream:
        self._thread = threading.Thread(target=self._run, name="frame-stream", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(GIVE_UP_AFTER_S * 2 + 10)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def labelled_since(self, moment: float) -> list[Labelled]:
        return [done for done in list(self.labelled) if done.at > moment]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as http:
            for image, label in itertools.cycle(self.frames):
                if self._stop.is_set():
                    return
                try:
                    answer, _ = self._post(http, "/answer", {"program_id": self.program_id, "image": image})
                    body = {"decision_id": answer["decision_id"], "label": label}
                    feedback, sends = self._post(http, "/feedback", body)
                except AssertionError as exc:
                    self.failure = str(exc)
                    return
                self.labelled.append(Labelled(answer, feedback, time.monotonic(), sends))

    def _post(self, http: httpx.Client, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The router's reply to ``body``, and how many times it was sent."""
        deadline = time.monotonic() + GIVE_UP_AFTER_S
        for sends in itertools.count(1):
            try:
                reply = http.post(f"{self.router}{path}", json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if reply.status_code == 200:
                    return reply.json(), sends
                assert reply.status_code >= 500, f"{path}: {reply.status_code} {reply.text}"
                problem = f"{reply.status_code} {reply.text[:200]}"
            assert time.monotonic() < deadline, f"{path} unanswered for {GIVE_UP_AFTER_S:g} s: {problem}"
            self.retried += 1
            time.sleep(RETRY_PAUSE_S)


def learned_by_the_policy(stream: FrameStream) -> list[str]:
    """The decisions whose labels the policy must learn: every labelled answer the policy decided
    (a fallback answer's label is not the policy's to learn). The stream labels each decision once,
    so the router calls a label a repeat only when an earlier send of it was recorded but its reply
    lost (the router killed between the two); that label was learned from the earlier send."""
    for done in stream.labelled:
        assert not done.feedback["repeat"] or done.feedback_sends > 1, done
    return [done.answer["decision_id"] for done in stream.labelled if not done.answer["fallback"]]


def children(pid: int) -> Iterator[int]:
    """``pid``'s descendants."""
    todo = [pid]
    while todo:
        current = todo.pop()
        for listing in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found = [int(child) for child in listing.read_text().split()]
                todo += found
                yield from found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
