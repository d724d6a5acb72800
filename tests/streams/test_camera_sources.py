"""The loopback cameras of ``benchmarks.camera``, read with PyAV as the router's stream ingest reads them.

Each source must serve the video's real frames (matched against the file decoded directly), at the
video's rate for the live ones, and come back on the same URL after being killed mid-stream.
"""

from __future__ import annotations

import itertools
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.camera import VTEST, CameraSource, file_over_http, mjpeg_source, rtsp_available, rtsp_source

av = pytest.importorskip("av")

pytestmark = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} is not installed (apt-get install opencv-doc)")
RTSP_MISSING = rtsp_available() if VTEST.is_file() else None
needs_rtsp = pytest.mark.skipif(RTSP_MISSING is not None, reason=f"no RTSP server here: {RTSP_MISSING}")
SMALL = (96, 72)  # frames are compared at this size, in gray


def small(frame: av.VideoFrame) -> np.ndarray:
    return frame.reformat(width=SMALL[0], height=SMALL[1], format="rgb24").to_ndarray().mean(axis=2)


@pytest.fixture(scope="module")
def file_frames() -> np.ndarray:
    """The first 150 frames of the video (15 s), decoded from the file itself, small and gray."""
    with av.open(str(VTEST)) as container:
        frames = [small(frame) for frame in itertools.islice(container.decode(video=0), 150)]
    return np.stack(frames)


def read(source: CameraSource, count: int) -> tuple[list[av.VideoFrame], list[float]]:
    """``count`` frames and the time each arrived."""
    frames, times = [], []
    with av.open(source.url, options=source.options, timeout=(5.0, 5.0)) as container:
        for frame in container.decode(video=0):
            frames.append(frame)
            times.append(time.monotonic())
            if len(frames) == count:
                break
    return frames, times


def matches(frames: list[av.VideoFrame], file_frames: np.ndarray) -> tuple[list[int], list[float]]:
    """For each frame, the index of the file's frame it is closest to, and its PSNR (dB) against it."""
    indices, psnrs = [], []
    for frame in frames:
        mse = ((file_frames - small(frame)) ** 2).mean(axis=(1, 2))
        indices.append(int(mse.argmin()))
        psnrs.append(float(10 * np.log10(255**2 / max(mse.min(), 1e-9))))
    return indices, psnrs


def assert_live_camera(source: CameraSource, file_frames: np.ndarray) -> None:
    """20 frames of the video, one after the other, arriving at its 10 frames a second."""
    frames, times = read(source, 21)
    assert (frames[0].width, frames[0].height) == (768, 576)
    fps = (len(times) - 2) / (times[-1] - times[1])  # from the 2nd: the 1st is whatever was current
    # a live camera sends at its rate, not as fast as it can read (loose: the machine may be busy)
    assert 5.0 < fps < 15.0, f"received {fps:.2f} frames a second"
    indices, psnrs = matches(frames, file_frames)
    assert min(psnrs) > 25, f"frames unlike the video's: PSNR {min(psnrs):.1f} dB"
    steps = np.diff(indices)
    assert (steps == 1).mean() >= 0.8, f"not the video's frames in order: {indices}"


def assert_comes_back(source: CameraSource) -> None:
    """Killed mid-stream, the client's read ends (cleanly or with an FFmpeg error) at once; started
    again on the same port, a new client decodes from the same URL."""
    url = source.url
    with av.open(url, options=source.options, timeout=(5.0, 5.0)) as container:
        frames = container.decode(video=0)
        next(frames)
        source.stop()
        killed = time.monotonic()
        assert how_it_ends(frames) in {StopIteration, av.error.FFmpegError}
        assert time.monotonic() - killed < 4.0  # the socket closed: sooner than the 5 s read timeout
    source.start()
    assert source.url == url
    frames, _ = read(source, 3)
    assert len(frames) == 3


