"""Generated frames with signs on their objects (``generate_scene(..., text=True)``), for the text
reading (ocr) tests: each signed object's crop, and the sign itself cut out of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmprog.scene import generate_scene
from fmprog.scene.generator import Scene, SceneObject

PLATE_RGB = (245, 245, 235)  # the generator's sign plates


@dataclass(frozen=True)
class Sign:
    scene: Scene
    obj: SceneObject

    @property
    def text(self) -> str:
        return self.obj.text

    @property
    def crop(self) -> np.ndarray:
        """The object's box: what a program's ``find(...)[i].read_text()`` reads."""
        x0, y0, x1, y1 = self.obj.box
        return np.ascontiguousarray(self.scene.image[y0:y1, x0:x1])

    @property
    def plate(self) -> np.ndarray:
        """The sign alone: the plate's pixels inside the object's box."""
        crop = self.crop
        rows, cols = np.nonzero(np.all(np.abs(crop.astype(int) - PLATE_RGB) <= 2, axis=2))
        return np.ascontiguousarray(crop[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])


def signs(count: int, *, start: int = 0, size: int = 256) -> list[Sign]:
    """The first ``count`` signed objects of easy frames ``start``, ``start + 1``, ..."""
    found: list[Sign] = []
    seed = start
    while len(found) < count:
        scene = generate_scene(seed, "easy", size, text=True)
        found += [Sign(scene, obj) for obj in scene.objects if obj.text][: count - len(found)]
        seed += 1
    return found
