"""The scene domain's vocabulary, in one place: shapes, colours, sizes and textures.

Everything that builds or parses text about scenes (nouns for detection, VQA questions, evaluation
sets) takes its words from here. Look-alike pairs are the attribute values hard frames use as
distractors: they differ in a detail a low-resolution model tends to miss.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross")
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "white", "gray")
SIZES: tuple[str, ...] = ("small", "medium", "large")
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")

# Nominal RGB of each colour; rendering jitters it per object (more on hard frames).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 130, 25),
    "yellow": (235, 215, 40),
    "green": (40, 165, 60),
    "blue": (40, 75, 225),
    "purple": (140, 55, 205),
    "white": (240, 240, 240),
    "gray": (135, 135, 135),
}

# Box side as a fraction of the frame side: [low, high) for each size class. The gaps between the
# classes keep the size of every generated object unambiguous.
SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.08, 0.14),
    "medium": (0.17, 0.24),
    "large": (0.28, 0.38),
}
# Thresholds that classify a box side fraction into a size (midway through the gaps above).
SIZE_THRESHOLDS: tuple[float, float] = (0.155, 0.26)

SHAPE_LOOK_ALIKES: dict[str, str] = {
    "pentagon": "hexagon",
    "hexagon": "pentagon",
    "square": "diamond",
    "diamond": "square",
    "circle": "hexagon",
    "star": "cross",
    "cross": "star",
    "triangle": "diamond",
}
COLOR_LOOK_ALIKES: dict[str, str] = {
    "red": "orange",
    "orange": "red",
    "blue": "purple",
    "purple": "blue",
    "yellow": "orange",
    "green": "yellow",
    "white": "gray",
    "gray": "white",
}

# Words that name "any object" in a noun phrase.
GENERIC_NOUNS: tuple[str, ...] = ("object", "shape", "thing", "item")
# Alternative spellings accepted in text.
SYNONYMS: dict[str, str] = {
    "grey": "gray",
    "colour": "color",
    "colours": "colors",
    "big": "large",
    "tiny": "small",
    "little": "small",
    "stripy": "striped",
    "stripes": "striped",
    "dots": "dotted",
    "spotted": "dotted",
    "plain": "solid",
    "rhombus": "diamond",
    "plus": "cross",
}
ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": COLORS, "size": SIZES, "texture": TEXTURES}
ATTRIBUTE_OF_WORD: dict[str, str] = {word: attribute for attribute, words in ATTRIBUTES.items() for word in words}


def plural(noun: str) -> str:
    """The plural of a noun of this vocabulary ("cross" -> "crosses", "circle" -> "circles")."""
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def singular(word: str) -> str:
    """The singular of a (possibly) plural noun of this vocabulary; other words are returned as is."""
    known = set(SHAPES) | set(GENERIC_NOUNS)
    if word in known:
        return word
    for candidate in (word[:-2], word[:-1]):
        if candidate in known and plural(candidate) == word:
            return candidate
    return word


def size_of(side_fraction: float) -> str:
    """The size class of a box whose side is ``side_fraction`` of the frame side."""
    if side_fraction < SIZE_THRESHOLDS[0]:
        return "small"
    if side_fraction < SIZE_THRESHOLDS[1]:
        return "medium"
    return "large"
