"""The scene generator: determinism, ground truth that agrees with the pixels, difficulty knobs."""

from __future__ import annotations

import sys
from dataclasses import astuple, replace

import numpy as np
import pytest

from fmprog.scene import DIFFICULTIES, SceneKnobs, generate_scene, scene_stream
from fmprog.scene.generator import KNOBS, shape_mask
from fmprog.scene.vocabulary import COLOR_RGB, COLORS, SHAPES, SIZE_RANGES, SIZES, TEXTURES, plural, singular, size_of


def test_importing_the_scene_package_does_not_import_torch():
    assert "fmprog.scene" in sys.modules or generate_scene
    import subprocess

    code = "import sys, fmprog.scene, fmprog.zoo; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_same_seed_same_scene(difficulty):
    a, b = generate_scene(42, difficulty), generate_scene(42, difficulty)
    assert np.array_equal(a.image, b.image)
    assert a.objects == b.objects
    c = generate_scene(43, difficulty)
    assert not np.array_equal(a.image, c.image)


def test_frame_format_and_size():
    scene = generate_scene(1, "medium", size=96)
    assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
    assert scene.difficulty == "medium" and scene.seed == 1
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96


def test_objects_use_the_vocabulary_and_their_size_class():
    for seed in range(40):
        for obj in generate_scene(seed, DIFFICULTIES[seed % 3]).objects:
            assert obj.shape in SHAPES and obj.color in COLORS and obj.texture in TEXTURES and obj.size in SIZES
            side = (obj.box[2] - obj.box[0]) / 128
            low, high = SIZE_RANGES[obj.size]
            assert low - 0.01 <= side <= high + 0.01
            assert size_of(side) == obj.size


def test_easy_boxes_hold_the_objects_colour_and_nothing_outside_differs_from_background():
    for seed in range(20):
        scene = generate_scene(seed, "easy")
        image = scene.image.astype(int)
        painted = np.zeros(image.shape[:2], bool)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert obj.visibility == 1.0
            region = image[y0:y1, x0:x1]
            mask = shape_mask(obj.shape, x1 - x0)
            painted[y0:y1, x0:x1] |= mask
            nominal = np.asarray(COLOR_RGB[obj.color])
            # The most common colour inside the shape is the object's colour (jitter <= 10 per channel).
            pixels = region[mask].reshape(-1, 3)
            close = np.abs(pixels - nominal).max(axis=1) <= 10
            assert close.mean() > 0.4, (obj, close.mean())
        background = image[~painted]
        assert (background == background[0]).all()


def test_visibility_is_the_visible_fraction_and_hard_frames_occlude():
    fractions = [o.visibility for seed in range(60) for o in generate_scene(seed, "hard").objects]
    assert min(fractions) >= 0.7 - 1e-6  # placement bounds covered area at max_occlusion = 0.3
    assert min(fractions) < 1.0


def _stats(difficulty: str, n: int = 60) -> dict[str, float]:
    scenes = [generate_scene(seed, difficulty) for seed in range(n)]
    sides = [(o.box[2] - o.box[0]) for s in scenes for o in s.objects]
    # Noise: mean absolute difference between horizontally adjacent background pixels.
    roughness = [np.abs(np.diff(s.image[:8, :, :].astype(int), axis=1)).mean() for s in scenes]
    return {
        "objects": float(np.mean([len(s.objects) for s in scenes])),
        "side": float(np.mean(sides)),
        "roughness": float(np.mean(roughness)),
    }


def test_difficulty_knobs_change_the_statistics():
    easy, medium, hard = (_stats(d) for d in DIFFICULTIES)
    assert easy["objects"] < medium["objects"] < hard["objects"]
    assert easy["side"] > medium["side"] > hard["side"]
    assert easy["roughness"] < hard["roughness"]


def _knobs(knobs: SceneKnobs) -> np.ndarray:
    """Every knob as one flat vector of numbers, ranges unpacked."""
    return np.hstack([np.atleast_1d(value) for value in astuple(knobs)]).astype(float)


def test_continuous_level_interpolates_the_presets():
    easy, medium, hard = (_knobs(KNOBS[d]) for d in DIFFICULTIES)
    # the presets at their levels, and clamped beyond them
    for level, preset in ((-1.0, easy), (0.0, easy), (0.5, medium), (1.0, hard), (2.0, hard)):
        np.testing.assert_allclose(_knobs(SceneKnobs.at_level(level)), preset, err_msg=f"level {level}")
    # linear between them (the presets' integer knobs are even apart, so their midpoints are exact)
    np.testing.assert_allclose(_knobs(SceneKnobs.at_level(0.25)), (easy + medium) / 2)
    np.testing.assert_allclose(_knobs(SceneKnobs.at_level(0.75)), (medium + hard) / 2)
    assert SceneKnobs.at_level(0.75).n_objects == (4, 7)
    scene = generate_scene(5, 0.9)
    assert scene.difficulty == "hard" and scene.level == pytest.approx(0.9)
    with pytest.raises(ValueError, match="difficulty"):
        generate_scene(5, "brutal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        generate_scene(5, 1.5)


def test_stream_is_deterministic_and_mixes_difficulties():
    first = list(scene_stream(7, 30))
    second = list(scene_stream(7, 30))
    assert [s.seed for s in first] == [s.seed for s in second]
    assert {s.difficulty for s in first} == set(DIFFICULTIES)
    only_hard = list(scene_stream(7, 5, mix={"hard": 1.0}))
    assert {s.difficulty for s in only_hard} == {"hard"}
    with pytest.raises(ValueError, match="mix"):
        next(scene_stream(7, 1, mix={"impossible": 1.0}))


def test_plurals_round_trip():
    for shape in SHAPES:
        assert singular(plural(shape)) == shape
    assert plural("cross") == "crosses" and singular("boxes") == "boxes"


def test_signs_are_opt_in_and_change_only_the_plates_they_draw():
    signed_objects = 0
    for seed in range(12):
        plain, signed = generate_scene(seed, "easy", 256), generate_scene(seed, "easy", 256, text=True)
        assert plain.image.tobytes() == generate_scene(seed, "easy", 256, text=False).image.tobytes()
        assert [replace(o, text="") for o in signed.objects] == list(plain.objects)
        assert all(o.text == "" for o in plain.objects)
        changed = np.any(plain.image != signed.image, axis=2)
        for obj in signed.objects:
            x0, y0, x1, y1 = obj.box
            inside = changed[y0:y1, x0:x1].sum()
            if obj.text:
                signed_objects += 1
                assert obj.text.isdigit() or obj.text.isupper()
                assert 0 < inside < (x1 - x0) * (y1 - y0) / 2, "a plate inside the object, smaller than it"
            changed[y0:y1, x0:x1] = False
        assert not changed.any(), "nothing changes outside the signed objects"
    assert signed_objects >= 12
    small = generate_scene(3, "easy", 128, text=True)
    assert all((o.box[2] - o.box[0] >= 40) for o in small.objects if o.text)
