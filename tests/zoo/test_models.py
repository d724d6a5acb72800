"""The committed zoo models: loading, detection and VQA on generated frames, cost ratio, manifest."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.backends import Detection
from fmprog.backends.base import box_iou
from fmprog.scene import generate_scene
from fmprog.zoo import NETWORKS, ZOO, load_model, read_manifest
from fmprog.zoo.evaluate import evaluate
from fmprog.zoo.language import UNKNOWN_ANSWER

# Measured easy-frame accuracies are in weights/manifest.json; these floors sit a few points below.
EASY_DETECT_RECALL_FLOOR = {"detect-small": 0.82, "detect-large": 0.93}
EASY_VQA_FLOOR = {"vqa-small": 0.82, "vqa-large": 0.94}


def test_models_load_with_their_function_and_parameters(zoo_models):
    for name, model in zoo_models.items():
        assert model.function == ZOO[name].function
        assert model.parameters > 1000
        assert model.describe()["parameters"] == model.parameters
    with pytest.raises(KeyError, match="unknown zoo model"):
        load_model("detect-huge")


def test_small_models_are_at_least_five_times_cheaper(zoo_models):
    for function in ("detect", "vqa"):
        ratio = zoo_models[f"{function}-large"].parameters / zoo_models[f"{function}-small"].parameters
        assert ratio >= 5, (function, ratio)


def test_manifest_records_every_model():
    manifest = read_manifest()
    for name, entry in ZOO.items():
        record = manifest[name]
        assert record["function"] == entry.function
        assert record["parameters"] == load_model(name).parameters
        assert set(record["accuracy"]) == {"easy", "medium", "hard"}
        assert all(0.0 <= v <= 1.0 for v in record["accuracy"].values())
        assert record["training"]["steps"] > 0 and record["training"]["seconds"] > 0
        assert record["latency_cpu"]["batch_1_ms"] > 0
        assert record["input_size"] == NETWORKS[entry.network].arch.input_size


def test_manifest_shows_the_cost_quality_trade_off():
    manifest = read_manifest()
    for function in ("detect", "vqa"):
        small, large = manifest[f"{function}-small"], manifest[f"{function}-large"]
        assert large["accuracy"]["hard"] - small["accuracy"]["hard"] >= 0.10
        assert small["accuracy"]["easy"] >= 0.85


@pytest.mark.parametrize("name", ["detect-small", "detect-large"])
def test_detection_finds_the_objects_of_easy_frames(zoo_models, name):
    model = zoo_models[name]
    found = total = 0
    for seed in range(40):
        scene = generate_scene(2_000_000_000 + seed, "easy")
        nouns = [f"{o.color} {o.shape}" for o in scene.objects]
        results = model.detect_batch([scene.image] * len(nouns), nouns)
        for obj, detections in zip(scene.objects, results, strict=True):
            total += 1
            found += any(box_iou(d.box, obj.box) >= 0.5 for d in detections)
    assert found / total >= EASY_DETECT_RECALL_FLOOR[name], found / total


def test_detections_are_pixel_boxes_sorted_by_score(zoo_models):
    scene = generate_scene(2_000_000_100, "medium")
    detections = zoo_models["detect-large"].detect(scene.image, "objects")
    assert detections and all(isinstance(d, Detection) for d in detections)
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)
    for d in detections:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128


def test_unknown_nouns_find_nothing(zoo_models):
    image = generate_scene(3, "easy").image
    assert zoo_models["detect-small"].detect_batch([image, image, image], ["car", "", "person riding a bike"]) == [
        [],
        [],
        [],
    ]


@pytest.mark.parametrize("name", ["vqa-small", "vqa-large"])
def test_vqa_is_mostly_right_on_easy_frames(zoo_models, name):
    result = evaluate(zoo_models[name], "vqa", "easy", n=150, seed=3)
    assert result.score >= EASY_VQA_FLOOR[name], result.score


def test_vqa_on_a_crop_names_the_object(zoo_models):
    right = total = 0
    for seed in range(30):
        scene = generate_scene(2_000_000_200 + seed, "easy")
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            crop = scene.image[y0:y1, x0:x1]
            answers = zoo_models["vqa-large"].vqa_batch([crop, crop], ["What is this?", "What color is this?"])
            right += answers == [obj.shape, obj.color]
            total += 1
    assert right / total >= 0.8, right / total


def test_detection_on_a_crop_gives_boxes_in_the_crop(zoo_models):
    scene = generate_scene(2_000_000_300, "easy")
    obj = max(scene.objects, key=lambda o: o.box[2] - o.box[0])
    x0, y0, x1, y1 = obj.box
    crop = scene.image[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4]
    detections = zoo_models["detect-large"].detect(crop, obj.shape)
    assert detections
    h, w = crop.shape[:2]
    assert all(0 <= d.box[0] < d.box[2] <= w and 0 <= d.box[1] < d.box[3] <= h for d in detections)


def test_unparseable_questions_and_odd_images_do_not_crash(zoo_models):
    model = zoo_models["vqa-small"]
    tiny = np.zeros((1, 1, 3), np.uint8)
    large = np.zeros((300, 200, 3), np.uint8)
    answers = model.vqa_batch(
        [tiny, large, generate_scene(1).image], ["What is this?", "Why?", "What is the meaning of life?"]
    )
    assert answers[1:] == [UNKNOWN_ANSWER, UNKNOWN_ANSWER]
    assert isinstance(answers[0], str)
    with pytest.raises(ValueError, match="H x W x 3"):
        model.vqa_batch([np.zeros((4, 4), np.uint8)], ["What is this?"])


def test_batch_results_equal_single_results(zoo_models):
    scenes = [generate_scene(2_000_000_400 + i, ("easy", "medium", "hard")[i % 3]) for i in range(6)]
    images = [s.image for s in scenes]
    crop = images[0][10:60, 20:90]
    nouns = ["circle", "red object", "small shapes", "star", "car", "objects", "square"]
    questions = ["How many objects are there?", "Is there a red circle?", "What is this?", "What color is this?"] * 2
    detector, vqa = zoo_models["detect-large"], zoo_models["vqa-small"]
    batch = detector.detect_batch([*images, crop], nouns)
    single = [detector.detect(image, noun) for image, noun in zip([*images, crop], nouns, strict=True)]
    assert [len(found) for found in batch] == [len(found) for found in single]
    for found_batch, found_single in zip(batch, single, strict=True):
        for a, b in zip(found_batch, found_single, strict=True):  # equal up to float rounding of batched convolutions
            assert a.box == pytest.approx(b.box, abs=0.05) and a.score == pytest.approx(b.score, abs=1e-3)
    batch_answers = vqa.vqa_batch([*images, crop, crop], questions)
    assert batch_answers == [vqa.vqa(i, q) for i, q in zip([*images, crop, crop], questions, strict=True)]
