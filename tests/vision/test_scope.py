"""Whether a call is inside a backend's vocabulary (``fmprog.vision.scope``): what a detector or
a VQA backend acts on, and why a call is out of its vocabulary."""

from __future__ import annotations

import pytest

from fmprog.program.api import NUMBER_QUESTION
from fmprog.vision.classes import COCO_CLASSES
from fmprog.vision.scope import out_of_vocabulary, read_noun, read_question
from fmprog.vision.vocabulary import VocabularySpec

QUESTIONS = ("what", "color", "is_a", "property", "choice", "exists", "count")
COCO = VocabularySpec(nouns="coco")
PERSON = VocabularySpec(nouns="person")
VQA = VocabularySpec(nouns="coco+imagenet", questions=QUESTIONS)
WHAT_AND_COLOR = VocabularySpec(nouns="coco+imagenet", questions=("what", "color"))
FORMS = "(what, color, is_a, property, choice, exists, count)"


@pytest.mark.parametrize(
    ("spec", "noun", "classes"),
    [
        (COCO, "person", ("person",)),
        (COCO, "cars", ("car",)),
        (COCO, "vehicle", ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat")),
        (COCO, "object", COCO_CLASSES),
        (PERSON, "pedestrians", ("person",)),
        (PERSON, "things", ("person",)),
    ],
)
def test_a_noun_inside_the_vocabulary_is_read_as_its_classes(spec, noun, classes):
    reading = read_noun(spec, noun)
    assert reading.classes == classes
    assert reading.out_of_vocabulary is None
    assert out_of_vocabulary(spec, "detect", noun) is None


@pytest.mark.parametrize(
    ("spec", "noun", "reason"),
    [
        (COCO, "octopus", "'octopus' names none of the 80 COCO classes"),
        (PERSON, "car", "'car' names none of the person class"),
        (COCO, "", "'' names none of the 80 COCO classes"),
    ],
)
def test_a_noun_that_names_no_class_finds_nothing_and_says_why(spec, noun, reason):
    reading = read_noun(spec, noun)
    assert (reading.match, reading.classes, reading.out_of_vocabulary) == (None, (), reason)
    assert out_of_vocabulary(spec, "detect", noun) == reason


@pytest.mark.parametrize(
    ("noun", "classes", "reason"),
    [
        ("red car", ("car",), "'red car': finds car but cannot check 'red'"),
        ("person riding a bike", ("person",), "'person riding a bike': finds person but cannot check 'riding a bike'"),
        ("big red object", COCO_CLASSES, "'big red object': finds 80 classes but cannot check 'big red'"),
    ],
)
def test_a_qualified_noun_finds_its_head_and_is_out_of_vocabulary(noun, classes, reason):
    reading = read_noun(COCO, noun)
    assert reading.classes == classes  # what the detector still finds
    assert reading.out_of_vocabulary == reason


@pytest.mark.parametrize(
    ("text", "form", "classes"),
    [
        ("What is this?", "what", None),
        ("What color is this?", "color", None),
        ("Is this a dog?", "is_a", ("dog",)),
        ("Is this a golden retriever?", "is_a", ("Golden Retriever",)),  # an ImageNet class: the classifier's
        ("Is this car red?", "property", None),  # a colour: the pixels, whatever the noun
        ("Is this octopus red?", "property", None),
        ("Is this animal a dog?", "property", ("dog",)),
        ("Which of these is it: red, blue?", "choice", None),
        ("Which of these is it: a cat, a dog?", "choice", None),
        ("Is there a person?", "exists", ("person",)),
        ("How many buses are there?", "count", ("bus",)),
    ],
)
def test_a_question_inside_the_vocabulary_is_read_with_its_noun(text, form, classes):
    reading = read_question(VQA, text)
    assert reading.question is not None and reading.question.form == form
    assert (reading.match.classes if reading.match is not None else None) == classes
    assert reading.out_of_vocabulary is None
    assert out_of_vocabulary(VQA, "vqa", text) is None


@pytest.mark.parametrize(
    ("spec", "text", "reason"),
    [
        (
            VQA,
            "What is this person doing?",
            f"'What is this person doing?' is none of the question forms answered {FORMS}",
        ),
        (VQA, NUMBER_QUESTION, f"{NUMBER_QUESTION!r} is none of the question forms answered {FORMS}"),
        (WHAT_AND_COLOR, "Is this a dog?", "'Is this a dog?': this backend does not answer 'is_a' questions"),
        (WHAT_AND_COLOR, "Why?", "'Why?' is none of the question forms answered (what, color)"),
        (
            VQA,
            "Is this an octopus?",
            "'Is this an octopus?': 'octopus' names none of the 80 COCO and 1,000 ImageNet classes",
        ),
        (VQA, "Is this a red car?", "'Is this a red car?': 'red car': cannot check 'red'"),
        (
            VQA,
            "Is this animal an octopus?",
            "'Is this animal an octopus?': 'octopus' names none of the 80 COCO and 1,000 ImageNet classes",
        ),
        (
            VQA,
            "Which of these is it: cat, octopus?",
            "'Which of these is it: cat, octopus?': option 'octopus' names none of the 80 COCO and 1,000 "
            "ImageNet classes",
        ),
        (
            VQA,
            "Which of these is it: red car, blue car?",
            "'Which of these is it: red car, blue car?': option 'red car': cannot check 'red'",
        ),
        (
            VQA,
            "Is there a jeep?",
            "'Is there a jeep?': 'jeep' is not a class its detector counts (only the 80 COCO classes)",
        ),
        (
            VQA,
            "How many golden retrievers are there?",
            "'How many golden retrievers are there?': 'golden retrievers' is not a class its detector counts "
            "(only the 80 COCO classes)",
        ),
    ],
)
def test_a_question_outside_the_vocabulary_says_why(spec, text, reason):
    assert read_question(spec, text).out_of_vocabulary == reason
    assert out_of_vocabulary(spec, "vqa", text) == reason


def test_an_imagenet_class_is_asked_about_a_crop_but_not_counted_in_the_frame():
    assert read_question(VQA, "Is this a jeep?").out_of_vocabulary is None  # the classifier knows it
    assert read_question(VQA, "Is there a jeep?").out_of_vocabulary is not None  # the detector does not


@pytest.mark.parametrize(
    ("spec", "function", "text"),
    [
        (None, "detect", "octopus"),  # no vocabulary declared: nothing is checked
        (None, "vqa", "What is this person doing?"),
        (COCO, "detect", None),  # no text
        (COCO, "llm", "octopus"),  # no vocabulary covers prompts or text reading
        (VQA, "ocr", "octopus"),
    ],
)
def test_out_of_vocabulary_checks_only_declared_vocabularies_of_detect_and_vqa(spec, function, text):
    assert out_of_vocabulary(spec, function, text) is None
