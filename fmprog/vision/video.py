"""Frames of a video file, decoded with PyAV (FFmpeg), as ``H x W x 3`` uint8 RGB arrays.

``video_frames(path)`` yields every frame in order; ``VideoFrames`` gives frames by index,
decoding the file once, as far as the highest index asked for, and keeping what it decoded (all
795 frames of a 768x576 clip are about 1 GB). OpenCV's sample videos (Debian's ``opencv-doc``,
``SAMPLE_VIDEOS``) are real footage that installs offline: ``vtest.avi`` is pedestrians seen by a
fixed camera, 768x576 at 10 frames a second.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SAMPLE_VIDEOS = Path("/usr/share/doc/opencv-doc/examples/data")


class VideoError(ValueError):
    """A video that cannot be read."""


def video_frames(path: Path) -> Iterator[np.ndarray]:
    """Every frame of the video file at ``path``, in order."""
    try:
        import av
    except ImportError as exc:
        raise VideoError("PyAV is not installed (pip install av)") from exc
    if not Path(path).is_file():
        raise VideoError(f"no video file {path}")
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot decode {path}: {exc}") from None


class VideoFrames:
    """A video's frames by index: decoded in order as far as asked, then kept (read-only)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._frames: list[np.ndarray] = []
        self._reader: Iterator[np.ndarray] | None = None
        self._complete = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._decode_to(None)
            return len(self._frames)

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            raise VideoError(f"no frame {index}: frames are numbered from 0")
        with self._lock:
            self._decode_to(index)
            if index >= len(self._frames):
                raise VideoError(f"{self.path.name} has {len(self._frames)} frames, no frame {index}")
            return self._frames[index]

    def _decode_to(self, index: int | None) -> None:
        """Decode frames until ``index`` is decoded (None: to the end), or the video ends."""
        if self._reader is None and not self._complete:
            self._reader = video_frames(self.path)
        while not self._complete and (index is None or len(self._frames) <= index):
            try:
                frame = next(self._reader)  # type: ignore[arg-type]
            except StopIteration:
                self._complete, self._reader = True, None
                break
            frame.setflags(write=False)
            self._frames.append(frame)
