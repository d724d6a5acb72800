"""Held-out evaluation sets and their scores."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.backends import Detection
from fmprog.zoo.evaluate import HELD_OUT_SEED_BASE, detection_counts, evaluate, evaluation_set, score


def test_evaluation_sets_are_deterministic_and_held_out():
    a, b = evaluation_set("vqa", "hard", 20, seed=1), evaluation_set("vqa", "hard", 20, seed=1)
    assert [i.text for i in a] == [i.text for i in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert HELD_OUT_SEED_BASE >= 10**9
    with pytest.raises(ValueError, match="detect and vqa"):
        evaluation_set("llm", "easy", 1)


def test_vqa_set_mixes_crop_and_frame_questions():
    items = evaluation_set("vqa", "medium", 120, seed=0)
    kinds = {i.kind for i in items}
    assert {"what", "color", "which_shape", "exists", "count", "spatial"} <= kinds
    assert any(i.image.shape[0] < 100 for i in items) and any(i.image.shape[:2] == (128, 128) for i in items)
    assert {"yes", "no"} <= {i.expected for i in items}


def test_detect_scores_f1_at_iou_half():
    truth = [[(0, 0, 10, 10), (20, 20, 30, 30)], []]
    perfect = [[Detection((0, 0, 10, 10), 0.9), Detection((20, 20, 30, 30), 0.8)], []]
    assert score("detect", perfect, truth) == 1.0
    half = [[Detection((0, 0, 10, 10), 0.9)], [Detection((5, 5, 9, 9), 0.5)]]  # one hit, one miss, one false alarm
    assert score("detect", half, truth) == pytest.approx(0.5)
    assert detection_counts([Detection((2, 2, 12, 12), 0.9)], [(0, 0, 10, 10)]) == (0, 1, 1)  # IoU 0.47
    assert score("detect", [[]], [[]]) == 1.0


def test_vqa_scores_exact_match():
    assert score("vqa", ["Yes.", "red", "2"], ["yes", "orange", "2"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="predictions"):
        score("vqa", ["yes"], [])


def test_evaluate_runs_any_callable():
    items = evaluation_set("vqa", "easy", 30, seed=5)
    oracle = {i.text + str(i.image.shape) + str(int(i.image.sum())): i.expected for i in items}

    def answer(images, questions):
        return [oracle[q + str(im.shape) + str(int(im.sum()))] for im, q in zip(images, questions, strict=True)]

    assert evaluate(answer, "vqa", "easy", n=30, seed=5, batch_size=7).score == 1.0
    always_yes = evaluate(lambda images, questions: ["yes"] * len(images), "vqa", "easy", n=30, seed=5)
    assert always_yes.score < 0.6
    with pytest.raises(TypeError, match="detect_batch"):
        evaluate(object(), "detect", "easy", n=2)
