"""Names that exist nowhere: a patch's misspelt method and a call of an undefined function are
refused before the program runs, with the line and the closest valid name; no valid program is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmprog.program import ProgramRejected, compile_program
from router.synthesis.prompt import EXAMPLES

ROOT = Path(__file__).resolve().parents[2]


def problems(source: str) -> list[str]:
    try:
        compile_program(source)
    except ProgramRejected as exc:
        return [str(problem) for problem in exc.problems]
    return []


def test_a_misspelt_method_of_a_patch_is_refused_with_the_closest_name():
    source = (
        "def execute_command(image):\n"
        "    image_patch = ImagePatch(image)\n"
        '    cars = image_patch.fnd("car")\n'
        "    return bool_to_yesno(len(cars) > 0)\n"
    )
    assert problems(source) == ["line 3: ImagePatch has no method 'fnd'; did you mean 'find'?"]


def test_a_call_of_an_undefined_name_is_refused():
    source = (
        "def execute_command(image):\n"
        "    image_patch = ImagePatch(image)\n"
        '    cars = image_patch.find("car")\n'
        "\n"
        "    return count_objects(cars)\n"
    )
    assert problems(source) == ["line 5: 'count_objects' is not defined"]


def test_an_undefined_name_close_to_a_known_one_is_named():
    source = 'def execute_command(image):\n    return bool_to_yesnoo(ImagePatch(image).exists("car"))\n'
    assert problems(source) == ["line 2: 'bool_to_yesnoo' is not defined; did you mean 'bool_to_yesno'?"]
    helper = "def count(p):\n    return 1\n\ndef execute_command(image):\n    return str(cuont(ImagePatch(image)))\n"
    assert problems(helper) == ["line 5: 'cuont' is not defined; did you mean 'count'?"]


def test_a_method_of_imagepatch_called_as_a_function_says_so():
    source = 'def execute_command(image):\n    return bool_to_yesno(exists("car"))\n'
    assert problems(source) == ["line 2: 'exists' is not defined: it is a method of ImagePatch (patch.exists(...))"]


def test_patches_are_known_through_items_loops_crops_and_the_builtins_that_keep_them():
    source = """
def execute_command(image):
    image_patch = ImagePatch(image)
    cars = sorted(image_patch.find("car"), key=lambda c: c.horizontal_center)
    first = cars[0]
    widest = max(cars, key=lambda c: c.width)
    corner = image_patch.crop(0, 0, 10, 10)
    red = [c for c in cars if c.verify_propety("car", "red")]
    for i, car in enumerate(reversed(cars)):
        car.exist("wheel")
    best = None
    for car in cars[1:]:
        if best is None or car.width > best.width:
            best = car
    return first.simple_qery("q") + widest.quer() + corner.read_txt() + red[0].left + best.fnd("x") + corner.widht
"""
    assert problems(source) == [
        "line 8: ImagePatch has no method 'verify_propety'; did you mean 'verify_property'?",
        "line 10: ImagePatch has no method 'exist'; did you mean 'exists'?",
        "line 15: ImagePatch has no method 'simple_qery'; did you mean 'simple_query'?",
        "line 15: ImagePatch has no method 'quer'; did you mean 'query'?",
        "line 15: ImagePatch has no method 'read_txt'; did you mean 'read_text'?",
        "line 15: ImagePatch has no method 'fnd'; did you mean 'find'?",
        "line 15: ImagePatch has no attribute 'widht'; did you mean 'width'?",
    ]


def test_an_attribute_called_as_a_method_is_named_as_such():
    source = 'def execute_command(image):\n    p = ImagePatch(image)\n    return p.width() > 3 and p.exists("x")\n'
    assert problems(source) == ["line 3: ImagePatch's 'width' is an attribute, not a method: drop the ()"]


def test_nested_functions_see_the_patches_of_their_scope():
    source = """
def execute_command(image):
    image_patch = ImagePatch(image)
    def has(name):
        return image_patch.exits(name)
    return bool_to_yesno(has("car"))
