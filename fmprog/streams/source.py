"""Frames from a camera or a video, pulled with PyAV (FFmpeg), sampled at a rate, the latest kept.

A source is a URL: ``rtsp://`` (a camera), ``http(s)://`` (an MJPEG camera or a video file) or
``file://`` (a path under a directory the operator allows). ``StreamReader`` reads it in a thread:
it samples the decoded frames at the stream's rate by their presentation time and hands each
sample to a ``LatestFrame``, a one-frame mailbox. When the consumer falls behind, the frame it has
not taken yet is replaced by the newer one and counted as dropped: a slow program sees the present,
never an ever longer queue. A source that is a file (or a file over HTTP) is read at its own pace
(one second of video a second), so a stream of a file behaves like a camera; it ends at its end. A
live source that drops (the camera restarts, the network fails) is reconnected with backoff.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import numpy as np

logger = logging.getLogger(__name__)

SCHEMES = ("rtsp", "rtsps", "http", "https", "file")
LIVE_FORMATS = ("rtsp", "mpjpeg", "mjpeg", "rtp", "sdp")
"""FFmpeg demuxers whose input is live: read as it comes, reconnected when it ends."""

ReaderState = Literal["connecting", "reading", "reconnecting", "ended", "stopped"]


class SourceError(ValueError):
    """A source URL refused: an unknown scheme, or a file outside the allowed directories."""


def check_source(url: str, file_roots: Sequence[Path]) -> str:
    """What PyAV opens for ``url``: the URL itself, or for ``file://`` the resolved path, which must
    lie under one of ``file_roots`` (none allowed when empty). SourceError says why not, and when
    PyAV, which reads every source, is not installed."""
    if importlib.util.find_spec("av") is None:
        raise SourceError("streams need PyAV, which is not installed here (pip install av, or the 'vision' extra)")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise SourceError(f"source {url!r}: the scheme must be one of {', '.join(SCHEMES)}")
    if scheme != "file":
        if not parts.hostname:
            raise SourceError(f"source {url!r} names no host")
        return url
    if parts.netloc not in ("", "localhost"):
        raise SourceError(f"source {url!r}: a file URL names a path on this host (file:///path)")
    path = Path(unquote(parts.path)).resolve()
    if not file_roots:
        raise SourceError("file sources are not allowed here (the router allows no directory for them)")
    if not any(path.is_relative_to(Path(root).resolve()) for root in file_roots):
        allowed = ", ".join(str(root) for root in file_roots)
        raise SourceError(f"source {url!r}: files are allowed only under {allowed}")
    if not path.is_file():
        raise SourceError(f"source {url!r}: no such file")
    return str(path)


@dataclass(frozen=True)
class SampledFrame:
    """One frame of a stream, as sampled: its index at the stream's rate, its time in the source."""

    index: int
    pts: float
    image: np.ndarray
    received: float  # time.monotonic() when it was read


class LatestFrame:
    """A one-frame mailbox between a reader and its consumer: ``put`` replaces a frame not taken yet
    (and says so: that frame is dropped), ``take`` waits for one."""

    def __init__(self) -> None:
        self._frame: SampledFrame | None = None
        self._ready = threading.Condition()

    def put(self, frame: SampledFrame) -> bool:
        """Leave ``frame`` for the consumer; True when it replaced one the consumer never took."""
        with self._ready:
            dropped = self._frame is not None
            self._frame = frame
            self._ready.notify()
            return dropped

    def take(self, timeout_s: float) -> SampledFrame | None:
        """The latest frame, or None when none came within ``timeout_s``."""
        with self._ready:
            if self._frame is None:
                self._ready.wait(timeout_s)
            frame, self._frame = self._frame, None
            return frame


def open_source(target: str, timeout_s: float) -> Any:
    """A PyAV container reading ``target``. RTSP goes over TCP (no datagrams lost, and a dead
    camera is noticed at once: its socket closes) with a small probe: FFmpeg would otherwise read
    about two seconds of frames to estimate the rate before returning, then hand them over at once."""
    import av

    options = {"rtsp_transport": "tcp", "probesize": "32"} if target.lower().startswith("rtsp") else {}
    return av.open(target, options=options, timeout=(timeout_s, timeout_s))


