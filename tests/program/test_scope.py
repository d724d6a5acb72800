"""What a program asks that its backends cannot see, known before it runs
(``fmprog.program.scope``), over the detectors and VQA backends of fmprog/configs/real.yaml and a
people-only HOG detector."""

from __future__ import annotations

import pytest

from fmprog.backends import BackendSpec, Function
from fmprog.program import CallSite, compile_program
from fmprog.program.api import DEFAULT_QUERY, NUMBER_QUESTION
from fmprog.program.scope import scope_warnings, site_scope, site_text, unseen, usable_backends, warning_line
from tests.real_backends import classifier_specs, hog_spec, real_catalog, yolo_specs

DETECT = [hog_spec(), *yolo_specs()]  # HOG (people only), then YOLOv3-tiny at 320 and 608 px (COCO)
VQA = list(classifier_specs())  # EfficientNet-Lite0 and Lite2 (COCO + ImageNet, every question form)
HOG = DETECT[0].name
YOLO = [spec.name for spec in DETECT[1:]]
ALL = [HOG, *YOLO]
CLASSIFIERS = [spec.name for spec in VQA]
FORMS = "(what, color, is_a, property, choice, exists, count)"


def site(call: str) -> CallSite:
    """The one call site of a program that makes ``call`` on a patch ``p`` (``n`` is a variable)."""
    program = compile_program(f'def execute_command(image):\n    p, n = ImagePatch(image), "car"\n    return {call}\n')
    [only] = program.call_sites
    return only


def names(specs: list[BackendSpec]) -> list[str]:
    return [spec.name for spec in specs]


def test_these_are_the_detect_and_vqa_backends_of_real_yaml():
    real = real_catalog()
    assert sorted(names(real.for_function(Function.detect))) == sorted(names(yolo_specs()))  # no HOG in it
    assert sorted(names(real.for_function(Function.vqa))) == sorted(CLASSIFIERS)


@pytest.mark.parametrize(
    ("call", "text"),
    [
        ('p.find("person")', "person"),
        ('p.find(object_name="dog")', "dog"),
        ('p.exists("bicycle")', "bicycle"),
        ('p.exists("3")', NUMBER_QUESTION),  # a numeric name is a VQA site asking the number question
        ('p.exists("number 7")', NUMBER_QUESTION),
        ('p.verify_property("car", "red")', "Is this car red?"),
        ('p.verify_property(object_name="car", attribute="a taxi")', "Is this car a taxi?"),
        ('p.query("What color is this?")', "What color is this?"),
        ('p.query(question="Is this a dog?")', "Is this a dog?"),
        ("p.query()", DEFAULT_QUERY),
        ("p.query(None)", DEFAULT_QUERY),
        ('p.simple_query("How many cats are there?")', "How many cats are there?"),
        ('p.best_text_match(["cat", "dog"])', "Which of these is it: cat, dog?"),
        ('p.best_text_match(["cat", "dog"], "a")', "Which of these is it: a cat, a dog?"),
        ('p.best_text_match(("cat", "dog"), prefix="a")', "Which of these is it: a cat, a dog?"),
    ],
)
def test_site_text_rebuilds_what_a_literal_site_sends(call, text):
    assert site_text(site(call)) == text


@pytest.mark.parametrize(
    "call",
    [
        "p.find(n)",
        'p.find(n + "s")',
        'p.exists(f"{n}")',
        "p.verify_property(n, 'red')",
        'p.verify_property("car", n)',
        'p.query(f"Is this a {n}?")',
        "p.simple_query(n)",
        'p.best_text_match([n, "dog"])',
        'p.best_text_match(["cat", "dog"], n)',
        'p.best_text_match("cat")',  # not a list of options
        "p.find(3)",  # not a string
        'p.llm_query("What is the capital of France?")',  # prompts: no vocabulary covers them
        "p.read_text()",
    ],
)
def test_site_text_is_none_for_computed_arguments_and_for_llm_and_ocr(call):
    assert site_text(site(call)) is None


def test_site_scope_says_for_each_backend_why_a_literal_site_is_outside_it():
    assert site_scope(site('p.find("car")'), DETECT) == {
        HOG: "'car' names none of the person class",
        YOLO[0]: None,
        YOLO[1]: None,
    }
    # a computed noun is not known before the program runs
    assert site_scope(site("p.find(n)"), DETECT) == dict.fromkeys(names(DETECT))


