"""The zoo's deterministic language layer: noun phrases and questions over perceived objects."""

from __future__ import annotations

import pytest

from fmprog.zoo.language import UNKNOWN_ANSWER, ObjectQuery, answer_question, certain, matching, parse_noun


@pytest.mark.parametrize(
    ("noun", "query"),
    [
        ("red triangle", ObjectQuery(shape="triangle", color="red")),
        ("triangle", ObjectQuery(shape="triangle")),
        ("object", ObjectQuery()),
        ("shapes", ObjectQuery()),
        ("small blue circle", ObjectQuery(shape="circle", color="blue", size="small")),
        ("striped square", ObjectQuery(shape="square", texture="striped")),
        ("circles", ObjectQuery(shape="circle")),
        ("crosses", ObjectQuery(shape="cross")),
        ("the Grey Star", ObjectQuery(shape="star", color="gray")),
        ("red", ObjectQuery(color="red")),
    ],
)
def test_parse_noun(noun, query):
    assert parse_noun(noun) == query


@pytest.mark.parametrize("noun", ["car", "person", "red car", "", "red blue star", "circle square"])
def test_parse_noun_refuses_what_it_does_not_know(noun):
    assert parse_noun(noun) is None


def _objects():
    red_circle = certain("circle", "red", "solid", (10, 10, 40, 40), 128)
    blue_square = certain("square", "blue", "striped", (70, 60, 90, 80), 128)
    red_star = certain("star", "red", "dotted", (100, 5, 112, 17), 128)
    return [red_circle, blue_square, red_star]


def test_matching_by_attributes_and_size():
    objects = _objects()
    assert matching(objects, ObjectQuery(color="red")) == [objects[0], objects[2]]
    assert matching(objects, ObjectQuery(size="small")) == [objects[2]]
    assert matching(objects, ObjectQuery(shape="square", texture="striped")) == [objects[1]]
    assert matching(objects, ObjectQuery(shape="hexagon")) == []


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is this?", "circle"),
        ("What color is this?", "red"),
        ("What colour is this circle?", "red"),
        ("What shape is this?", "circle"),
        ("Is this circle red?", "yes"),
        ("Is this shape striped?", "no"),
        ("Is this a red circle?", "yes"),
        ("Is this a blue circle?", "no"),
        ("Which of these is it: square, circle, star?", "circle"),
        ("Which of these is it: blue circle, red circle?", "red circle"),
    ],
)
def test_questions_about_the_focus(question, answer):
    objects = _objects()
    assert answer_question(question, objects, objects[0]) == answer


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("Is there a star?", "yes"),
        ("Is there a blue star?", "no"),
        ("Are there any red objects?", "yes"),
        ("How many red shapes are there?", "2"),
        ("How many hexagons are there?", "0"),
        ("What color is the square?", "blue"),
        ("What color is the hexagon?", "n/a"),
        ("Is there a red circle left of a blue square?", "yes"),
        ("Is there a red circle right of a blue square?", "no"),
        ("Is there a red star above a blue square?", "yes"),
        ("Is there a blue square below a red star?", "yes"),
        # the benchmark tracks' compound forms
        ("Is there a red circle and a blue square?", "yes"),
        ("Is there a red circle and a blue star?", "no"),
        ("Are there at least 2 red objects?", "yes"),
        ("Are there at least three red objects?", "no"),
        ("What color is the leftmost red object?", "red"),
        ("What shape is the rightmost red object?", "star"),
        ("What shape is the topmost object?", "star"),
        ("What shape is the lowest object?", "square"),
        ("What color is the leftmost hexagon?", "n/a"),
        ("What shape is the red object that is not dotted?", "circle"),
        ("What shape is the red object that is not red?", "n/a"),
        ("Which is larger, the red circle or the blue square?", "red circle"),
        ("Which is smaller, the red circle or the blue square?", "blue square"),
        ("Which is larger, the red circle or the green square?", "n/a"),
    ],
)
def test_whole_frame_questions(question, answer):
    assert answer_question(question, _objects(), None) == answer


@pytest.mark.parametrize(
    "question",
    [
        "What is the capital of France?",
        "Is this person riding a bicycle?",
        "Is there a car?",
        "",
        "???",
        "How many cars?",
    ],
)
def test_unparseable_questions_get_a_fixed_answer(question):
    objects = _objects()
    assert answer_question(question, objects, objects[0]) == UNKNOWN_ANSWER
