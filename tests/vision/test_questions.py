"""The question forms a real-image VQA backend answers (``fmprog.vision.questions``), and the
questions it leaves out of scope."""

from __future__ import annotations

import pytest

from fmprog.program.api import DEFAULT_QUERY, NUMBER_QUESTION, choice_question, property_question
from fmprog.vision.questions import Question, is_color_options, parse_question


@pytest.mark.parametrize(
    "text",
    [
        "What is this?",
        "what is it",
        DEFAULT_QUERY,
        "What is this object?",
        "What is this in the image?",
        "What kind of animal is this?",
        "What type of vehicle is it?",
        "What animal is this?",
        "  WHAT   IS THAT ?! ",
    ],
)
def test_what_questions(text):
    assert parse_question(text) == Question("what")


@pytest.mark.parametrize(
    "text", ["What color is this?", "What colour is it?", "What is the color of this car?", "what color is that shirt"]
)
def test_color_questions(text):
    assert parse_question(text) == Question("color")


@pytest.mark.parametrize(
    ("text", "noun"),
    [
        ("Is this a dog?", "dog"),
        ("Is it an orange?", "orange"),
        ("Is that a traffic light?", "traffic light"),
        ("IS THIS A DOG", "dog"),
        ("Is this a red car?", "red car"),  # the whole phrase: the vocabulary decides what it can check
    ],
)
def test_is_a_questions_name_their_noun(text, noun):
    assert parse_question(text) == Question("is_a", noun=noun)


@pytest.mark.parametrize(
    ("text", "noun", "attribute", "color"),
    [
        ("Is this car red?", "car", "red", "red"),
        (property_question("car", "red"), "car", "red", "red"),
        ("Is this red?", None, "red", "red"),
        ("Is this grey?", None, "grey", "gray"),  # the colour through its alias
        ("Is this traffic light green?", "traffic light", "green", "green"),
        ("Is this animal a dog?", "animal", "a dog", None),  # a class keeps its article
        ("Is this person a woman?", "person", "a woman", None),
        (property_question("vehicle", "a bus"), "vehicle", "a bus", None),
    ],
)
def test_property_questions_with_a_colour_or_a_class(text, noun, attribute, color):
    question = parse_question(text)
    assert question == Question("property", noun=noun, attribute=attribute)
    assert question.color == color


@pytest.mark.parametrize(
    ("text", "options", "colors"),
    [
        ("Which of these is it: red, blue?", ("red", "blue"), True),
        ("Which of these is it: cat, dog?", ("cat", "dog"), False),
        ("Which of these is it: cat or dog?", ("cat", "dog"), False),
        ("which of these is it red, grey or navy", ("red", "grey", "navy"), True),
        (choice_question(["cat", "dog"], "a"), ("a cat", "a dog"), False),
        (choice_question(["red", "dog"]), ("red", "dog"), False),
    ],
)
def test_choice_questions_list_their_options(text, options, colors):
    question = parse_question(text)
    assert question == Question("choice", options=options)
    assert is_color_options(question.options) is colors


@pytest.mark.parametrize(
    ("text", "noun"),
    [
        ("Is there a person?", "person"),
        ("Is there an apple?", "apple"),
        ("Are there any cars in the image?", "cars"),
        ("Are there people?", "people"),
        ("Is there a person in the picture?", "person"),
        ("Is there some traffic light on this frame?", "traffic light"),
    ],
)
def test_exists_questions_name_their_noun(text, noun):
    assert parse_question(text) == Question("exists", noun=noun)


@pytest.mark.parametrize(
    ("text", "noun"),
    [
        ("How many people are there?", "people"),
        ("How many cars can you see?", "cars"),
        ("How many dogs?", "dogs"),
        ("How many traffic lights are visible in the frame?", "traffic lights"),
        ("How many birds do you see in this photo?", "birds"),
    ],
)
def test_count_questions_name_their_noun(text, noun):
    assert parse_question(text) == Question("count", noun=noun)


def test_a_count_question_with_are_in_the_image_names_its_noun():
    assert parse_question("How many people are in the image?") == Question("count", noun="people")


def test_a_contracted_what_question():
    assert parse_question("What's this?") == Question("what")


def test_a_property_question_with_an_article_asks_about_a_class_even_when_it_names_a_colour():
    question = parse_question("Is this fruit an orange?")
    assert question == Question("property", noun="fruit", attribute="an orange")
    assert question.color is None  # with its article, "an orange" is a fruit


@pytest.mark.parametrize(
    "text",
    [
        "What is this person doing?",
        "What is this person wearing?",
        "What is this used for?",
        "What is this called?",
        "What is this made of?",
        "Is this person riding a bike?",
        property_question("person", "riding a bicycle"),
        "Is the door open?",
        "Is this open?",
        "Is this dog?",
        "Who is this?",
        "Where is this?",
        "What color is the car?",
        "What?",
        "",
        NUMBER_QUESTION,
    ],
)
def test_questions_out_of_scope_are_none(text):
    assert parse_question(text) is None


@pytest.mark.parametrize(
    ("options", "expected"),
    [(("red", "Grey", "violet"), True), (("red", "dog"), False), ((), False), (("magenta",), False)],
)
def test_is_color_options_needs_every_option_to_name_a_colour(options, expected):
    assert is_color_options(options) is expected