"""
    assert problems(source) == ["line 5: ImagePatch has no method 'exits'; did you mean 'exists'?"]


@pytest.mark.parametrize(
    "body",
    [
        # a value that is not always a patch
        'p = ImagePatch(image)\n    p = "text"\n    return p.upper()',
        'p = ImagePatch(image) if image else "x"\n    return p.upper()',
        'p = ImagePatch(image)\n    for p in ["a"]:\n        pass\n    return p.upper()',
        'p = max(ImagePatch(image).find("x"), key=lambda q: q.width, default="none")\n    return p.upper()',
        # a list of patches that gets something else
        'ps = ImagePatch(image).find("x")\n    ps.append("s")\n    return ps[-1].upper()',
        'ps = ImagePatch(image).find("x")\n    ps += ["s"]\n    return ps[-1].upper()',
        'ps = ImagePatch(image).find("x")\n    ps[0] = "s"\n    return ps[0].upper()',
        # ... through another name, an item of another list, or a function of the program
        'ps = ImagePatch(image).find("x")\n    other = ps\n    other.append("s")\n    return ps[-1].upper()',
        'ps = ImagePatch(image).find("x")\n    rows = [ps]\n    rows[0].append("s")\n    return ps[-1].upper()',
        'ps = ImagePatch(image).find("x")\n    a = b = ps\n    a.append("s")\n    return b[-1].upper()',
        'ps = ImagePatch(image).find("x")\n    fill(ps)\n    return ps[-1].upper()',
        'ps = ImagePatch(image).find("x")\n    xs = ps\n    a, xs[0] = "a b".split()\n    return ps[0].upper()',
        'ps = ImagePatch(image).find("x")\n    p = ps[0]\n    rows = [ps]\n    [rows[0].append(p) for p in ["s"]]\n'
        "    return ps[-1].upper()",
        'ps = ImagePatch(image).find("x")\n    def add():\n        ps.append(1)\n    add()\n    return ps[-1].real',
        # the program's own names and parameters are not the API's
        'def crop(p):\n        return "x"\n    return crop(ImagePatch(image)).upper()',
        'sorted = lambda xs: ["s"]\n    return sorted(ImagePatch(image).find("x"))[0].upper()',
        # a method a patch has, and names the sandbox provides
        'p = ImagePatch(image)\n    print(p)\n    return str(p.find("x")[0].cropped_image.width) + str(math.sqrt(4))',
    ],
)
def test_programs_that_could_run_are_not_refused(body: str):
    source = f'def fill(xs):\n    xs.append("s")\n\ndef execute_command(image):\n    {body}\n'
    assert problems(source) == []


def _programs() -> list[tuple[str, str]]:
    """Every program of the examples, the synthesis prompt and the benchmark tracks."""
    programs = [(path.name, path.read_text()) for path in sorted((ROOT / "examples" / "programs").glob("*.py"))]
    programs += [(f"prompt: {example.query}", example.source) for example in EXAMPLES]
    tracks = ROOT / "benchmarks" / "tracks"
    for path in sorted([*tracks.rglob("binary.json"), *tracks.rglob("meta_annotation.json")]):
        for entry in json.loads(path.read_text()):
            source = entry.get("code") or entry.get("program")
            if isinstance(source, str):
                programs.append((f"{path.relative_to(ROOT)}: {entry['query']}", source))
    return programs


def test_every_program_of_the_examples_prompt_and_benchmarks_still_compiles():
    programs = _programs()
    assert len(programs) > 50
    refused = {name: found for name, source in programs if (found := problems(source))}
    assert refused == {}


def test_a_stored_program_compiles_without_the_check():
    source = 'def execute_command(image):\n    p = ImagePatch(image)\n    return p.exists("x") or p.fnd("y")\n'
    assert problems(source) == ["line 3: ImagePatch has no method 'fnd'; did you mean 'find'?"]
    assert compile_program(source, check_names=False).call_sites[0].method == "exists"


def test_name_problems_come_with_the_sandbox_s():
    source = "import os\n\ndef execute_command(image):\n    return tally_of(ImagePatch(image).find('x'))\n"
    assert problems(source) == ["line 1: import of 'os' is not allowed (programs may import: math, typing)",
                                "line 4: 'tally_of' is not defined"]  # fmt: skip
