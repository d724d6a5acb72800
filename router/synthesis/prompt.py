"""The program synthesis prompt: the program API as the runtime implements it, guidelines, and
few-shot examples, as a chat conversation.

The API section is rendered from the runtime itself: every entry names the object programs call
(``ImagePatch.find``, ``api.distance``...) and shows its real signature (``inspect``), so the prompt
cannot advertise a parameter the runtime lacks; ``tests/router/test_prompt.py`` checks that the
entries cover exactly what the sandbox lets a program reach. The whole prompt is hashed into
``API_VERSION``, which keys the synthesis cache: changing the API, the guidelines or an example
retires every cached program.

The conversation starts with the same system turn for every task and the same examples for every
task of a kind (binary or open), so an engine that keeps its prompt cache between calls (llama.cpp)
evaluates that prefix once, not per task. A repair appends the refused program and its error (with
advice for the errors a small model tends to repeat) and restates the task.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fmprog.backends.functions import FUNCTIONS, PromptLine
from fmprog.engines.chat import Message
from fmprog.program import api
from fmprog.rewards import TaskKind


@dataclass(frozen=True)
class ApiEntry:
    """One name a program can use: how it is written, the runtime object behind it (None for a
    value such as a module or an attribute), and what it does, in a line."""

    written: str
    target: Callable[..., Any] | None
    doc: str

    def render(self) -> str:
        return f"{self.written}{_signature(self.target) if self.target else ''}: {self.doc}"


def _signature(function: Callable[..., Any]) -> str:
    """``(a, b=None) -> str``: the parameters a program may pass (no ``self``, nothing private)."""
    signature = inspect.signature(function)
    shown = [
        p.replace(annotation=inspect.Parameter.empty)
        for p in signature.parameters.values()
        if p.name != "self" and not p.name.startswith("_")
    ]
    text = str(signature.replace(parameters=shown, return_annotation=inspect.Signature.empty))
    returns = signature.return_annotation
    return text if returns is inspect.Signature.empty else f"{text} -> {returns}"


PATCH_ATTRIBUTES = (
    "left",
    "right",
    "lower",
    "upper",
    "width",
    "height",
    "horizontal_center",
    "vertical_center",
    "cropped_image",
)


def _routed_entry(line: PromptLine) -> ApiEntry:
    """A routed call's entry, from its function's line in the table of neural functions."""
    owner, _, name = line.target.rpartition(".")
    return ApiEntry(line.written, getattr(api.ImagePatch if owner == "ImagePatch" else api, name), line.doc)


# What a program can use, in the order the prompt lists it. ``patch.`` entries are ImagePatch
# methods; the rest are names in a program's global namespace. The routed calls' entries come
# from the table of neural functions, in its order.
API: tuple[ApiEntry, ...] = (
    ApiEntry("ImagePatch", api.ImagePatch.__init__, "the image as a patch: the whole image, or the box given."),
    *(_routed_entry(line) for record in FUNCTIONS.values() for line in record.prompt),
    ApiEntry("patch.crop", api.ImagePatch.crop, "a part of the patch, in coordinates relative to it."),
    ApiEntry("patch.overlaps_with", api.ImagePatch.overlaps_with, "whether the patch overlaps that box."),
    ApiEntry("patch.compute_depth", api.ImagePatch.compute_depth, "not supported; never call it."),
    ApiEntry("patch attributes", None, ", ".join(PATCH_ATTRIBUTES) + "."),
    ApiEntry("distance", api.distance, "the distance between two patches (or two numbers)."),
    ApiEntry("to_numeric", api.to_numeric, 'a number from text: "three" -> 3.'),
    ApiEntry("coerce_to_numeric", api.to_numeric, "the same as to_numeric."),
    ApiEntry("bool_to_yesno", api.bool_to_yesno, '"yes" or "no".'),
    ApiEntry("math", None, "the math module."),
)

INSTRUCTIONS = "\n".join(
    [
        "You write a Python function execute_command(image) that answers a task about an image. "
        "Reply with one ```python block and nothing else.",
        "",
        "The API (nothing else exists):",
        *(entry.render() for entry in API),
        "",
        "Rules:",
        "- Keep the exact meaning of the task: find the objects it names with their attributes "
        '("green star"), then check the relation it asks about.',
        "- A is left of B: A.horizontal_center < B.horizontal_center. A is above B: A.vertical_center > "
        "B.vertical_center (y grows upwards). Size: width * height.",
        "- find returns a list of patches: loop over it, or check it is not empty and use patches[0].",
        '- find takes what an object looks like ("large striped red square": size, texture, colour, shape), '
        'never where it is or how it compares ("leftmost", "larger"): find the objects, then sort or compare '
        "them in Python.",
        "- Detectors confuse look-alikes: confirm an attribute the task names with verify_property before you "
        'count on a found object. Sizes are attributes too (verify_property("circle", "large")), not pixel counts.',
        '- A task that asks which object answers with the object as the task names it: "red circle".',
        '- A binary task returns "yes" or "no", also when the object is missing. An open task returns a short '
        'string: a count as str(len(...)), "N/A" when the object it asks about is missing.',
        "- Use llm_query only for knowledge that is not in the image.",
        '- Plain Python only: no imports except math, no classes, no names starting with "_", no open, eval or exec.',
    ]
)


@dataclass(frozen=True)
class Example:
    """A task with the program that answers it (a few-shot turn)."""

    kind: TaskKind
    query: str
    source: str


EXAMPLES: tuple[Example, ...] = (
    Example(
        "binary",
        "Is there a red triangle left of a blue circle?",
        """def execute_command(image):
    image_patch = ImagePatch(image)
    triangles = image_patch.find("red triangle")
    circles = image_patch.find("blue circle")
    for triangle in triangles:
        for circle in circles:
            if triangle.horizontal_center < circle.horizontal_center:
                return "yes"
    return "no"
