"""Colour from the pixels (``fmprog.vision.color``): pixel names by hue, saturation and value,
centre-weighted shares, the dominant colour, and colour words."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.vision.color import COLOR_NAMES, color_shares, color_word, dominant_color, pixel_names, shows_color
from tests.engines.vision_data import GRAY, RED, SOLID


def patch(rgb: tuple[int, int, int], height: int = 40, width: int = 40) -> np.ndarray:
    return np.full((height, width, 3), rgb, np.uint8)


def square_in(border: tuple[int, int, int], square: tuple[int, int, int], top: int, left: int, side: int) -> np.ndarray:
    """A 100 x 100 image of ``border`` with a ``side``-pixel square of ``square`` at (top, left)."""
    image = patch(border, 100, 100)
    image[top : top + side, left : left + side] = square
    return image


@pytest.mark.parametrize(("name", "rgb"), SOLID.items(), ids=list(SOLID))
def test_a_solid_patch_is_named_by_its_colour(name, rgb):
    image = patch(rgb)
    assert dominant_color(image) == name
    assert color_shares(image) == {name: pytest.approx(1.0)}
    assert shows_color(image, name)
    assert not shows_color(image, "green" if name != "green" else "red")


def test_every_colour_name_is_reachable():
    assert set(SOLID) == set(COLOR_NAMES)


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((0, 0, 128), "blue"),  # navy: dark but saturated
        ((60, 60, 60), "gray"),
        ((200, 200, 200), "gray"),  # light gray is not yet white (value < 0.8)
        ((255, 160, 40), "orange"),  # bright orange stays orange ...
        ((150, 95, 25), "brown"),  # ... dark orange is brown
        ((45, 0, 0), "black"),  # under 20% value, whatever the hue
    ],
)
def test_boundary_colours(rgb, name):
    assert dominant_color(patch(rgb)) == name


def test_pixel_names_index_the_colour_names_per_pixel():
    image = np.array([[RED, (20, 40, 220)], [(10, 10, 10), (250, 250, 250)]], np.uint8)
    names = pixel_names(image)
    assert names.shape == (2, 2)
    assert [[COLOR_NAMES[i] for i in row] for row in names] == [["red", "blue"], ["black", "white"]]


def test_a_red_square_in_the_centre_outweighs_its_area():
    # a centred square of half the side covers a quarter of the pixels, but the centre counts most
    centred = square_in(GRAY, RED, 25, 25, 50)
    shares = color_shares(centred)
    assert shares["red"] > 0.5 > shares["gray"]
    assert dominant_color(centred) == "red"
    assert sum(shares.values()) == pytest.approx(1.0)


def test_the_same_square_counts_more_in_the_centre_than_in_a_corner():
    # 40 px of 100: 16% of the pixels either way
    centre, corner = color_shares(square_in(GRAY, RED, 30, 30, 40)), color_shares(square_in(GRAY, RED, 0, 0, 40))
    assert centre["red"] > 0.16 * 2
    assert corner["red"] < 0.16 * 0.75
    corner_image = square_in(GRAY, RED, 0, 0, 40)
    assert dominant_color(corner_image) == "gray" and not shows_color(corner_image, "red")


def test_a_smaller_centre_is_not_dominant_but_still_shown():
    # 40 px of 100: 16% of the pixels, about 40% of the weight: not dominant, but over the 25% share
    image = square_in(GRAY, RED, 30, 30, 40)
    shares = color_shares(image)
    assert 0.25 <= shares["red"] < shares["gray"]
    assert dominant_color(image) == "gray"
    assert shows_color(image, "red") and shows_color(image, "gray")
    assert not shows_color(image, "red", least_share=0.5)
    assert not shows_color(image, "blue")


def test_large_crops_are_named_like_small_ones():
    # crops are subsampled to at most 96 px a side: a large crop reads like a small one of the same picture
    small, large = square_in(GRAY, RED, 25, 25, 50), np.kron(square_in(GRAY, RED, 25, 25, 50), np.ones((8, 8, 1)))
    assert large.shape == (800, 800, 3)
    assert color_shares(large.astype(np.uint8)) == pytest.approx(color_shares(small), abs=0.02)


def test_an_empty_crop_has_no_colour():
    empty = np.zeros((0, 7, 3), np.uint8)
    assert color_shares(empty) == {}
    assert dominant_color(empty) is None
    assert not shows_color(empty, "black")


@pytest.mark.parametrize(
    ("word", "name"),
    [
        ("red", "red"),
        ("Blue", "blue"),
        ("grey", "gray"),
        (" violet ", "purple"),
        ("navy", "blue"),
        ("crimson", "red"),
        ("scarlet", "red"),
        ("tan", "brown"),
        ("magenta", None),
        ("dog", None),
        ("", None),
        (None, None),
    ],
)
def test_color_word_names_colours_and_their_aliases(word, name):
    assert color_word(word) == name
