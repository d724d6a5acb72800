"""Frames that are not what they claim, built with Pillow for the tests: images whose header
claims far more pixels than any frame may have (decompression bombs), in a few bytes."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

from fmprog.images import encode_jpeg, encode_png


@functools.cache
def huge_png(side: int = 20_000) -> bytes:
    """A real ``side`` x ``side`` PNG, one bit per pixel, all black: 48 kB for 400 M pixels."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 2x2 PNG whose IHDR (width, height and CRC patched) claims ``width`` x ``height``."""
    data = bytearray(encode_png(np.zeros((2, 2, 3), np.uint8)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A valid 8x8 JPEG whose start of frame (SOF0) claims ``width`` x ``height`` (at most 65535)."""
    data = bytearray(encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BOMBS = {
    "png-20000x20000": (huge_png, "20000x20000"),
    "png-header-65535x65535": (lambda: png_claiming(65535, 65535), "65535x65535"),
    "jpeg-header-65500x65500": (lambda: jpeg_claiming(65500, 65500), "65500x65500"),
    "png-header-10000x10000": (lambda: png_claiming(10_000, 10_000), "10000x10000"),
}
"""Each bomb, by name: how to build it and the size (width x height) it claims. The last one lies
between Pillow's own warning (89 M pixels) and error (179 M) thresholds: Pillow only warns."""
