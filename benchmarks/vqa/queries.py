"""The benchmark's queries over the scene domain, each with its program and exact ground truth.

Two tracks, as in the paper:

- **binary**: 33 compositional yes/no queries (attributes, sizes, textures, spatial relations,
  counts, conjunctions); metric F1 on the rare positives.
- **open**: 40 open-form queries, 8 of each reasoning type (spatial, logical, numerical,
  comparison, knowledge); frames without the object asked about are answered "N/A"; metric
  accuracy. Knowledge queries need ``llm_query``: the image shows a shape or colour, the answer
  is a fact about it (sides of a polygon, a colour's French name).

Every query is a ``QuerySpec``: its text, the program that answers it (hand-written, in the
style of the authors' programs: a detector narrows the frame, VQA checks the candidates), the
ground truth computed from the scene's exact objects, and what makes a frame a look-alike
distractor for it. ``truth`` returns ``None`` for a frame the query is ambiguous on (two objects
tie for "leftmost", two colours answer "the colour of the star"); such frames are left out of
that query's stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from string import Template

from fmprog.rewards import TaskKind
from fmprog.scene.generator import SceneObject
from fmprog.scene.vocabulary import COLOR_LOOK_ALIKES, SHAPE_LOOK_ALIKES, plural

NOT_APPLICABLE = "N/A"
OPEN_TYPES = ("spatial", "logical", "numerical", "comparison", "knowledge")
POLYGON_SIDES = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6}
FRENCH_COLORS = {
    "red": "rouge",
    "orange": "orange",
    "yellow": "jaune",
    "green": "vert",
    "blue": "bleu",
    "purple": "violet",
    "white": "blanc",
    "gray": "gris",
}

Objects = Sequence[SceneObject]


@dataclass(frozen=True)
class QuerySpec:
    """One benchmark query: text, program, ground truth and what a look-alike distractor is."""

    kind: TaskKind
    type: str
    query: str
    program: str
    truth: Callable[[Objects], str | None]
    lookalike: Callable[[Objects], bool]


def monolithic_program(question: str) -> str:
    """The monolithic baseline as a program: one VQA call on the whole frame with the whole question."""
    return f"def execute_command(image):\n    return ImagePatch(image).query({question!r})\n"


# -- ground truth over the scene's exact objects ------------------------------------------------


def having(objects: Objects, **attributes: str) -> list[SceneObject]:
    """The objects whose attributes equal every given value (shape, color, size, texture)."""
    return [o for o in objects if all(getattr(o, name) == value for name, value in attributes.items())]


def _center(o: SceneObject) -> tuple[float, float]:
    x0, y0, x1, y1 = o.box
    return (x0 + x1) / 2, (y0 + y1) / 2


def _side(o: SceneObject) -> int:
    x0, y0, x1, y1 = o.box
    return max(x1 - x0, y1 - y0)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _lookalike_of(objects: Objects, color: str | None = None, shape: str | None = None) -> bool:
    """Whether the frame holds something one detail away from ``color shape``: its shape with the
    look-alike colour, or its colour with the look-alike shape (or just the look-alike, when only
    one attribute is named)."""
    if color and shape:
        return bool(
            having(objects, color=COLOR_LOOK_ALIKES[color], shape=shape)
            or having(objects, color=color, shape=SHAPE_LOOK_ALIKES[shape])
        )
    if color:
        return bool(having(objects, color=COLOR_LOOK_ALIKES[color]))
    return bool(having(objects, shape=SHAPE_LOOK_ALIKES[shape or ""]))


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _program(text: str, **values: object) -> str:
    return Template(text).substitute({k: str(v) for k, v in values.items()})


# -- binary track ---------------------------------------------------------------------------------

_FIND_VERIFY = """def execute_command(image):
    image_patch = ImagePatch(image)
    for patch in image_patch.find("$noun"):
        if patch.verify_property("$head", "$check"):
            return "yes"
    return "no"
