"""Colour from the pixels: the colour names a crop shows, weighted toward its centre.

Each pixel is named by its hue, saturation and value (``pixel_names``): black when dark, white or
gray when unsaturated, else by hue (red, orange, yellow, green, blue, purple, pink), with dark
oranges called brown and light, pale reds pink. A crop's colours are the shares of those names over its pixels,
each pixel weighted by a Gaussian centred on the crop (an object found by a detector fills the
middle of its box; its background lies at the edges). The dominant colour is the largest share.
No model is involved: the answer is the same for every backend that reads colours this way.
"""

from __future__ import annotations

import numpy as np

COLOR_NAMES: tuple[str, ...] = (
    "black", "white", "gray", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
)  # fmt: skip
_ALIASES = {"grey": "gray", "violet": "purple", "navy": "blue", "crimson": "red", "scarlet": "red", "tan": "brown"}
_HUE_BOUNDS = ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (255, "blue"), (290, "purple"))
_MAX_SIDE = 96  # crops are shrunk to at most this side before naming pixels


def color_word(word: str | None) -> str | None:
    """The colour a word names ("grey" -> "gray"), or None when it names none."""
    if not word:
        return None
    word = word.strip().lower()
    word = _ALIASES.get(word, word)
    return word if word in COLOR_NAMES else None


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1]."""
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    high, low = x.max(axis=-1), x.min(axis=-1)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = np.where(chroma > 0, hue * 60.0, 0.0)
    saturation = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    return hue, saturation, high


def pixel_names(rgb: np.ndarray) -> np.ndarray:
    """The index into ``COLOR_NAMES`` of every pixel of an ``H x W x 3`` uint8 image."""
    hue, sat, val = _hsv(rgb)
    index = {name: i for i, name in enumerate(COLOR_NAMES)}
    names = np.full(hue.shape, index["gray"], dtype=np.int64)
    chromatic = (sat >= 0.2) & (val >= 0.2)
    hue_name = np.full(hue.shape, index["red"], dtype=np.int64)  # hue >= 345 wraps to red
    for bound, name in reversed(_HUE_BOUNDS):
        hue_name = np.where(hue < bound, index[name], hue_name)
    hue_name = np.where((hue >= 290) & (hue < 345), index["pink"], hue_name)
    pale_red = (hue_name == index["red"]) & (sat < 0.5) & (val >= 0.75)  # light reds are pinks
    hue_name = np.where(pale_red, index["pink"], hue_name)
    brown = (hue_name == index["orange"]) & (val < 0.6)
    hue_name = np.where(brown, index["brown"], hue_name)
    names = np.where(chromatic, hue_name, names)
    names = np.where(~chromatic & (val >= 0.8) & (sat < 0.2), index["white"], names)
    names = np.where(val < 0.2, index["black"], names)
    return names


def color_shares(rgb: np.ndarray) -> dict[str, float]:
    """Each colour's share of the crop, centre-weighted (shares sum to 1)."""
    image = np.asarray(rgb)
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        return {}
    step = max(1, int(np.ceil(max(height, width) / _MAX_SIDE)))
    image = image[::step, ::step]
    h, w = image.shape[:2]
    ys = (np.arange(h) + 0.5) / h - 0.5
    xs = (np.arange(w) + 0.5) / w - 0.5
    weight = np.exp(-(ys[:, None] ** 2) / (2 * 0.25**2) - (xs[None, :] ** 2) / (2 * 0.2**2))
    counts = np.bincount(pixel_names(image).ravel(), weights=weight.ravel(), minlength=len(COLOR_NAMES))
    total = counts.sum()
    return {name: float(counts[i] / total) for i, name in enumerate(COLOR_NAMES) if counts[i] > 0}


def dominant_color(rgb: np.ndarray) -> str | None:
    """The colour with the largest share of the crop (None for a crop without pixels)."""
    shares = color_shares(rgb)
    return max(shares, key=shares.__getitem__) if shares else None


SHOWN = 0.1  # the least share of a crop a colour must hold to be said to be in it at all


def shows_color(rgb: np.ndarray, color: str, least_share: float = 0.25) -> bool:
    """Whether ``color`` is the dominant colour of the crop or holds at least ``least_share`` of it."""
    shares = color_shares(rgb)
    if not shares:
        return False
    return color == max(shares, key=shares.__getitem__) or shares.get(color, 0.0) >= least_share