def how_it_ends(frames: Iterator[av.VideoFrame]) -> type[Exception] | None:
    """How a client's reading ends once the server is gone: the stream's end or an FFmpeg error
    (which one depends on the protocol and codec; the bare type is returned), after what it had
    buffered. None if it goes on."""
    try:
        for _ in range(50):
            next(frames)
    except StopIteration:
        return StopIteration
    except av.error.FFmpegError:
        return av.error.FFmpegError
    return None


def clip(path: Path, count: int = 6, fps: int = 10) -> Path:
    """A short MPEG-4 clip whose frames are numbered by their gray level (frame i: 20 * i)."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(count):
            picture = np.full((120, 160, 3), 20 * i, np.uint8)
            output.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        output.mux(stream.encode())
    return path


def numbers(source: CameraSource, most: int) -> list[int]:
    """The numbers of the clip's frames a client sees, until the stream ends or ``most`` frames."""
    seen: list[int] = []
    try:
        with av.open(source.url, options=source.options, timeout=(5.0, 5.0)) as container:
            for frame in container.decode(video=0):
                seen.append(round(frame.to_ndarray(format="rgb24").mean() / 20))
                if len(seen) == most:
                    break
    except av.error.OSError:  # how FFmpeg's MJPEG demuxer reports the closed connection at the end
        assert source.kind == "mjpeg"
    return seen


def test_file_over_http_serves_the_file_itself() -> None:
    with file_over_http() as source:
        frames, _ = read(source, 20)
        request = urllib.request.Request(source.url, headers={"Range": "bytes=100-199"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 206
            assert response.read() == VTEST.read_bytes()[100:200]
    with av.open(str(VTEST)) as container:
        expected = [frame.to_ndarray(format="rgb24") for frame in itertools.islice(container.decode(video=0), 20)]
    assert all(np.array_equal(f.to_ndarray(format="rgb24"), e) for f, e in zip(frames, expected, strict=True))


def test_file_over_http_comes_back() -> None:
    with file_over_http() as source:
        source.stop()
        with pytest.raises(av.error.FFmpegError):
            av.open(source.url, timeout=(2.0, 2.0))
        source.start()
        assert len(read(source, 3)[0]) == 3


def test_mjpeg_source_is_a_live_camera(file_frames: np.ndarray) -> None:
    with mjpeg_source() as source:
        assert source.fps == 10
        assert_live_camera(source, file_frames)
        assert_comes_back(source)


@needs_rtsp
@pytest.mark.parametrize("codec", ["jpeg", "h264"])
def test_rtsp_source_is_a_live_camera(codec: str, file_frames: np.ndarray) -> None:
    with rtsp_source(codec=codec) as source:
        assert source.url.startswith("rtsp://127.0.0.1:")
        assert_live_camera(source, file_frames)
        assert_comes_back(source)


@needs_rtsp
def test_rtsp_source_serves_several_clients_at_once() -> None:
    with rtsp_source() as source:
        counts: list[int] = []
        readers = [threading.Thread(target=lambda: counts.append(len(read(source, 5)[0]))) for _ in range(3)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=10)
        assert counts == [5, 5, 5]


@pytest.mark.parametrize("kind", ["rtsp", "mjpeg"])
def test_a_live_source_ends_with_its_file_or_loops(kind: str, tmp_path: Path) -> None:
    if kind == "rtsp" and RTSP_MISSING:
        pytest.skip(f"no RTSP server here: {RTSP_MISSING}")
    serve = rtsp_source if kind == "rtsp" else mjpeg_source
    video = clip(tmp_path / "clip.avi")
    # a live source hands a slow client its newest frame, so a busy client may skip some (the first
    # ones too, if it connects late): what it sees never falls and ends, or falls back when it loops
    with serve(video) as source:
        seen = numbers(source, 100)
    assert seen and len(seen) < 20 and seen == sorted(seen) and max(seen) >= 4, seen  # it ended
    with serve(video, loop=True) as source:
        seen = numbers(source, 10)
    assert len(seen) == 10 and any(b < a for a, b in itertools.pairwise(seen)), seen  # back to the start again