"""


def exists(check: str, **attributes: str) -> QuerySpec:
    """ "Is there a {size} {texture} {color} {shape}?": detect the whole noun phrase, then verify
    one of its attributes (``check``) on each candidate with VQA."""
    noun = " ".join(attributes[a] for a in ("size", "texture", "color", "shape") if a in attributes)
    kind_of = {"size": "sizes", "texture": "textures"}
    type_ = next((kind_of[a] for a in ("size", "texture") if a in attributes), "attributes")
    return QuerySpec(
        kind="binary",
        type=type_,
        query=f"Is there {_a(noun)}?",
        program=_program(_FIND_VERIFY, noun=noun, head=attributes["shape"], check=attributes[check]),
        truth=lambda objects: _yes_no(bool(having(objects, **attributes))),
        lookalike=lambda objects: _lookalike_of(objects, attributes.get("color"), attributes["shape"]),
    )


_RELATION_TEST = {
    "left of": "a.horizontal_center < b.horizontal_center",
    "right of": "a.horizontal_center > b.horizontal_center",
    "above": "a.vertical_center > b.vertical_center",  # the program API's y grows upward
    "below": "a.vertical_center < b.vertical_center",
}
_RELATION = """def execute_command(image):
    image_patch = ImagePatch(image)
    firsts = image_patch.find("$c1 $s1")
    if not firsts:
        return "no"
    seconds = image_patch.find("$c2 $s2")
    for a in firsts:
        for b in seconds:
            if $test:
                if a.verify_property("$s1", "$c1") and b.verify_property("$s2", "$c2"):
                    return "yes"
    return "no"
"""


def _related(a: SceneObject, b: SceneObject, relation: str) -> bool:
    (ax, ay), (bx, by) = _center(a), _center(b)
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


def relation(c1: str, s1: str, rel: str, c2: str, s2: str) -> QuerySpec:
    """ "Is there a red triangle left of a blue circle?" (object centres, as the VQA models use)."""

    def truth(objects: Objects) -> str:
        pairs = [(a, b) for a in having(objects, color=c1, shape=s1) for b in having(objects, color=c2, shape=s2)]
        return _yes_no(any(a is not b and _related(a, b, rel) for a, b in pairs))

    return QuerySpec(
        kind="binary",
        type="relations",
        query=f"Is there {_a(c1)} {s1} {rel} {_a(c2)} {s2}?",
        program=_program(_RELATION, c1=c1, s1=s1, c2=c2, s2=s2, test=_RELATION_TEST[rel]),
        truth=truth,
        lookalike=lambda objects: _lookalike_of(objects, c1, s1) or _lookalike_of(objects, c2, s2),
    )


_AT_LEAST = """def execute_command(image):
    image_patch = ImagePatch(image)
    patches = image_patch.find("$noun")
    if len(patches) < $k:
        return "no"
    count = 0
    for patch in patches:
        if patch.verify_property("$head", "$check"):
            count += 1
    return bool_to_yesno(count >= $k)
"""


def at_least(k: int, check: str, **attributes: str) -> QuerySpec:
    """ "Are there at least 3 red objects?" ``attributes`` name one colour or texture, and maybe a shape."""
    head = attributes.get("shape", "object")
    noun = " ".join(attributes[a] for a in ("texture", "color") if a in attributes) + f" {head}"
    return QuerySpec(
        kind="binary",
        type="counts",
        query=f"Are there at least {k} {plural(noun)}?",
        program=_program(_AT_LEAST, noun=noun, k=k, head=head, check=attributes[check]),
        truth=lambda objects: _yes_no(len(having(objects, **attributes)) >= k),
        lookalike=lambda objects: len(having(objects, **attributes)) == k - 1,
    )


_BOTH = """def execute_command(image):
    image_patch = ImagePatch(image)
    firsts = image_patch.find("$c1 $s1")
    if not firsts:
        return "no"
    seconds = image_patch.find("$c2 $s2")
    if not seconds:
        return "no"
    first = any(patch.verify_property("$s1", "$c1") for patch in firsts)
    return bool_to_yesno(first and any(patch.verify_property("$s2", "$c2") for patch in seconds))
