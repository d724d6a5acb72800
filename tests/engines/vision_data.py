"""Real images for the real-image engines: OpenCV's samples from Debian's opencv-doc, decoded with
PyAV (video) and Pillow (images) to ``H x W x 3`` uint8 RGB arrays."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VTEST_FRAMES = (0, 100, 200, 300)  # pedestrians at a fixed camera, 768 x 576


def _needed(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not installed (apt-get install opencv-doc)")
    return path


@functools.cache
def _vtest(indices: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    av = pytest.importorskip("av")
    wanted, frames = set(indices), {}
    with av.open(str(_needed(DATA / "vtest.avi"))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    return tuple(frames[i] for i in indices)


def vtest_frames(indices: tuple[int, ...] = VTEST_FRAMES) -> list[np.ndarray]:
    """Frames of vtest.avi (read-only arrays, shared between the tests that ask for them)."""
    frames = _vtest(tuple(indices))
    for frame in frames:
        frame.flags.writeable = False
    return list(frames)


@functools.cache
def _image(name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(_needed(DATA / name)) as image:
        pixels = np.asarray(image.convert("RGB"))
    pixels.flags.writeable = False
    return pixels


def sample_image(name: str) -> np.ndarray:
    """One of the sample images (orange.jpg, apple.jpg, messi5.jpg...), read-only."""
    return _image(name)


# A solid patch of each colour name, in RGB: what fmprog.vision.color names it.
RED = (220, 20, 20)
GRAY = (128, 128, 128)
SOLID = {
    "black": (10, 10, 10),
    "white": (250, 250, 250),
    "gray": GRAY,
    "red": RED,
    "orange": (255, 140, 0),
    "yellow": (240, 230, 30),
    "green": (30, 180, 40),
    "blue": (20, 40, 220),
    "purple": (130, 30, 200),
    "pink": (240, 80, 200),
    "brown": (140, 80, 20),
}
