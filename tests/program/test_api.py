"""Every function of the program API, run through the sandboxed executor."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.program.api import to_numeric, word_to_num
from tests.fakes import box, run


def test_find_returns_patches_best_score_first_in_frame_coordinates(executor, zoo, frame):
    zoo.set_boxes({"cat": [box(60, 10, 90, 30, score=0.5), box(10, 20, 30, 60, score=0.9)]})
    trace = run(executor, 'def execute_command(image):\n    return ImagePatch(image).find("cat")', frame)
    # y is measured from the bottom: a box spanning rows 20..60 of an 80-row frame has lower=20, upper=60
    assert trace.answer == [
        {"left": 10, "lower": 20, "right": 30, "upper": 60},
        {"left": 60, "lower": 50, "right": 90, "upper": 70},
    ]


def test_find_on_a_crop_passes_the_crop_pixels_and_offsets_boxes(executor, zoo):
    image = np.zeros((80, 100, 3), np.uint8)
    image[10:50, 20:60] = 255  # rows 10..50 from the top = lower 30, upper 70
    zoo.set_boxes({"dog": [box(0, 0, 10, 10)]})
    source = """
def execute_command(image):
    patch = ImagePatch(image, 20, 30, 60, 70)
    return patch.find("dog")[0]
"""
    trace = run(executor, source, image)
    shape, noun = zoo.models["detect-small"].calls[0]
    assert shape == (40, 40, 3) and noun == "dog"
    assert trace.answer == {"left": 20, "lower": 60, "right": 30, "upper": 70}


def test_find_drops_boxes_without_area(executor, zoo, frame):
    zoo.set_boxes({"cat": [box(10, 10, 10, 30), box(200, 200, 300, 300)]})
    trace = run(executor, 'def execute_command(image):\n    return len(ImagePatch(image).find("cat"))', frame)
    assert trace.answer == 0


def test_exists_uses_one_detection(executor, zoo, frame):
    zoo.set_boxes({"cat": [box(1, 1, 5, 5)]})
    source = 'def execute_command(image):\n    p = ImagePatch(image)\n    return [p.exists("cat"), p.exists("dog")]'
    trace = run(executor, source, frame)
    assert trace.answer == [True, False]
    assert [i.function for i in trace.invocations] == ["detect", "detect"]


@pytest.mark.parametrize(
    ("name", "answer", "expected"), [("3", "3", True), ("number 3", "three", True), ("4", "3", False)]
)
def test_exists_with_a_number_asks_vqa_what_is_written(executor, zoo, frame, name, answer, expected):
    zoo.set_vqa(lambda image, question: answer)
    trace = run(executor, f'def execute_command(image):\n    return ImagePatch(image).exists("{name}")', frame)
    assert trace.answer is expected
    assert [i.function for i in trace.invocations] == ["vqa"]
    assert zoo.models["vqa-small"].calls[0][1] == "What number is written in the image (in digits)?"


def test_verify_property_asks_one_yes_no_question(executor, zoo, frame):
    zoo.set_vqa(lambda image, question: "Yes." if "red" in question else "no")
    source = """
def execute_command(image):
    p = ImagePatch(image)
    return [p.verify_property("car", "red"), p.verify_property("car", "blue")]
"""
    trace = run(executor, source, frame)
    assert trace.answer == [True, False]
    assert [q for _, q in zoo.models["vqa-small"].calls] == ["Is this car red?", "Is this car blue?"]


def test_query_and_its_alias_simple_query(executor, zoo, frame):
    zoo.set_vqa(lambda image, question: f"answer to {question}")
    source = """
def execute_command(image):
    p = ImagePatch(image)
    return [p.query("What color?"), p.simple_query("How many?"), p.query()]
"""
    trace = run(executor, source, frame)
    assert trace.answer == ["answer to What color?", "answer to How many?", "answer to What is this?"]


def test_best_text_match_picks_the_option_the_answer_names(executor, zoo, frame):
    zoo.set_vqa(lambda image, question: "it looks white to me")
    source = 'def execute_command(image):\n    return ImagePatch(image).best_text_match(["gold", "white"])'
    trace = run(executor, source, frame)
    assert trace.answer == "white"
    assert zoo.models["vqa-small"].calls[0][1] == "Which of these is it: gold, white?"
    assert len(trace.invocations) == 1


def test_llm_query_as_method_and_module_function(executor, zoo, frame):
    zoo.set_llm(lambda prompt: f"<{prompt}>")
    source = """