"""


def both(c1: str, s1: str, c2: str, s2: str) -> QuerySpec:
    """ "Is there a red circle and a blue square?" """
    return QuerySpec(
        kind="binary",
        type="conjunctions",
        query=f"Is there {_a(c1)} {s1} and {_a(c2)} {s2}?",
        program=_program(_BOTH, c1=c1, s1=s1, c2=c2, s2=s2),
        truth=lambda objects: _yes_no(
            bool(having(objects, color=c1, shape=s1)) and bool(having(objects, color=c2, shape=s2))
        ),
        lookalike=lambda objects: (
            (bool(having(objects, color=c1, shape=s1)) and _lookalike_of(objects, c2, s2))
            or (bool(having(objects, color=c2, shape=s2)) and _lookalike_of(objects, c1, s1))
        ),
    )


def binary_queries() -> list[QuerySpec]:
    """The binary track's 33 queries."""
    return [
        exists("color", color="red", shape="triangle"),
        exists("color", color="blue", shape="circle"),
        exists("color", color="green", shape="star"),
        exists("color", color="yellow", shape="hexagon"),
        exists("color", color="purple", shape="cross"),
        exists("color", color="white", shape="diamond"),
        exists("color", size="large", color="red", shape="circle"),
        exists("color", size="small", color="blue", shape="square"),
        exists("color", size="large", color="green", shape="triangle"),
        exists("color", size="small", color="orange", shape="star"),
        exists("texture", texture="striped", color="red", shape="square"),
        exists("texture", texture="dotted", color="blue", shape="circle"),
        exists("texture", texture="striped", color="green", shape="hexagon"),
        exists("texture", texture="dotted", color="orange", shape="pentagon"),
        relation("red", "triangle", "left of", "blue", "circle"),
        relation("green", "square", "above", "yellow", "star"),
        relation("purple", "circle", "right of", "orange", "square"),
        relation("white", "star", "below", "red", "hexagon"),
        relation("blue", "diamond", "left of", "green", "circle"),
        relation("orange", "triangle", "above", "purple", "square"),
        relation("yellow", "circle", "right of", "red", "star"),
        relation("gray", "square", "below", "blue", "triangle"),
        relation("red", "cross", "left of", "white", "circle"),
        at_least(3, "color", color="red"),
        at_least(3, "color", color="blue"),
        at_least(2, "texture", texture="striped", shape="star"),
        at_least(2, "color", color="green", shape="square"),
        at_least(2, "color", color="yellow", shape="circle"),
        both("red", "circle", "blue", "square"),
        both("green", "triangle", "purple", "star"),
        both("orange", "hexagon", "white", "circle"),
        both("yellow", "square", "gray", "diamond"),
        both("blue", "star", "red", "cross"),
    ]


# -- open-form track ------------------------------------------------------------------------------

_EXTREME_KEY = {
    "leftmost": "patch.horizontal_center",
    "rightmost": "-patch.horizontal_center",
    "topmost": "-patch.vertical_center",
    "bottommost": "patch.vertical_center",
}
_SPATIAL = """def execute_command(image):
    image_patch = ImagePatch(image)
    patches = [patch for patch in image_patch.find("$shape") if patch.verify_property("object", "$shape")]
    if not patches:
        return "N/A"
    patches.sort(key=lambda patch: $key)
    return patches[0].query("What color is this?")
"""