@pytest.mark.parametrize(
    ("call", "usable"),
    [
        ('p.find("person")', ALL),
        ('p.find("people")', ALL),
        ('p.find("car")', YOLO),
        ('p.exists("vehicle")', YOLO),
        ('p.find("octopus")', ALL),  # none can: all of them
        ("p.find(n)", ALL),  # not known: all of them
    ],
)
def test_usable_backends_keeps_the_detectors_that_can_see_the_noun(call, usable):
    assert names(usable_backends(site(call), DETECT)) == usable


def test_unseen_is_empty_when_any_backend_can_see_the_site():
    assert unseen(site('p.find("car")'), DETECT) == {}
    assert unseen(site("p.find(n)"), DETECT) == {}
    assert unseen(site('p.query("What is this?")'), VQA) == {}
    assert unseen(site('p.find("octopus")'), []) == {}
    assert usable_backends(site('p.find("octopus")'), []) == []


@pytest.mark.parametrize(
    ("call", "specs", "reasons"),
    [
        (
            'p.find("octopus")',
            DETECT,
            {
                HOG: "'octopus' names none of the person class",
                YOLO[0]: "'octopus' names none of the 80 COCO classes",
                YOLO[1]: "'octopus' names none of the 80 COCO classes",
            },
        ),
        (
            'p.query("What is this person doing?")',
            VQA,
            dict.fromkeys(
                CLASSIFIERS,
                f"'What is this person doing?' is none of the question forms answered {FORMS}",
            ),
        ),
        (
            'p.exists("3")',
            VQA,
            dict.fromkeys(CLASSIFIERS, f"{NUMBER_QUESTION!r} is none of the question forms answered {FORMS}"),
        ),
        (
            'p.verify_property("person", "riding a bicycle")',
            VQA,
            dict.fromkeys(
                CLASSIFIERS,
                f"'Is this person riding a bicycle?' is none of the question forms answered {FORMS}",
            ),
        ),
    ],
)
def test_unseen_names_every_backend_with_why_when_none_can_see_the_site(call, specs, reasons):
    assert unseen(site(call), specs) == reasons
    assert names(usable_backends(site(call), specs)) == names(specs)  # called anyway, and marked


def test_a_backend_without_a_vocabulary_sees_everything():
    open_detector = BackendSpec(name="detect-open", function=Function.detect, cost=1)
    assert unseen(site('p.find("octopus")'), [*DETECT, open_detector]) == {}
    assert names(usable_backends(site('p.find("octopus")'), [*DETECT, open_detector])) == ["detect-open"]


def test_warning_line_groups_the_backends_that_share_a_reason():
    octopus = site('p.find("octopus")')
    assert warning_line(octopus, unseen(octopus, DETECT)) == (
        f"line 3: find@3:13: 'octopus' names none of the person class ({HOG}); "
        f"'octopus' names none of the 80 COCO classes ({YOLO[0]}, {YOLO[1]})"
    )


def test_scope_warnings_name_each_site_no_backend_can_see():
    source = """
def execute_command(image):
    p = ImagePatch(image)
    people = p.find("person")
    cars = p.find("car")
    octopi = p.find("octopus")
    red = p.find("red car")
    doing = p.query("What is this person doing?")
    kind = p.query()
    computed = p.find(kind)
    capital = p.llm_query("What is the capital of France?")
    return doing
"""
    program = compile_program(source)
    backends = {Function.detect: DETECT, Function.vqa: VQA, Function.llm: real_catalog().for_function(Function.llm)}
    warnings = scope_warnings([(s, backends[s.function]) for s in program.call_sites])
    sites = {s.line: s.id for s in program.call_sites}
    assert [w.split(": ")[0:2] for w in warnings] == [["line 6", sites[6]], ["line 7", sites[7]], ["line 8", sites[8]]]
    assert sites[6] == "find@6:15"
    assert f"'red car': finds car but cannot check 'red' ({YOLO[0]}, {YOLO[1]})" in warnings[1]
    assert f"'red car' names none of the person class ({HOG})" in warnings[1]
    assert warnings[2].endswith(f"is none of the question forms answered {FORMS} ({', '.join(CLASSIFIERS)})")
