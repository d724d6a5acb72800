"""Frames on the wire: PNG or JPEG bytes to ``H x W x 3`` uint8 RGB arrays and back, and a frame's
nearest-pixel thumbnail (what the feature-based policy algorithms read)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.ImageFile import ImageFile

MAX_IMAGE_PIXELS = 4096 * 4096
"""The one frame limit, in pixels (width times height): the router refuses a larger frame, and the
backends accept every crop of a frame within it. The byte limit below follows from it."""


def png_bytes_limit(pixels: int) -> int:
    """The most bytes ``encode_png`` writes for a frame of at most ``pixels`` pixels: a filter byte
    per row and 3 bytes per pixel (at most 4 bytes per pixel, for a frame one pixel wide), plus the
    stored deflate blocks' and IDAT chunks' headers (well under 1 byte in 1024) and PNG's own."""
    raw = 4 * pixels
    return raw + raw // 1024 + 4096


MAX_IMAGE_BYTES = png_bytes_limit(MAX_IMAGE_PIXELS)
"""The largest image file accepted: any PNG the backends' clients encode for a frame (or a crop)
within MAX_IMAGE_PIXELS, so that the limits of the router and of the backends agree."""


class ImageError(ValueError):
    """Bytes that are not a usable frame; the message names the problem."""


def encode_png(image: np.ndarray) -> bytes:
    """Encode an ``H x W x 3`` uint8 RGB array as PNG (lossless, so the frame arrives unchanged).

    Without zlib compression (level 0): encoding takes about 40% of the time of level 1 for a
    noisy 128 x 128 frame (0.9 vs 2.2 ms here) for a payload about 20% larger, and frames travel
    between processes on one machine or a fast network."""
    from PIL import Image

    check_frame(image)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode an ``H x W x 3`` uint8 RGB array as JPEG: a camera's frame, passed on to a service
    that decides on it, at a tenth of the bytes of a PNG."""
    from PIL import Image

    check_frame(image)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


def check_image(
    data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[int, int]:
    """The frame's ``(width, height)`` read from its header alone, no pixel decoded: the refusal
    ``decode_image`` would give (ImageError) for bytes that are not a PNG or JPEG within the limits,
    at a fraction of its cost, so that a bad frame is refused before anything else is asked."""
    with _opened(data, max_bytes, max_pixels) as img:
        return img.size


def decode_image(data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode PNG or JPEG bytes to an RGB uint8 array; raise ImageError naming what is wrong."""
    with _opened(data, max_bytes, max_pixels) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy


@contextlib.contextmanager
def _opened(data: bytes, max_bytes: int, max_pixels: int) -> Iterator[ImageFile]:
    """The image, its header read and checked against the limits, its pixels not decoded yet;
    any failure of the block (decoding them) is an ImageError too.

    Opened by Pillow's PNG or JPEG reader directly rather than by ``Image.open``: that runs
    Pillow's own decompression-bomb check on the size the header claims (a warning above 89 M
    pixels, DecompressionBombError above 179 M), which would answer before the project's limit
    (``max_pixels``, lower) could name the size and the limit."""
    from PIL import Image, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

    if not data:
        raise ImageError("image is empty")
    if len(data) > max_bytes:
        raise ImageError(f"image is {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        if data.startswith(PNG_SIGNATURE):
            reader: type[ImageFile] = PngImagePlugin.PngImageFile
        elif data.startswith(JPEG_SIGNATURE):
            reader = JpegImagePlugin.JpegImageFile
        else:
            with Image.open(io.BytesIO(data)) as other:  # only to name the format it is
                raise ImageError(f"image format {other.format} is not supported (use PNG or JPEG)")
        with reader(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(
                    f"image is {img.width}x{img.height}, more than the limit of {max_pixels} pixels (width x height)"
                )
            yield img
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image is not a PNG or JPEG file") from exc  # nor one Pillow can name within its limit
    except (OSError, SyntaxError, ValueError, IndexError, struct.error) as exc:
        raise ImageError(f"image cannot be decoded: {exc}") from exc


def base64_bytes(text: str) -> bytes:
    """The bytes of a base64 string (optionally a ``data:image/...;base64,`` URL); ImageError if invalid."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("image is not valid base64") from exc


def decode_base64_image(text: str, **limits: int) -> np.ndarray:
    """Decode a base64 string (optionally a ``data:image/...;base64,`` URL) to an RGB array."""
    return decode_image(base64_bytes(text), **limits)


def encode_base64_png(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")


def thumbnail(frame: np.ndarray, side: int) -> np.ndarray:
    """The ``side x side x 3`` uint8 nearest-pixel subsample of an ``H x W x 3`` uint8 frame: row
    ``(i * H) // side`` and column ``(j * W) // side`` for ``i, j`` in ``0..side-1`` (rows and
    columns repeat in a frame smaller than ``side``). A thumbnail's thumbnail of the same side is
    itself, so features computed on the thumbnail of a frame equal those of the frame.
    ImageError (a ValueError) names a frame that is not one (``check_frame``)."""
    check_frame(frame)
    if side < 1:
        raise ValueError(f"a thumbnail's side must be at least 1, got {side}")
    h, w = frame.shape[:2]
    rows = (np.arange(side) * h) // side
    cols = (np.arange(side) * w) // side
    return frame[rows[:, None], cols[None, :]]


def check_frame(image: object) -> np.ndarray:
    """Return ``image`` if it is an ``H x W x 3`` uint8 array with at least one pixel, else raise ImageError."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ImageError(f"a frame must be an H x W x 3 uint8 array, got {type(image).__name__} {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"a frame must have at least one pixel, got shape {image.shape}")
    return image
