"""The synthetic scene domain: a deterministic generator of frames with exact ground truth, and
its vocabulary (numpy only; importing it never imports torch)."""

from __future__ import annotations

from fmprog.scene import vocabulary
from fmprog.scene.generator import (
    DEFAULT_FRAME_SIZE,
    DEFAULT_MIX,
    DIFFICULTIES,
    KNOBS,
    Difficulty,
    Scene,
    SceneKnobs,
    SceneObject,
    generate_scene,
    scene_stream,
)

__all__ = [
    "DEFAULT_FRAME_SIZE",
    "DEFAULT_MIX",
    "DIFFICULTIES",
    "KNOBS",
    "Difficulty",
    "Scene",
    "SceneKnobs",
    "SceneObject",
    "generate_scene",
    "scene_stream",
    "vocabulary",
]