def extreme(position: str, shape: str) -> QuerySpec:
    """ "What color is the leftmost star?" """
    axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[position]

    def truth(objects: Objects) -> str | None:
        found = sorted(having(objects, shape=shape), key=lambda o: sign * _center(o)[axis])
        if not found:
            return NOT_APPLICABLE
        if len(found) > 1 and abs(_center(found[0])[axis] - _center(found[1])[axis]) < 4:
            return None  # too close to call
        return found[0].color

    return QuerySpec(
        kind="open",
        type="spatial",
        query=f"What color is the {position} {shape}?",
        program=_program(_SPATIAL, shape=shape, key=_EXTREME_KEY[position]),
        truth=truth,
        lookalike=lambda objects: _lookalike_of(objects, shape=shape),
    )


_NOT = """def execute_command(image):
    image_patch = ImagePatch(image)
    for patch in image_patch.find("$shape"):
        if not patch.verify_property("$shape", "$texture"):
            return patch.query("What color is this?")
    return "N/A"
"""


def negation(shape: str, texture: str) -> QuerySpec:
    """ "What color is the circle that is not striped?" """

    def truth(objects: Objects) -> str | None:
        colors = {o.color for o in having(objects, shape=shape) if o.texture != texture}
        if not colors:
            return NOT_APPLICABLE
        return colors.pop() if len(colors) == 1 else None

    return QuerySpec(
        kind="open",
        type="logical",
        query=f"What color is the {shape} that is not {texture}?",
        program=_program(_NOT, shape=shape, texture=texture),
        truth=truth,
        lookalike=lambda objects: (
            bool(having(objects, shape=shape, texture=texture)) or _lookalike_of(objects, shape=shape)
        ),
    )


_COUNT = """def execute_command(image):
    image_patch = ImagePatch(image)
    count = 0
    for patch in image_patch.find("$noun"):
        if patch.verify_property("$head", "$check"):
            count += 1
    return str(count)
"""


def count(check: str, **attributes: str) -> QuerySpec:
    """ "How many red circles are there?" (none: "N/A", which the answer "0" matches)."""
    head = attributes.get("shape", "object")
    noun = " ".join(attributes[a] for a in ("texture", "color") if a in attributes) + f" {head}"

    def truth(objects: Objects) -> str:
        n = len(having(objects, **attributes))
        return str(n) if n else NOT_APPLICABLE

    return QuerySpec(
        kind="open",
        type="numerical",
        query=f"How many {plural(noun)} are there?",
        program=_program(_COUNT, noun=noun, head=head, check=attributes[check]),
        truth=truth,
        lookalike=lambda objects: _lookalike_of(objects, attributes.get("color"), attributes.get("shape")),
    )


_LARGER = """def execute_command(image):
    image_patch = ImagePatch(image)
    firsts = image_patch.find("$first")
    seconds = image_patch.find("$second")
    if not firsts or not seconds:
        return "N/A"
    a, b = firsts[0], seconds[0]
    if max(a.width, a.height) >= max(b.width, b.height):
        return "$first"
    return "$second"
"""


def larger(c1: str, s1: str, c2: str, s2: str) -> QuerySpec:
    """ "Which is larger, the red circle or the blue square?" (each named once in the frame, sizes
    at least 15% apart; otherwise the frame is left out)."""
    first, second = f"{c1} {s1}", f"{c2} {s2}"

    def truth(objects: Objects) -> str | None:
        a, b = having(objects, color=c1, shape=s1), having(objects, color=c2, shape=s2)
        if not a or not b:
            return NOT_APPLICABLE
        if len(a) > 1 or len(b) > 1 or abs(_side(a[0]) - _side(b[0])) < 0.15 * max(_side(a[0]), _side(b[0])):
            return None
        return first if _side(a[0]) > _side(b[0]) else second

    return QuerySpec(
        kind="open",
        type="comparison",
        query=f"Which is larger, the {first} or the {second}?",
        program=_program(_LARGER, first=first, second=second),
        truth=truth,
        lookalike=lambda objects: _lookalike_of(objects, c1, s1) or _lookalike_of(objects, c2, s2),
    )


