"""Frames on the wire: lossless PNG round trip, clear errors for bad bytes."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from fmprog.images import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    ImageError,
    check_frame,
    decode_base64_image,
    decode_image,
    encode_base64_png,
    encode_png,
    png_bytes_limit,
)


def test_png_round_trip_is_exact():
    image = np.random.default_rng(0).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_png(image)), image)
    assert np.array_equal(decode_base64_image(encode_base64_png(image)), image)
    assert np.array_equal(decode_base64_image("data:image/png;base64," + encode_base64_png(image)), image)


def test_jpeg_and_grayscale_decode_to_rgb():
    buffer = io.BytesIO()
    Image.new("L", (8, 6), color=200).save(buffer, format="JPEG")
    image = decode_image(buffer.getvalue())
    assert image.shape == (6, 8, 3)
    assert image.dtype == np.uint8


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"hello").decode(), "not a PNG or JPEG"),
        ("", "empty"),
    ],
)
def test_bad_images_name_the_problem(payload, message):
    with pytest.raises(ImageError, match=message):
        decode_base64_image(payload)


def test_limits():
    data = encode_png(np.zeros((40, 40, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="more than the limit"):
        decode_image(data, max_bytes=10)
    with pytest.raises(ImageError, match="40x40, more than the limit of 100 pixels"):
        decode_image(data, max_pixels=100)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="GIF")
    with pytest.raises(ImageError, match="GIF is not supported"):
        decode_image(buffer.getvalue())


@pytest.mark.parametrize("shape", [(MAX_IMAGE_PIXELS, 1), (1, MAX_IMAGE_PIXELS), (4096, 4096), (97, 13)])
def test_every_frame_within_the_pixel_limit_encodes_within_the_byte_limit(shape):
    """What the router accepts (pixels), the backends accept (the PNG their clients send): the
    largest PNG is the frame one pixel wide (a filter byte per row), noise or not (no compression)."""
    frame = np.zeros((*shape, 3), np.uint8)
    data = encode_png(frame)
    limit = MAX_IMAGE_BYTES if shape[0] * shape[1] == MAX_IMAGE_PIXELS else png_bytes_limit(shape[0] * shape[1])
    assert len(data) <= limit
    assert decode_image(data, max_pixels=shape[0] * shape[1], max_bytes=limit).shape == frame.shape


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8), [1, 2]]
)
def test_check_frame_rejects_non_frames(bad):
    with pytest.raises(ImageError):
        check_frame(bad)
