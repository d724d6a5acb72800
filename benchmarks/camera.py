"""Camera-like video sources on loopback, for the stream-ingest tests and benchmarks.

A router that pulls frames from cameras must be tried against real protocols, not a mock: each
source here serves a real video file from a server process on 127.0.0.1, and a test can kill that
process mid-stream and start it again on the same port, as a camera that loses power and comes back.

- ``rtsp_source``: RTSP (MJPEG or H.264 over RTP) from GStreamer's RTSP server, in real time. The
  server runs under the system Python (``rtsp_server.py``), which has the GObject bindings the virtual
  environment lacks; ``rtsp_available()`` says why it cannot run here (missing Debian packages).
- ``mjpeg_source``: an HTTP ``multipart/x-mixed-replace`` stream of JPEG frames, in real time, as
  cheap IP cameras serve.
- ``file_over_http``: the video file's bytes over plain HTTP (Content-Length, byte ranges).

The live sources behave like cameras: a client that connects gets the current picture, not the file's
first frame, and several clients share one stream. Without ``loop`` the server exits when the file
ends. Each context manager yields a ``CameraSource`` once a client has decoded a frame from it.

Also runnable (the ``rtsp`` mode replaces itself with the system Python's RTSP server)::

    python -m benchmarks.camera rtsp|mjpeg|http VIDEO --port P [--fps F] [--loop]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import io
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SYSTEM_PYTHON = Path("/usr/bin/python3")
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
# What rtsp_server.py needs: the GObject bindings, the RTSP server library, the good set (JPEG, RTP), the
# bad set (the in-process video channel, openh264enc) and FFmpeg's decoders (vtest.avi is MS-MPEG4).
RTSP_DEBS = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav"
)
MJPEG_PATH = "/camera.mjpg"
BOUNDARY = "frame"

# How a PyAV client should open each kind of source (``CameraSource.options``). RTSP over TCP: the
# frames come interleaved in the control connection, so a dead server is noticed at once (its socket
# closes) and none is lost as UDP datagrams can be. ``probesize=32`` stops FFmpeg from reading ~20
# frames (2 s at 10 fps) to estimate the frame rate before ``av.open`` returns, and then handing them
# over in a burst. The MJPEG demuxer and the file need no options.
RTSP_OPTIONS = {"rtsp_transport": "tcp", "probesize": "32"}
MJPEG_OPTIONS: dict[str, str] = {}
FILE_OPTIONS: dict[str, str] = {}


@functools.cache
def rtsp_available(video: Path = VTEST) -> str | None:
    """None when an RTSP source of ``video`` can be served here, else why not (and what to install)."""
    if not SYSTEM_PYTHON.exists():
        return f"no {SYSTEM_PYTHON} to run GStreamer's RTSP server"
    command = [str(SYSTEM_PYTHON), str(RTSP_SERVER), str(video), "--check"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {RTSP_SERVER.name}: {exc}"
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return f"{lines[-1] if lines else 'rtsp_server.py failed'} (apt-get install {RTSP_DEBS})"


class CameraSource:
    """A video server in a subprocess: ``url`` to read, ``options`` to pass to ``av.open``.

    ``stop()`` kills it (SIGKILL, as a camera losing power: its clients' connections drop) and
    ``start()`` brings it back on the same port, returning once a client has decoded a frame from it.
    The server also exits when this process does (it watches its stdin), so none outlives a killed test.
    """

    def __init__(self, kind: str, command: list[str], url: str, options: dict[str, str], port: int | None):
        self.kind = kind
        self.options = options
        self.port = port or 0  # 0 until the first start: the server picks a free port and says which
        self.fps: float | None = None  # the frame rate it sends (None for a file)
        self._command = command  # without --port
        self._url = url  # with {port}
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None  # the server's stderr, for the error when it fails

    @property
    def url(self) -> str:
        return self._url.format(port=self.port)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Starts the server (again, on the same port) and waits until a client decodes a frame."""
        if self.running:
            return
        self.stop()  # reaps a server that exited by itself
        if self._log is None:
            self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (kept across restarts, closed by close())
        self._log.seek(0)
        self._log.truncate()
        self._process = subprocess.Popen(
            [*self._command, "--port", str(self.port), "--exit-with-stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        deadline = time.monotonic() + timeout
        ready = self._ready_line(deadline).split()  # READY <port> [<fps>]
        self.port = int(ready[1])
        self.fps = float(ready[2]) if len(ready) > 2 else None
        self._probe(deadline)

    def stop(self) -> None:
        """Kills the server at once; its clients' connections close."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _ready_line(self, deadline: float) -> str:
        """The server's ``READY`` line: it prints it once it listens and has a frame to send."""
        process = self._process
        assert process is not None and process.stdout is not None
        while time.monotonic() < deadline:
            readable, _, _ = select.select([process.stdout], [], [], 0.1)
            if readable:
                line = process.stdout.readline()
                if line.startswith("READY"):
                    return line
                if not line:  # it exited
                    break
        self._fail("did not start")

    def _probe(self, deadline: float) -> None:
        """Decodes one frame as a client would: a listening socket is not yet a working stream."""
        import av

        error: Exception | None = None
        while (left := deadline - time.monotonic()) > 0:
            try:
                with av.open(self.url, options=self.options, timeout=(left, left)) as container:
                    next(container.decode(video=0))
                    return
            except (av.error.FFmpegError, OSError, StopIteration) as exc:
                error = exc
                time.sleep(0.1)
        self._fail(f"served no frame: {error}")

    def _fail(self, what: str) -> NoReturn:
        log = ""
        if self._log is not None:
            self._log.seek(0)
            log = self._log.read()[-2000:].strip()
        self.stop()
        raise RuntimeError(f"{self.kind} source {self.url} {what}" + (f":\n{log}" if log else ""))

    def __repr__(self) -> str:
        return f"CameraSource({self.kind}, {self.url!r}, running={self.running})"


@contextlib.contextmanager
def _serving(source: CameraSource) -> Iterator[CameraSource]:
    try:
        source.start()
        yield source
    finally:
        source.close()


def rtsp_source(
    video: Path = VTEST,
    port: int | None = None,
    fps: float | None = None,
    loop: bool = False,
    codec: str = "jpeg",
    path: str = "/camera",
    per_client: bool = False,
) -> contextlib.AbstractContextManager[CameraSource]:
    """``rtsp://127.0.0.1:PORT/camera``: ``video`` in real time, MJPEG (or ``codec="h264"``) over RTP.
    With ``per_client``, each client gets the file from its first frame (a recording played to it,
    so that its frame numbers are the file's) instead of the camera's current picture.

    Raises RuntimeError when RTSP cannot be served here: check ``rtsp_available()`` first to skip.
    """
    if reason := rtsp_available(video):
        raise RuntimeError(f"cannot serve RTSP: {reason}")
    command = [str(SYSTEM_PYTHON), str(RTSP_SERVER), str(video), "--path", path, "--codec", codec]
    command += ["--per-client"] if per_client else []
    url = f"rtsp://127.0.0.1:{{port}}{path}"
    return _serving(CameraSource("rtsp", command + _common(fps, loop), url, RTSP_OPTIONS, port))


def mjpeg_source(
    video: Path = VTEST, port: int | None = None, fps: float | None = None, loop: bool = False
) -> contextlib.AbstractContextManager[CameraSource]:
    """``http://127.0.0.1:PORT/camera.mjpg``: ``video`` in real time as a multipart stream of JPEGs."""
    command = [sys.executable, str(Path(__file__)), "mjpeg", str(video), *_common(fps, loop)]
    url = f"http://127.0.0.1:{{port}}{MJPEG_PATH}"
    return _serving(CameraSource("mjpeg", command, url, MJPEG_OPTIONS, port))


def file_over_http(video: Path = VTEST, port: int | None = None) -> contextlib.AbstractContextManager[CameraSource]:
    """``http://127.0.0.1:PORT/<file name>``: the file's bytes, as fast as the client reads them."""
    command = [sys.executable, str(Path(__file__)), "http", str(video)]
    url = f"http://127.0.0.1:{{port}}/{video.name}"
    return _serving(CameraSource("http", command, url, FILE_OPTIONS, port))


def _common(fps: float | None, loop: bool) -> list[str]:
    return (["--fps", f"{fps:g}"] if fps else []) + (["--loop"] if loop else [])


# The servers (run in their own process by the functions above, or from the command line).


class Latest:
    """The newest JPEG of a live stream, handed to every client as it comes (None: the stream ended).

    A client slower than the stream skips frames instead of falling behind, as with a real camera.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._jpeg: bytes | None = b""
        self._count = 0

    def publish(self, jpeg: bytes | None) -> None:
        with self._changed:
            self._jpeg, self._count = jpeg, self._count + 1
            self._changed.notify_all()

    def after(self, count: int) -> tuple[int, bytes | None]:
        """The first frame newer than frame number ``count``, waiting for it."""
        with self._changed:
            self._changed.wait_for(lambda: self._count > count)
            return self._count, self._jpeg


def _decoded(video: Path, loop: bool) -> Iterator[tuple[float, Any]]:
    """``(seconds, av.VideoFrame)`` for each frame of ``video``, times running on across loops; without
    ``loop``, ``(seconds, None)`` last: when the last frame's time on screen is over."""
    import av

    offset = 0.0
    while True:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            step = 1 / float(stream.average_rate or 25)
            t = 0.0
            for index, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else index * step
                yield offset + t, frame
        offset += t + step
        if not loop:
            yield offset, None
            return


def _pace(video: Path, fps: float, loop: bool, latest: Latest) -> None:
    """Publishes the frame due at each tick of ``fps``, playing the file in real time, then None.

    A camera's rate and the scene's clock are separate: ``fps`` above the file's repeats frames, below
    it skips them, and the picture moves at the file's own speed either way.
    """
    try:
        frames = _decoded(video, loop)
        current = next(frames, (0.0, None))
        upcoming = next(frames, None)
        jpeg = b""
        start = time.monotonic()
        for tick in range(sys.maxsize):
            due = tick / fps
            while upcoming is not None and upcoming[0] <= due:
                current, upcoming, jpeg = upcoming, next(frames, None), b""
            if current[1] is None:
                break
            if not jpeg:
                buffer = io.BytesIO()
                current[1].to_image().save(buffer, format="JPEG", quality=85)
                jpeg = buffer.getvalue()
            time.sleep(max(0.0, start + due - time.monotonic()))
            latest.publish(jpeg)
    finally:
        latest.publish(None)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a client still reading must not keep the process alive
    video: Path
    latest: Latest


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a camera does not log each request; errors still reach stderr

    def _send_error(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _MjpegHandler(_Handler):
    def do_GET(self) -> None:
        if self.path != MJPEG_PATH:
            return self._send_error(404)
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        count = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while True:
                count, jpeg = self.server.latest.after(count)  # a new client gets the current one at once
                if jpeg is None:
                    break
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg + b"\r\n")
        self.close_connection = True  # the stream ended: the camera hangs up


class _FileHandler(_Handler):
    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        video = self.server.video
        if self.path.split("?")[0] != f"/{video.name}":
            return self._send_error(404)
        size = video.stat().st_size
        first, last = 0, size - 1
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if ranged and ranged.group(1):
            first = int(ranged.group(1))
            last = min(int(ranged.group(2)), last) if ranged.group(2) else last
        elif ranged and ranged.group(2):  # the last N bytes
            first = max(0, size - int(ranged.group(2)))
        if ranged and first > last:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "video/x-msvideo" if video.suffix == ".avi" else "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        # Said, not just done: FFmpeg 8 otherwise takes an HTTP/1.1 answer as keep-alive, sends its
        # next range request (a seek) on this connection, finds it closed and reads on from the wrong
        # place, so AVI decoding fails ("header damaged").
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(last - first + 1))
        if ranged:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if not body:
            return
        with video.open("rb") as file, contextlib.suppress(BrokenPipeError, ConnectionResetError):
            file.seek(first)
            left = last - first + 1
            while left > 0 and (chunk := file.read(min(left, 1 << 16))):
                self.wfile.write(chunk)
                left -= len(chunk)


def serve_mjpeg(video: Path, port: int, fps: float | None, loop: bool) -> int:
    """Serves ``video`` as an MJPEG camera until the file ends (forever with ``loop``)."""
    fps = fps or _file_fps(video)
    latest = Latest()
    pacer = threading.Thread(target=_pace, args=(video, fps, loop, latest), daemon=True)
    pacer.start()
    if latest.after(0)[1] is None:
        return 1  # not a video PyAV decodes (the error is on stderr)
    with _Server(("127.0.0.1", port), _MjpegHandler) as server:
        server.latest = latest
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"READY {server.server_address[1]} {fps:g}", flush=True)
        pacer.join()
        time.sleep(0.5)  # lets the clients read the last frame
    return 0


def serve_file(video: Path, port: int) -> int:
    """Serves ``video``'s bytes until killed."""
    with _Server(("127.0.0.1", port), _FileHandler) as server:
        server.video = video
        print(f"READY {server.server_address[1]}", flush=True)
        server.serve_forever()
    return 0


def _exit_with_stdin() -> None:
    """Ends the process once stdin reaches its end: the parent holding the pipe has exited."""
    sys.stdin.read()
    os._exit(0)


def _file_fps(video: Path) -> float:
    import av

    with av.open(str(video)) as container:
        return float(container.streams.video[0].average_rate or 25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a video file as a camera on 127.0.0.1.")
    parser.add_argument("kind", choices=("rtsp", "mjpeg", "http"))
    parser.add_argument("video", type=Path)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free one (printed on the READY line)")
    parser.add_argument("--fps", type=float, default=None, help="frames a second sent (default: the file's)")
    parser.add_argument("--loop", action="store_true", help="restart the file at its end instead of exiting")
    parser.add_argument("--codec", choices=("jpeg", "h264"), default="jpeg", help="RTSP only")
    parser.add_argument("--exit-with-stdin", action="store_true", help="exit when stdin closes (the parent died)")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        parser.error(f"no video file {args.video}")
    if args.kind == "rtsp":
        command = [str(SYSTEM_PYTHON), str(RTSP_SERVER), str(args.video), "--port", str(args.port)]
        command += ["--codec", args.codec, *_common(args.fps, args.loop)]
        command += ["--exit-with-stdin"] if args.exit_with_stdin else []
        os.execv(command[0], command)
    if args.exit_with_stdin:
        threading.Thread(target=_exit_with_stdin, daemon=True).start()
    if args.kind == "mjpeg":
        return serve_mjpeg(args.video, args.port, args.fps, args.loop)
    return serve_file(args.video, args.port)


if __name__ == "__main__":
    sys.exit(main())