_SIDES = """def execute_command(image):
    image_patch = ImagePatch(image)
    patches = image_patch.find("$color object")
    if not patches:
        return "N/A"
    shape = patches[0].query("What shape is this?")
    answer = image_patch.llm_query("How many sides does a " + shape + " have? Answer with a number.", long_answer=False)
    return str(to_numeric(answer))
"""


def sides(color: str) -> QuerySpec:
    """ "How many sides does the red shape have?" (knowledge: the image shows the shape)."""

    def truth(objects: Objects) -> str | None:
        shapes = {o.shape for o in having(objects, color=color)}
        if not shapes:
            return NOT_APPLICABLE
        if len(shapes) > 1 or next(iter(shapes)) not in POLYGON_SIDES:
            return None
        return str(POLYGON_SIDES[shapes.pop()])

    return QuerySpec(
        kind="open",
        type="knowledge",
        query=f"How many sides does the {color} shape have?",
        program=_program(_SIDES, color=color),
        truth=truth,
        lookalike=lambda objects: _lookalike_of(objects, color=color),
    )


_FRENCH = """def execute_command(image):
    image_patch = ImagePatch(image)
    patches = image_patch.find("$shape")
    if not patches:
        return "N/A"
    color = patches[0].query("What color is this?")
    return image_patch.llm_query("What is the French word for the color " + color + "? Answer with one word.", long_answer=False)
"""  # noqa: E501


def french(shape: str) -> QuerySpec:
    """ "What is the French word for the color of the star?" (knowledge: the image shows the colour)."""

    def truth(objects: Objects) -> str | None:
        colors = {o.color for o in having(objects, shape=shape)}
        if not colors:
            return NOT_APPLICABLE
        return FRENCH_COLORS[colors.pop()] if len(colors) == 1 else None

    return QuerySpec(
        kind="open",
        type="knowledge",
        query=f"What is the French word for the color of the {shape}?",
        program=_program(_FRENCH, shape=shape),
        truth=truth,
        lookalike=lambda objects: _lookalike_of(objects, shape=shape),
    )


def open_queries() -> list[QuerySpec]:
    """The open-form track's 40 queries, 8 per reasoning type."""
    return [
        extreme("leftmost", "pentagon"),
        extreme("rightmost", "triangle"),
        extreme("topmost", "star"),
        extreme("bottommost", "circle"),
        extreme("leftmost", "square"),
        extreme("rightmost", "hexagon"),
        extreme("topmost", "diamond"),
        extreme("bottommost", "cross"),
        negation("circle", "striped"),
        negation("square", "dotted"),
        negation("triangle", "solid"),
        negation("star", "striped"),
        negation("hexagon", "dotted"),
        negation("pentagon", "solid"),
        negation("diamond", "striped"),
        negation("cross", "dotted"),
        count("color", color="red", shape="circle"),
        count("color", color="blue"),
        count("texture", texture="striped", shape="square"),
        count("color", color="green", shape="star"),
        count("color", color="yellow"),
        count("texture", texture="dotted", shape="triangle"),
        count("color", color="white"),
        count("color", color="purple", shape="hexagon"),
        larger("red", "circle", "blue", "square"),
        larger("green", "triangle", "yellow", "star"),
        larger("purple", "hexagon", "orange", "circle"),
        larger("white", "square", "gray", "star"),
        larger("blue", "triangle", "red", "diamond"),
        larger("yellow", "pentagon", "green", "cross"),
        larger("orange", "square", "purple", "circle"),
        larger("gray", "hexagon", "white", "triangle"),
        sides("red"),
        sides("blue"),
        sides("green"),
        sides("yellow"),
        french("circle"),
        french("square"),
        french("triangle"),
        french("star"),
    ]


def all_queries() -> list[QuerySpec]:
    return binary_queries() + open_queries()