""",
    ),
    Example(
        "open",
        "How many sides does the blue shape have?",
        """def execute_command(image):
    image_patch = ImagePatch(image)
    shapes = image_patch.find("blue shape")
    if not shapes:
        return "N/A"
    shape = shapes[0].query("What shape is this?")
    return llm_query(f"How many sides does a {shape} have? Answer with a number.", long_answer=False)
""",
    ),
    Example(
        "binary",
        "Are all the circles green?",
        """def execute_command(image):
    image_patch = ImagePatch(image)
    circles = image_patch.find("circle")
    if not circles:
        return "no"
    for circle in circles:
        if not circle.verify_property("circle", "green"):
            return "no"
    return "yes"
""",
    ),
    Example(
        "open",
        "What color is the largest star?",
        """def execute_command(image):
    image_patch = ImagePatch(image)
    stars = image_patch.find("star")
    if not stars:
        return "N/A"
    stars.sort(key=lambda star: star.width * star.height)
    return stars[-1].query("What color is this?")
""",
    ),
    Example(
        "open",
        "What shape is the blue object that is not striped?",
        """def execute_command(image):
    image_patch = ImagePatch(image)
    for patch in image_patch.find("blue object"):
        if not patch.verify_property("object", "striped"):
            return patch.query("What shape is this?")
    return "N/A"
""",
    ),
    Example(
        "binary",
        "Are there more than two circles?",
        """def execute_command(image):
    image_patch = ImagePatch(image)
    circles = image_patch.find("circle")
    return bool_to_yesno(len(circles) > 2)
""",
    ),
    Example(
        "binary",
        "Is there a dotted hexagon?",
        """def execute_command(image):
    image_patch = ImagePatch(image)
    return bool_to_yesno(image_patch.exists("dotted hexagon"))
""",
    ),
    Example(
        "open",
        "How many striped squares are there?",
        """def execute_command(image):
    image_patch = ImagePatch(image)
    squares = image_patch.find("striped square")
    return str(len(squares))
""",
    ),
)

REPAIR = (
    "That program is wrong: {error}\n"
    "Write the whole corrected program for the task ({kind}): {query}\nReply with one ```python block."
)

# Advice added to an error the model tends to repeat, matched by regular expression.
HINTS: tuple[tuple[str, str], ...] = (
    (r"'list\.(\w+)' is not available", "find returns a list of patches: call \\1 on one of them, e.g. patches[0]."),
    (
        r"a binary task must return",
        'Return "yes" or "no" on every path: bool_to_yesno(condition), or "no" for a missing object.',
    ),
    (r"every path of the program must return", 'End the program with a return, e.g. return "N/A".'),
    (
        r"IndexError: list index out of range",
        "find returned an empty list on this image: check it before you index it "
        '(if not patches: return "N/A" for an open task, "no" for a binary one).',
    ),
    (r"is not available to programs|is not allowed|invalid (variable|attribute) name", "Use only the API above."),
)


def fenced(source: str) -> str:
    return f"```python\n{source.strip()}\n```"


def task_turn(query: str, kind: TaskKind) -> Message:
    return {"role": "user", "content": f"Task ({kind}): {query}"}


def messages(query: str, kind: TaskKind) -> list[Message]:
    """The conversation that asks for a program: instructions, the examples of the task's kind as
    earlier turns (a small model copies what it has just seen: an open task's "N/A" in a binary
    program), then the task."""
    conversation: list[Message] = [{"role": "system", "content": INSTRUCTIONS}]
    for example in (e for e in EXAMPLES if e.kind == kind):
        conversation.append(task_turn(example.query, example.kind))
        conversation.append({"role": "assistant", "content": fenced(example.source)})
    conversation.append(task_turn(query, kind))
    return conversation


def hint(error: str, source: str = "") -> str | None:
    """Advice for an error the model tends to repeat, or None. A method or attribute used on a list
    names the list's variable when the program's line shows it."""
    if (match := re.search(r"line (\d+): 'list\.(\w+)' is not available", error)) is not None:
        lines = source.splitlines()
        number, member = int(match[1]), match[2]
        line = lines[number - 1] if 0 < number <= len(lines) else ""
        if (used := re.search(rf"(\w+)\.{member}\b(\s*\()?", line)) is not None:
            name, call = used[1], "(...)" if used[2] else ""
            return f"{name} is a list of patches (find returns a list): use {name}[0].{member}{call} or a loop."
    for pattern, advice in HINTS:
        if match := re.search(pattern, error):
            return match.expand(advice)
    return None


def repair_turns(reply: str, error: str, query: str, kind: TaskKind, source: str = "") -> list[Message]:
    """The turns that show the model its refused reply, why it was refused (with advice when there
    is some), and the task again."""
    advice = hint(error, source)
    explained = f"{error}. {advice}" if advice else error
    return [
        {"role": "assistant", "content": reply},
        {"role": "user", "content": REPAIR.format(error=explained, kind=kind, query=query)},
    ]


def _version() -> str:
    examples = (f"{e.kind}\n{e.query}\n{e.source}" for e in EXAMPLES)
    hints = (f"{pattern}\n{advice}" for pattern, advice in HINTS)
    text = "\n\n".join([INSTRUCTIONS, *examples, REPAIR, *hints])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


API_VERSION = _version()
"""A hash of everything the prompt says (API, rules, examples, repair turn): part of the cache key."""
