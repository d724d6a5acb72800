"""Frames on the wire: lossless PNG round trip, clear errors for bad bytes; a frame's thumbnail."""

from __future__ import annotations

import base64
import io
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from fmprog.images import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    ImageError,
    check_frame,
    check_image,
    decode_base64_image,
    decode_image,
    encode_base64_png,
    encode_jpeg,
    encode_png,
    png_bytes_limit,
    thumbnail,
)
from tests.bad_frames import BOMBS


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


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_frame_claiming_too_many_pixels_is_refused_by_the_projects_limit(bomb):
    """A decompression bomb (a real 20000x20000 PNG, or a small file whose header claims 65535x65535)
    is refused from its header by the project's limit, naming the size it claims, before Pillow's own
    bomb check (DecompressionBombError, or a DecompressionBombWarning) can answer."""
    make, size = BOMBS[bomb]
    data = make()
    message = f"image is {size}, more than the limit of {MAX_IMAGE_PIXELS} pixels (width x height)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a DecompressionBombWarning
        with pytest.raises(ImageError, match=re.escape(message)):
            check_image(data)
        with pytest.raises(ImageError, match=re.escape(message)):
            decode_image(data)


def test_check_image_reads_the_header_alone():
    png = encode_png(np.zeros((6, 9, 3), dtype=np.uint8))
    assert check_image(png) == (9, 6)
    assert check_image(encode_jpeg(np.zeros((5, 7, 3), dtype=np.uint8))) == (7, 5)
    with pytest.raises(ImageError, match="9x6, more than the limit of 50 pixels"):
        check_image(png, max_pixels=50)
    with pytest.raises(ImageError, match="not a PNG or JPEG"):
        check_image(b"[not an image]")
    with pytest.raises(ImageError, match="cannot be decoded"):
        decode_image(png[:60])  # the header holds, the pixels are cut off


@pytest.mark.parametrize("shape", [(480, 640), (33, 31), (32, 32), (7, 5), (1, 1)])
def test_a_thumbnail_is_the_nearest_pixels_and_its_own_thumbnail(shape):
    frame = np.random.default_rng(shape[0]).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    small = thumbnail(frame, 32)
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8
    h, w = shape
    for i, j in [(0, 0), (31, 31), (5, 17), (20, 3)]:
        assert (small[i, j] == frame[(i * h) // 32, (j * w) // 32]).all()
    assert np.array_equal(thumbnail(small, 32), small)
    assert np.array_equal(decode_image(encode_png(small)), small)  # as the router sends it
    assert thumbnail(frame, 4).shape == (4, 4, 3)


def test_a_thumbnail_refuses_what_is_not_a_frame_or_a_side():
    with pytest.raises(ImageError, match="H x W x 3"):
        thumbnail(np.zeros((4, 4)), 32)
    with pytest.raises(ValueError, match="at least 1"):
        thumbnail(np.zeros((4, 4, 3), np.uint8), 0)