def is_live(container: Any) -> bool:
    """Whether a container reads a live source (a camera) rather than a file."""
    names = set(container.format.name.split(","))
    return bool(names & set(LIVE_FORMATS))


def sampled(
    container: Any,
    fps: float,
    *,
    start_pts: float = 0.0,
    pace: bool,
    stopped: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[SampledFrame]:
    """The container's video frames sampled at ``fps`` by presentation time, from ``start_pts``
    seconds on (seeking there in a file). With ``pace``, frames are yielded no faster than the
    source's time: a file plays like a camera."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if start_pts > 0 and not is_live(container):  # a file resumes where it was left
        container.seek(int(start_pts / stream.time_base), stream=stream, backward=True)
    live = is_live(container)
    first: float | None = None
    started = clock()
    due = math.floor(start_pts * fps + 0.5)  # the first index to sample
    for frame in container.decode(stream):
        if stopped.is_set():
            return
        seconds = clock() - started if frame.time is None else float(frame.time)
        if live:  # a camera's clock starts anywhere: times go on from where the last connection left them
            first = seconds if first is None else first
            seconds = seconds - first + start_pts
        index = math.floor(seconds * fps + 0.5)
        if index < due:
            continue
        due = index + 1
        if pace:
            ahead = (seconds - start_pts) - (clock() - started)
            if ahead > 0 and stopped.wait(ahead):
                return
        yield SampledFrame(index=index, pts=round(seconds, 4), image=frame.to_ndarray(format="rgb24"), received=clock())


@dataclass
class ReaderCounters:
    received: int = 0
    dropped: int = 0
    reconnects: int = 0


class StreamReader:
    """Reads a source in a thread into a ``LatestFrame``: samples at ``fps``, reconnects a live
    source that drops (backoff doubling from ``backoff_s[0]`` to ``backoff_s[1]``, back to the
    start after a frame) and ends at the end of a file. ``start_pts`` resumes a file where another
    reader left it."""

    def __init__(
        self,
        target: str,
        fps: float,
        mailbox: LatestFrame,
        *,
        start_pts: float = 0.0,
        timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.25, 2.0),
        name: str = "stream",
    ):
        self.target = target
        self.fps = fps
        self.mailbox = mailbox
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.counters = ReaderCounters()
        self.state: ReaderState = "connecting"
        self.last_error: str | None = None
        self.last_pts = start_pts
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reader-{name}", daemon=True)

    def start(self) -> StreamReader:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        self._thread.join(timeout_s)

    @property
    def done(self) -> bool:
        return self.state in ("ended", "stopped")

    def _run(self) -> None:
        wait = self.backoff_s[0]
        while not self._stopped.is_set():
            try:
                container = open_source(self.target, self.timeout_s)
            except Exception as exc:  # av.error.FFmpegError, OSError: not there (yet)
                self._failed(f"cannot open the source: {exc}")
            else:
                live = is_live(container)
                try:
                    self.state = "reading"
                    for frame in sampled(
                        container, self.fps, start_pts=self.last_pts, pace=not live, stopped=self._stopped
                    ):
                        wait = self.backoff_s[0]
                        self.counters.received += 1
                        self.last_pts = frame.pts + 1 / self.fps
                        if self.mailbox.put(frame):
                            self.counters.dropped += 1
                    if not live and not self._stopped.is_set():
                        self.state = "ended"
                        return
                    self._failed("the source ended")
                except Exception as exc:
                    self._failed(f"the source failed: {exc}")
                finally:
                    container.close()
            if self._stopped.wait(wait):
                break
            wait = min(wait * 2, self.backoff_s[1])
            self.counters.reconnects += 1
        self.state = "stopped"

    def _failed(self, reason: str) -> None:
        if self._stopped.is_set():
            return
        self.state = "reconnecting"
        if reason != self.last_error:
            logger.warning("stream source %s: %s; reconnecting", redacted(self.target), reason)
        self.last_error = reason


def redacted(target: str) -> str:
    """A URL without its password (a camera's URL often carries one), for logs and views."""
    parts = urlsplit(target)
    if parts.password is None:
        return target
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()
