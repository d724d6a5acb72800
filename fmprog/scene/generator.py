"""A deterministic generator of synthetic 2-D scenes with exact ground truth (numpy only).

A scene is a frame of several objects (shape, colour, size, texture) on a background. Its
``difficulty`` sets the knobs that make a frame hard for a vision model: small objects, clutter,
occlusion, noise, blur, low contrast to the background, and look-alike distractors (a hexagon
beside a pentagon, orange beside red). Easy frames hold a few large clean objects.

Objects are drawn in order, later ones on top; every object's box is its full (amodal) extent
``(x0, y0, x1, y1)`` in pixels, ``y`` down, ``x1``/``y1`` exclusive, as ``fmprog.backends.Detection``
uses. Placement bounds how much of each object later objects may cover, and ``visibility`` is the
exact fraction of its pixels left visible in the frame.

With ``text=True`` (off by default, so frames without it are unchanged) objects large enough
carry a sign: a light plate with a short word or number on it, for text reading (``ocr``). The
object's ``text`` says what its sign reads ("" for none).

The same ``seed`` and knobs always give the same frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

from fmprog.scene.vocabulary import (
    COLOR_LOOK_ALIKES,
    COLOR_RGB,
    COLORS,
    SHAPE_LOOK_ALIKES,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    TEXTURES,
)

Difficulty = Literal["easy", "medium", "hard"]
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard")
DIFFICULTY_LEVEL: dict[str, float] = {"easy": 0.0, "medium": 0.5, "hard": 1.0}
DEFAULT_FRAME_SIZE = 128


@dataclass(frozen=True, slots=True)
class SceneKnobs:
    """What makes a frame easy or hard. Ranges are ``(low, high)`` and sampled per frame."""

    n_objects: tuple[int, int]
    size_weights: tuple[float, float, float]  # probability of small, medium, large objects
    max_occlusion: float  # largest fraction of an object that later objects may cover
    noise_sigma: tuple[float, float]  # additive Gaussian noise, in 0..255 units
    blur_probability: float  # chance of a 3 x 3 box blur over the frame
    fade: tuple[float, float]  # how far object colours are mixed toward the background (low contrast)
    background: tuple[int, int]  # range of each background channel
    color_jitter: int  # per-channel jitter of an object's colour
    look_alike_probability: float  # chance an object is a look-alike of an earlier one

    @staticmethod
    def at_level(level: float) -> SceneKnobs:
        """Knobs for a continuous difficulty ``level`` in [0, 1]: 0 is easy, 0.5 medium, 1 hard
        (linear between the presets)."""
        level = min(max(float(level), 0.0), 1.0)
        if level <= 0.5:
            low, high, t = KNOBS["easy"], KNOBS["medium"], level * 2
        else:
            low, high, t = KNOBS["medium"], KNOBS["hard"], level * 2 - 1

        def mix(a: float, b: float) -> float:
            return a + (b - a) * t

        def mix_range(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
            return mix(a[0], b[0]), mix(a[1], b[1])

        n_low, n_high = mix_range(low.n_objects, high.n_objects)
        bg_low, bg_high = mix_range(low.background, high.background)
        small, medium, large = (mix(a, b) for a, b in zip(low.size_weights, high.size_weights, strict=True))
        return SceneKnobs(
            n_objects=(round(n_low), round(n_high)),
            size_weights=(small, medium, large),
            max_occlusion=mix(low.max_occlusion, high.max_occlusion),
            noise_sigma=mix_range(low.noise_sigma, high.noise_sigma),
            blur_probability=mix(low.blur_probability, high.blur_probability),
            fade=mix_range(low.fade, high.fade),
            background=(round(bg_low), round(bg_high)),
            color_jitter=round(mix(low.color_jitter, high.color_jitter)),
            look_alike_probability=mix(low.look_alike_probability, high.look_alike_probability),
        )


KNOBS: dict[str, SceneKnobs] = {
    "easy": SceneKnobs(
        n_objects=(1, 3),
        size_weights=(0.0, 0.4, 0.6),
        max_occlusion=0.0,
        noise_sigma=(0.0, 0.0),
        blur_probability=0.0,
        fade=(0.0, 0.0),
        background=(0, 50),
        color_jitter=10,
        look_alike_probability=0.0,
    ),
    "medium": SceneKnobs(
        n_objects=(3, 5),
        size_weights=(0.3, 0.45, 0.25),
        max_occlusion=0.15,
        noise_sigma=(0.0, 8.0),
        blur_probability=0.2,
        fade=(0.0, 0.2),
        background=(0, 100),
        color_jitter=18,
        look_alike_probability=0.3,
    ),
    "hard": SceneKnobs(
        n_objects=(5, 9),
        size_weights=(0.7, 0.25, 0.05),
        max_occlusion=0.3,
        noise_sigma=(6.0, 18.0),
        blur_probability=0.5,
        fade=(0.1, 0.4),
        background=(20, 150),
        color_jitter=26,
        look_alike_probability=0.6,
    ),
}


@dataclass(frozen=True, slots=True)
class SceneObject:
    """One object's exact ground truth."""

    shape: str
    color: str
    size: str
    texture: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, y down, x1/y1 exclusive
    visibility: float  # fraction of the object's pixels visible in the frame
    text: str = ""  # what the sign on the object reads (frames generated with text=True), "" for none

    @property
    def noun(self) -> str:
        """The object's full noun phrase, e.g. "small red striped circle"."""
        return f"{self.size} {self.color} {self.texture} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True, slots=True)