def execute_command(image):
    p = ImagePatch(image)
    a = p.llm_query("Who invented the bicycle?", long_answer=False)
    b = llm_query("What city?", "Context: Eiffel Tower.")
    return [a, b]
"""
    trace = run(executor, source, frame)
    assert trace.answer == [
        "<Who invented the bicycle?\nAnswer in one or two words.>",
        "<Context: Eiffel Tower.\nWhat city?>",
    ]
    assert [i.function for i in trace.invocations] == ["llm", "llm"]


def test_box_attributes_crop_and_overlaps(executor, frame):
    source = """
def execute_command(image):
    p = ImagePatch(image, 10, 20, 50, 60)
    c = p.crop(5, 5, 100, 15)
    return [p.left, p.lower, p.right, p.upper, p.width, p.height, p.horizontal_center, p.vertical_center,
            c, p.overlaps_with(45, 55, 70, 70), p.overlaps_with(51, 0, 70, 70)]
"""
    trace = run(executor, source, frame)
    crop = {"left": 15, "lower": 25, "right": 50, "upper": 35}  # relative to p, clipped to it
    assert trace.answer == [10, 20, 50, 60, 40, 40, 30.0, 40.0, crop, True, False]


def test_cropped_image_starts_a_new_patch(executor, frame):
    source = """
def execute_command(image):
    p = ImagePatch(image, 10, 20, 50, 60)
    q = ImagePatch(p.cropped_image)
    return [q.width, q.height, q.left]
"""
    assert run(executor, source, frame).answer == [40, 40, 0]


def test_patch_without_area_is_a_runtime_error(executor, frame):
    trace = run(executor, "def execute_command(image):\n    return ImagePatch(image, 10, 10, 10, 20)", frame)
    assert trace.error.kind == "runtime_error" and "no area" in trace.error.message and trace.error.line == 2


def test_distance_between_patches_and_numbers(executor, frame):
    source = """
def execute_command(image):
    a = ImagePatch(image, 0, 0, 10, 10)
    b = ImagePatch(image, 13, 14, 20, 20)
    c = ImagePatch(image, 5, 0, 15, 10)
    return [distance(a, b), distance(a, c), distance(3, 7.5)]
"""
    far, overlap, numbers = run(executor, source, frame).answer
    assert far == pytest.approx(5.0)  # 3 across, 4 up
    assert overlap == pytest.approx(-50 / 150)  # minus IoU
    assert numbers == 4.5


def test_bool_to_yesno_and_to_numeric_in_programs(executor, frame):
    source = """
def execute_command(image):
    return [bool_to_yesno(True), bool_to_yesno(0), to_numeric("about 12 people"), coerce_to_numeric("seven")]
"""
    assert run(executor, source, frame).answer == ["yes", "no", 12, 7]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("twenty-one", 21),
        ("one hundred and five", 105),
        ("2 thousand", 2000),
        ("2.5", 2.5),
        ("about 12 people", 12),
        ("10-15", 10),
        ("-4 degrees", -4),
        ("3.5 kg", 3.5),
        ("none", "none"),
    ],
)
def test_to_numeric(text, expected):
    assert to_numeric(text) == expected


def test_to_numeric_no_string_raises_and_word_to_num_rejects_words():
    with pytest.raises(ValueError, match="no number"):
        to_numeric("none", no_string=True)
    with pytest.raises(ValueError, match="not a number"):
        word_to_num("seventy cats")


def test_compute_depth_is_reported_unsupported(executor, frame):
    trace = run(executor, "def execute_command(image):\n    return ImagePatch(image).compute_depth()", frame)
    assert trace.error.kind == "unsupported"
    assert "not supported by the configured backends" in trace.error.message


def test_math_import_and_preloaded_module(executor, frame):
    source = """
import math
from math import floor
def execute_command(image):
    return [math.sqrt(16), floor(2.7), math.pi > 3]
"""
    assert run(executor, source, frame).answer == [4.0, 2, True]


def test_print_goes_to_the_trace_output(executor, frame):
    trace = run(executor, 'def execute_command(image):\n    print("found", 3)\n    return 1', frame)
    assert trace.output == "found 3\n"
