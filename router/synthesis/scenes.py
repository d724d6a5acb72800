"""The dry run's targeted scenes: generated frames that hold every object a synthesised program
looks for (``find("purple hexagon")`` and ``find("orange circle")``: a scene with both), so that
the code that handles found objects runs before the program is accepted.

The scenes come from a fixed pool of seeded scenes (the first ``TARGET_POOL`` of ``ZOO_EVALUATION``), searched
once per process.
"""

from __future__ import annotations

import ast
from dataclasses import replace
from functools import lru_cache

import numpy as np

from fmprog.scene.generator import KNOBS, Scene, generate_scene
from fmprog.scene.seeds import ZOO_EVALUATION
from fmprog.scene.vocabulary import COLORS, SHAPES, SIZES, TEXTURES

TARGETED_FRAMES = 3  # dry-run scenes holding every object the program looks for, run first
TARGET_POOL = 3000  # generated scenes searched for them (about 1.5 s, once per process)
# Easy scenes (clean, no occlusion) with more objects and none small, so that two named objects
# often share a scene and the cheapest detector finds them (a dry run must reach the code after
# the finds, not test perception).
TARGET_KNOBS = replace(KNOBS["easy"], n_objects=(4, 6), size_weights=(0.0, 0.6, 0.4))
SCENE_WORDS = frozenset((*COLORS, *SHAPES, *TEXTURES, *SIZES))


def looked_for(source: str) -> list[frozenset[str]]:
    """The scene words (colours, shapes, textures, sizes) of each literal noun the program passes
    to ``find`` or ``exists``: ``find("striped red squares")`` gives {"striped", "red", "square"}.
    Nouns without such words ("dog", "object") are left out."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    nouns = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("find", "exists")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            words = {_scene_word(word) for word in node.args[0].value.lower().split()} - {None}
            if words:
                nouns.append(frozenset(words))
    return nouns  # type: ignore[return-value]


def _scene_word(word: str) -> str | None:
    for form in (word, word[:-1], word[:-2]):  # "circles", "crosses"
        if form in SCENE_WORDS:
            return form
    return None


@lru_cache(maxsize=1)
def _scene_pool() -> list[tuple[int, list[frozenset[str]]]]:
    """The searched scenes' seeds, each with the scene words of its objects."""
    return [
        (seed, [frozenset((o.color, o.shape, o.texture, o.size)) for o in _target_scene(seed).objects])
        for seed in ZOO_EVALUATION.seeds(TARGET_POOL)
    ]


def targeted_frames(source: str, count: int) -> list[np.ndarray]:
    """Up to ``count`` generated frames, each holding an object for every noun the program looks
    for (``looked_for``); none when it looks for nothing the scenes are made of."""
    nouns = looked_for(source)
    if not nouns or count < 1:
        return []
    seeds = [seed for seed, objects in _scene_pool() if all(any(n <= o for o in objects) for n in nouns)]
    return [_target_scene(seed).image for seed in seeds[:count]]


def _target_scene(seed: int) -> Scene:
    return generate_scene(seed, "easy", knobs=TARGET_KNOBS)