class Scene:
    """A generated frame (``H x W x 3`` uint8 RGB) with its objects, difficulty and seed."""

    image: np.ndarray = field(repr=False)
    objects: tuple[SceneObject, ...]
    difficulty: Difficulty
    level: float
    seed: int


# -- templates (cached per side length) -------------------------------------------------------


def _regular_polygon(n: int, rotation: float) -> np.ndarray:
    angles = rotation + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star_polygon() -> np.ndarray:
    angles = -math.pi / 2 + math.pi * np.arange(10) / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_POLYGONS: dict[str, np.ndarray] = {
    "triangle": np.array([[0.5, 0.0], [1.0, 1.0], [0.0, 1.0]]),
    "diamond": np.array([[0.5, 0.0], [1.0, 0.5], [0.5, 1.0], [0.0, 0.5]]),
    "pentagon": _regular_polygon(5, -math.pi / 2),
    "hexagon": _regular_polygon(6, 0.0),
    "star": _star_polygon(),
}


def _inside_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd test of points against a polygon whose vertices fill the unit box."""
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    v = (vertices - low) / (high - low)
    inside = np.zeros(x.shape, bool)
    for (xa, ya), (xb, yb) in zip(v, np.roll(v, -1, axis=0), strict=True):
        crosses = (ya > y) != (yb > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = xa + (y - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (x < x_at)
    return inside


@lru_cache(maxsize=1024)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """The ``side x side`` boolean mask of a shape filling its box (read-only, cached)."""
    centers = (np.arange(side) + 0.5) / side
    x, y = np.meshgrid(centers, centers)
    if shape == "circle":
        mask = (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
    elif shape == "square":
        mask = np.ones((side, side), bool)
    elif shape == "cross":
        mask = (np.abs(x - 0.5) <= 1 / 6) | (np.abs(y - 0.5) <= 1 / 6)
    else:
        mask = _inside_polygon(x, y, _POLYGONS[shape])
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=1024)
def texture_mask(texture: str, side: int) -> np.ndarray:
    """Where a texture darkens an object of box side ``side`` (read-only, cached)."""
    period = max(4, round(side / 4))
    y, x = np.mgrid[0:side, 0:side]
    if texture == "striped":
        mask = (x + y) % period < period / 2
    elif texture == "dotted":
        dx, dy = x % period - (period - 1) / 2, y % period - (period - 1) / 2
        mask = dx * dx + dy * dy <= (period / 3.2) ** 2
    else:
        mask = np.zeros((side, side), bool)
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=4096)
def _paint_masks(shape: str, texture: str, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of an object painted in its colour, pixels painted dark (texture), and all of it."""
    mask = shape_mask(shape, side)
    pattern = texture_mask(texture, side)
    return mask & ~pattern, mask & pattern, mask


