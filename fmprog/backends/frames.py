"""The frame a thread is answering, so that a client of remote backends can send it once.

A program's calls take the frame or crops of it (numpy views). A client that sends each call's
image on its own sends the frame again for every call, and every crop's pixels. Instead, while a
run answers a frame (``answering(frame)``, set by whatever runs the program), a client can ask
``shared_part(image, share)``: when ``image`` lies inside that frame it gets a ``FramePart``, the
frame shared once per run (``share(frame)``, made on the first call that needs it and kept for
the rest of the run: e.g. a reference into Ray's object store) and the crop's place in it. The
serving side resolves the part to the frame and cuts the same crop (``FramePart.cut``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

Region = tuple[int, int, int, int]
"""A crop's place in its frame: ``(row, column, height, width)`` in pixels."""


def frame_region(frame: np.ndarray, image: np.ndarray) -> Region | None:
    """Where ``image`` lies in ``frame`` when it is a view of it (a crop: same strides, its first
    pixel inside the frame's memory), else None. Compares addresses only: no pixel is read."""
    if image.dtype != frame.dtype or image.ndim != 3 or image.strides != frame.strides:
        return None
    if image.shape[2] != frame.shape[2]:
        return None
    if image.shape[0] == 0 or image.shape[1] == 0:
        return None
    base = frame.__array_interface__["data"][0]
    at = image.__array_interface__["data"][0]
    if not base <= at < base + frame.nbytes:
        return None
    row, rest = divmod(at - base, frame.strides[0])
    column, offset = divmod(rest, frame.strides[1])
    if offset or row + image.shape[0] > frame.shape[0] or column + image.shape[1] > frame.shape[1]:
        return None
    return row, column, image.shape[0], image.shape[1]


@dataclass(frozen=True, slots=True)
class FramePart:
    """A crop (or the whole frame) sent as the shared frame and its place in it."""

    frame: Any  # what the client's ``share`` made of the frame (a Ray ObjectRef, say)
    region: Region

    def cut(self, frame: np.ndarray) -> np.ndarray:
        """The crop, from the resolved frame; ValueError when the region does not fit it."""
        row, column, height, width = self.region
        if not all(type(v) is int for v in self.region) or min(row, column) < 0 or min(height, width) <= 0:
            raise ValueError(f"bad crop region {self.region}")
        if row + height > frame.shape[0] or column + width > frame.shape[1]:
            raise ValueError(f"crop region {self.region} outside the {frame.shape[1]}x{frame.shape[0]} frame")
        return frame[row : row + height, column : column + width]


class _Answering:
    """One run's frame and what clients have shared of it, by client kind."""

    __slots__ = ("frame", "shared")

    def __init__(self, frame: np.ndarray):
        self.frame = frame
        self.shared: dict[str, Any] = {}


_current: ContextVar[_Answering | None] = ContextVar("fmprog_answering", default=None)


@contextlib.contextmanager
def answering(frame: np.ndarray) -> Iterator[None]:
    """While the block runs (in this thread), calls' images that are views of ``frame`` may be sent
    as parts of it; what was shared of it is dropped at the end."""
    token = _current.set(_Answering(frame))
    try:
        yield
    finally:
        _current.reset(token)


def shared_part(
    image: np.ndarray, kind: str, share: Callable[[np.ndarray], Any], *, min_bytes: int = 0
) -> FramePart | None:
    """``image`` as a part of the frame being answered, the frame shared by ``share`` once per run
    for clients of this ``kind``; None outside ``answering``, for an image that is not a view of
    the frame, or for a frame smaller than ``min_bytes`` (cheaper to send as it is)."""
    run = _current.get()
    if run is None or run.frame.nbytes < min_bytes:
        return None
    region = frame_region(run.frame, image)
    if region is None:
        return None
    if kind not in run.shared:
        run.shared[kind] = share(run.frame)
    return FramePart(run.shared[kind], region)
