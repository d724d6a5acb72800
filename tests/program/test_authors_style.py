"""Programs in the authors' style run unchanged: ViperGPT idioms, early returns, llm after query."""

from __future__ import annotations

from tests.fakes import box, run

MOTORCYCLE_DOG = """
def execute_command(image) -> bool:
    image_patch = ImagePatch(image)

    if not image_patch.exists("motorcycle"):
        return False
    if not image_patch.exists("dog"):
        return False
    if not image_patch.exists("man"):
        return False

    return image_patch.query("In the image, is there a man riding a motorcycle with a dog? Answer me YES or NO.")
"""


def test_early_return_filter_short_circuits(executor, zoo, frame):
    zoo.set_boxes({"motorcycle": [box(1, 1, 20, 20)]})
    trace = run(executor, MOTORCYCLE_DOG, frame)
    assert trace.answer is False
    assert [i.site for i in trace.invocations] == ["exists@5:23", "exists@7:23"]
    assert trace.cost == 2 * 172.0


def test_early_return_filter_reaches_vqa(executor, zoo, frame):
    zoo.set_boxes({n: [box(1, 1, 20, 20)] for n in ("motorcycle", "dog", "man")})
    zoo.set_vqa(lambda image, question: "YES")
    trace = run(executor, MOTORCYCLE_DOG, frame, size="large")
    assert trace.answer == "YES"
    assert trace.cost == 3 * 232.0 + 73400.0


SECOND_FROM_LEFT = """
from typing import List

def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    bar_patches: List[ImagePatch] = image_patch.find("bar")
    bar_patches.sort(key=lambda x: x.horizontal_center)
    bar_patch = bar_patches[1]
    return bar_patch.query("Is the bar quuxy?")
"""


def test_sorting_patches_by_horizontal_center(executor, zoo, frame):
    zoo.set_boxes({"bar": [box(70, 0, 90, 10, 0.99), box(5, 0, 15, 10, 0.5), box(40, 0, 50, 10, 0.7)]})
    zoo.set_vqa(lambda image, question: f"width {image.shape[1]} at {image.shape[0]} rows")
    seen = []
    zoo.models["vqa-small"].answer = lambda image, question: seen.append(image.shape) or "yes"
    assert run(executor, SECOND_FROM_LEFT, frame).answer == "yes"
    assert seen == [(10, 10, 3)]


CLOSEST_QUX = """
def execute_command(image):
    image_patch = ImagePatch(image)
    qux_patches = image_patch.find('qux')
    foo_patches = image_patch.find('foo')
    foo_patch = foo_patches[0]
    qux_patches.sort(key=lambda x: distance(x, foo_patch))
    return qux_patches[0]
"""


def test_closest_by_distance(executor, zoo, frame):
    zoo.set_boxes({"qux": [box(80, 0, 90, 10), box(20, 0, 30, 10)], "foo": [box(0, 0, 10, 10)]})
    assert run(executor, CLOSEST_QUX, frame).answer == {"left": 20, "lower": 70, "right": 30, "upper": 80}


BUILDING_CITY = """
def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    building_patches = image_patch.find("building")
    building_patch = building_patches[0]
    building_name = building_patch.query("What is the name of the building?")
    return building_patch.llm_query(f"What city is {building_name} in?", long_answer=False)
"""


def test_llm_query_after_query(executor, zoo, frame):
    zoo.set_boxes({"building": [box(10, 10, 60, 70)]})
    zoo.set_vqa(lambda image, question: "the Eiffel Tower")
    zoo.set_llm(lambda prompt: "Paris" if "Eiffel" in prompt else "?")
    trace = run(executor, BUILDING_CITY, frame)
    assert trace.answer == "Paris"
    assert [i.function.value for i in trace.invocations] == ["detect", "vqa", "llm"]


FOO_ON_TOP = """
def execute_command(image):
    image_patch = ImagePatch(image)
    qux_patches = image_patch.find("qux")
    qux_patch = qux_patches[0]
    foo_patches = image_patch.find("black foo")
    for foo in foo_patches:
        if foo.vertical_center > qux_patch.vertical_center:
            return foo
"""


def test_vertical_center_grows_upward(executor, zoo, frame):
    # rows 0..10 are the top of the picture: that foo is above the qux at rows 40..50
    zoo.set_boxes({"qux": [box(0, 40, 10, 50)], "black foo": [box(0, 60, 10, 70, 0.9), box(0, 0, 10, 10, 0.8)]})
    assert run(executor, FOO_ON_TOP, frame).answer == {"left": 0, "lower": 70, "right": 10, "upper": 80}


COUNTING = """
import math

def execute_command(image):
    image_patch = ImagePatch(image)
    people = image_patch.find("person")
    count = 0
    for person in people:
        if person.verify_property("person", "wearing a hat"):
            count += 1
    answer = image_patch.query("How many people are there?")
    total = coerce_to_numeric(answer)
    if total == 0:
        return "N/A"
    return str(math.floor(100 * count / total)) + "%"
"""


def test_loop_with_counter_and_numeric_coercion(executor, zoo, frame):
    zoo.set_boxes({"person": [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)]})
    answers = iter(["yes", "no", "yes", "four"])
    zoo.set_vqa(lambda image, question: next(answers))
    trace = run(executor, COUNTING, frame)
    assert trace.answer == "50%"
    assert len(trace.invocations) == 5 and trace.executed_sites == ["find@6:25", "verify_property@9:18", "query@11:25"]


def test_try_except_in_programs_catches_ordinary_errors(executor, zoo, frame):
    source = """
def execute_command(image):
    patches = ImagePatch(image).find("cat")
    try:
        return patches[0].query("What color?")
    except IndexError:
        return "no cat"
"""
    assert run(executor, source, frame).answer == "no cat"