class _Draws:
    """Uniform draws taken from one block of a generator's output: far cheaper per draw than
    separate generator calls, and just as deterministic."""

    def __init__(self, rng: np.random.Generator, block: int = 256):
        self._rng = rng
        self._block = block
        self._values = rng.random(block)
        self._next = 0

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        if self._next == self._block:
            self._values = self._rng.random(self._block)
            self._next = 0
        value = self._values[self._next]
        self._next += 1
        return low + (high - low) * float(value)

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high] (inclusive)."""
        return min(low + int(self.uniform() * (high - low + 1)), high)

    def index(self, n: int) -> int:
        return self.integer(0, n - 1)


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    return np.random.default_rng(20250101).standard_normal((384, 384, 3)).astype(np.float32)


def _blur3(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge").astype(np.uint16)
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    return ((rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:] + 4) // 9).astype(np.uint8)


# -- scenes -----------------------------------------------------------------------------------


def _resolve(difficulty: Difficulty | float) -> tuple[Difficulty, float, SceneKnobs]:
    if isinstance(difficulty, str):
        if difficulty not in KNOBS:
            raise ValueError(
                f"difficulty must be one of {', '.join(DIFFICULTIES)} or a level in [0, 1], got {difficulty!r}"
            )
        return difficulty, DIFFICULTY_LEVEL[difficulty], KNOBS[difficulty]
    level = float(difficulty)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"difficulty level must lie in [0, 1], got {level}")
    label: Difficulty = "easy" if level < 0.25 else "medium" if level < 0.75 else "hard"
    return label, level, SceneKnobs.at_level(level)


def generate_scene(
    seed: int,
    difficulty: Difficulty | float = "medium",
    size: int = DEFAULT_FRAME_SIZE,
    *,
    knobs: SceneKnobs | None = None,
    text: bool = False,
) -> Scene:
    """The scene of ``seed`` at ``difficulty`` ("easy" | "medium" | "hard", or a level in [0, 1]),
    on a ``size x size`` frame. ``knobs`` replaces the difficulty's knobs (the scene keeps the
    difficulty's label and level). ``text`` puts a sign with a word or number on each object
    large enough to carry one (drawn from its own random stream: the rest of the frame is the
    same as without it)."""
    if size < 32:
        raise ValueError(f"frame size must be at least 32 pixels, got {size}")
    label, level, preset = _resolve(difficulty)
    knobs = knobs or preset
    rng = np.random.default_rng(seed)
    draw = _Draws(rng)

    background = np.array([draw.integer(*knobs.background) for _ in range(3)])
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background.astype(np.uint8)
    labels = np.zeros((size, size), np.int16)

    n_wanted = draw.integer(*knobs.n_objects)
    size_cumulative = np.cumsum(knobs.size_weights) / sum(knobs.size_weights)
    fade = draw.uniform(*knobs.fade)
    drawn: list[tuple[str, str, str, str, tuple[int, int, int, int], int]] = []
    covered: list[float] = []  # upper bound on the fraction of each drawn object covered so far
    gap = 2 if knobs.max_occlusion == 0 else 0

    for _ in range(n_wanted):
        size_name = SIZES[min(int(np.searchsorted(size_cumulative, draw.uniform(), side="right")), 2)]
        low, high = SIZE_RANGES[size_name]
        side = max(6, round(draw.uniform(low, high) * size))
        if drawn and draw.uniform() < knobs.look_alike_probability:
            base = drawn[draw.index(len(drawn))]
            shape, color, texture = base[0], base[1], base[3]
            if draw.uniform() < 0.5:
                shape = SHAPE_LOOK_ALIKES[shape]
            else:
                color = COLOR_LOOK_ALIKES[color]
        else:
            shape = SHAPES[draw.index(len(SHAPES))]
            color = COLORS[draw.index(len(COLORS))]
            texture = TEXTURES[draw.index(len(TEXTURES))]
        fill_mask, dark_mask, mask = _paint_masks(shape, texture, side)
        area = int(mask.sum())
        placed = None
        for _attempt in range(25):
            x0 = draw.integer(0, size - side)
            y0 = draw.integer(0, size - side)
            box = (x0, y0, x0 + side, y0 + side)
            extra = []
            ok = True
            for i, other in enumerate(drawn):
                ox0, oy0, ox1, oy1 = other[4]
                iw = min(box[2] + gap, ox1) - max(box[0] - gap, ox0)
                ih = min(box[3] + gap, oy1) - max(box[1] - gap, oy0)
                if iw > 0 and ih > 0:
                    fraction = iw * ih / other[5]
                    if knobs.max_occlusion == 0 or covered[i] + fraction > knobs.max_occlusion:
                        ok = False
                        break
                    extra.append((i, fraction))
            if ok:
                for i, fraction in extra:
                    covered[i] += fraction
                placed = box
                break
        if placed is None:
            continue

        jitter = [draw.integer(-knobs.color_jitter, knobs.color_jitter) for _ in range(3)]
        rgb = np.asarray(COLOR_RGB[color], float) + jitter
        rgb = (1 - fade) * rgb + fade * background
        fill = np.clip(rgb, 0, 255).astype(np.uint8)
        dark = np.clip(rgb * 0.45, 0, 255).astype(np.uint8)
        x0, y0, x1, y1 = placed
        region = image[y0:y1, x0:x1]
        region[fill_mask] = fill
        region[dark_mask] = dark
        labels[y0:y1, x0:x1][mask] = len(drawn) + 1
        drawn.append((shape, color, size_name, texture, placed, area))
        covered.append(0.0)

    signs = _draw_signs(image, labels, [d[4] for d in drawn], seed) if text else {}

    sigma = draw.uniform(*knobs.noise_sigma)
    if sigma > 0:
        bank = _noise_bank()
        if bank.shape[0] >= size:
            oy, ox = draw.integer(0, bank.shape[0] - size), draw.integer(0, bank.shape[1] - size)
            noise = bank[oy : oy + size, ox : ox + size]
        else:
            noise = rng.standard_normal((size, size, 3), dtype=np.float32)
        noisy = noise * np.float32(sigma)
        noisy += image
        image = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
    if draw.uniform() < knobs.blur_probability:
        image = _blur3(image)

    visible = np.bincount(labels.ravel(), minlength=len(drawn) + 1)[1:]
    objects = tuple(
        SceneObject(shape, color, size_name, texture, box, round(float(visible[i]) / area, 4), signs.get(i, ""))
        for i, (shape, color, size_name, texture, box, area) in enumerate(drawn)
    )
    return Scene(image=image, objects=objects, difficulty=label, level=level, seed=int(seed))


SIGN_WORDS: tuple[str, ...] = ("STOP", "EXIT", "OPEN", "SALE", "PARK", "BUS", "TAXI", "HOTEL", "CAFE", "ZOO")
MIN_SIGN_SIDE = 40  # pixels: smaller objects carry no sign


def _draw_signs(image: np.ndarray, labels: np.ndarray, boxes: list[tuple[int, ...]], seed: int) -> dict[int, str]:
    """Draw a sign (dark text on a light plate, centred on the object) on every object at least
    ``MIN_SIGN_SIDE`` wide whose plate would cover no other object; returns each signed
    object's text. Draws from a random stream of its own, so the frame is otherwise unchanged."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng([int(seed) & (2**63 - 1), 0x5167])
    signs: dict[int, str] = {}
    for i, (x0, y0, x1, _) in enumerate(boxes):
        side = x1 - x0
        if side < MIN_SIGN_SIDE:
            continue
        number = rng.uniform() < 0.5
        word = str(int(rng.integers(10, 100))) if number else SIGN_WORDS[int(rng.integers(len(SIGN_WORDS)))]
        font_size = max(10, side // 4)
        font = ImageFont.load_default(size=font_size)
        left, top, right, bottom = font.getbbox(word)
        margin = max(3, font_size // 3)
        width, height = right - left + 2 * margin, bottom - top + 2 * margin
        if width > side:
            continue
        px0, py0 = x0 + (side - width) // 2, y0 + (side - height) // 2
        plate = labels[py0 : py0 + height, px0 : px0 + width]
        if plate.shape != (height, width) or np.any((plate != 0) & (plate != i + 1)):
            continue  # off the frame, or over another object
        plate_image = Image.new("RGB", (width, height), (245, 245, 235))
        ImageDraw.Draw(plate_image).text((margin - left, margin - top), word, fill=(15, 15, 15), font=font)
        image[py0 : py0 + height, px0 : px0 + width] = np.asarray(plate_image)
        signs[i] = word
    return signs


DEFAULT_MIX: Mapping[str, float] = {"easy": 1 / 3, "medium": 1 / 3, "hard": 1 / 3}


def scene_stream(
    seed: int,
    count: int | None = None,
    mix: Mapping[str, float] = DEFAULT_MIX,
    size: int = DEFAULT_FRAME_SIZE,
) -> Iterator[Scene]:
    """Frames with a mix of difficulties (``mix``: weight per difficulty), all derived from ``seed``;
    endless when ``count`` is None."""
    names = [name for name in DIFFICULTIES if mix.get(name, 0) > 0]
    unknown = set(mix) - set(DIFFICULTIES)
    if unknown or not names:
        raise ValueError(f"mix must weigh some of {', '.join(DIFFICULTIES)}, got {dict(mix)}")
    weights = np.asarray([mix[name] for name in names], float)
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    produced = 0
    while count is None or produced < count:
        difficulty = names[int(rng.choice(len(names), p=weights))]
        frame_seed = int(rng.integers(0, 2**63 - 1))
        yield generate_scene(frame_seed, difficulty, size)
        produced += 1
