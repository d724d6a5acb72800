"""The questions a real-image VQA backend answers honestly, and how each is read.

The program API asks a handful of question shapes (``ImagePatch.query``, ``verify_property``,
``best_text_match``, ``exists`` with a number), and whole-frame questions reach VQA from the
monolithic baseline. A real-image backend built from a classifier, a detector and the pixels can
answer these forms, and only these:

- ``what``: "What is this?", "What kind of animal is this?"; the detector's label of an object
  filling the crop, else the classifier's;
- ``color``: "What color is this?", "What is the color of this car?"; the pixels;
- ``is_a``: "Is this a dog?", "Is it an orange?"; detector and classifier labels;
- ``property``: "Is this car red?" (a colour: the pixels), "Is this animal a dog?" (a class: labels);
- ``choice``: "Which of these is it: red, blue?", "... : cat, dog?"; the pixels, or labels;
- ``exists``: "Is there a person?", "Are there any cars in the image?"; the detector;
- ``count``: "How many people are there?"; the detector.

``parse_question`` returns the form with its noun, property or options, or None for anything
else ("What is this person doing?", "Is the door open?"): such a question is out of scope, and a
backend answers it ``unknown`` rather than guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fmprog.vision.color import color_word
from fmprog.vision.vocabulary import QUALIFIERS, QuestionFormName

UNKNOWN_ANSWER = "unknown"

_THIS = r"(?:this|it|that)"
_WHERE = r"(?: (?:in|on) (?:the|this) (?:image|picture|photo|frame|scene|crop))?"
_KIND = r"(?:kind|type|sort) of (?:[a-z ]+?)"


@dataclass(frozen=True, slots=True)
class Question:
    """A question in one of the forms a real-image backend answers."""

    form: QuestionFormName
    noun: str | None = None  # the object asked about (is_a, exists, count; property: the program's name for it)
    attribute: str | None = None  # property: a colour ("red"), or a class with its article ("a dog")
    options: tuple[str, ...] = ()  # choice

    @property
    def color(self) -> str | None:
        """The colour a ``property`` question asks about, if it asks about one ("is this car red";
        not "is this fruit an orange", which asks about a class)."""
        if not self.attribute or len(self.attribute.split()) != 1:
            return None
        return color_word(self.attribute)


def _normalize(question: str) -> str:
    text = str(question).lower().strip().replace("colour", "color")
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\b(what|that|it)'s\b", r"\1 is", text)
    return text.rstrip(" ?.!")


_NOT_A_NAME = frozenset("at for about called made used like of to".split())


def _names_the_object(words: str | None) -> bool:
    """Whether the words after "what is this" only name the object ("what is this object", "what
    color is this car"), and do not ask something else about it ("what is this man looking at",
    "what is that woman eating"): at most three words, no verb in -ing, no preposition."""
    if not words:
        return True
    found = words.split()
    return len(found) <= 3 and not any(w.endswith("ing") or w in QUALIFIERS or w in _NOT_A_NAME for w in found)


def parse_question(text: str) -> Question | None:
    """The question's form and arguments, or None when it is none of the forms answered."""
    q = _normalize(text)
    what = re.fullmatch(rf"what (?:is|'s) {_THIS}( [a-z ]+?)??{_WHERE}", q) or re.fullmatch(
        rf"what (?:{_KIND}|object|thing|animal|vehicle) is {_THIS}( [a-z ]+)?", q
    )
    if what:
        return Question("what") if _names_the_object(what[1]) else None
    color = re.fullmatch(rf"what color (?:is|are) {_THIS}( [a-z ]+)?", q) or re.fullmatch(
        rf"what is the color of {_THIS}( [a-z ]+)?", q
    )
    if color:  # "what color is this person wearing": the colour of what it wears, read from the pixels
        named = re.sub(r" wearing$", "", color[1] or "")
        return Question("color") if _names_the_object(named) else None
    if match := re.fullmatch(rf"which of these is {_THIS} ?:? (.+)", q):
        options = tuple(o.strip() for o in re.split(r",| or ", match[1]) if o.strip())
        return Question("choice", options=options) if options else None
    if match := re.fullmatch(r"how many ([a-z ]+?)(?: are there| can you see| do you see| are visible)?" + _WHERE, q):
        noun = match[1]
        if " are " in f"{noun} ":  # "how many bottles are on the table": the place qualifies the noun
            head, _, rest = f"{noun} ".partition(" are ")
            noun = f"{head} {rest}".strip()
        return Question("count", noun=noun)
    if match := re.fullmatch(r"(?:is|are) there (?:an? |any |some )?([a-z ]+?)" + _WHERE, q):
        return Question("exists", noun=match[1])
    if match := re.fullmatch(rf"is {_THIS} (an? )?([a-z ]+)", q):
        rest = match[2].strip()
        if match[1]:
            return Question("is_a", noun=rest)
        words = rest.split()
        # "is this animal a dog", "is this fruit an orange": a class, kept with its article
        split = re.fullmatch(r"([a-z ]+?) (an? [a-z ]+)", rest)
        if split is not None and not QUALIFIERS.intersection(split[1].split()):
            return Question("property", noun=split[1], attribute=split[2])
        if len(words) == 1:  # "is this red", "is it dog"
            return Question("property", noun=None, attribute=words[0]) if color_word(words[0]) else None
        if color_word(words[-1]):  # "is this car red": the program's name for it, then the colour
            return Question("property", noun=" ".join(words[:-1]), attribute=words[-1])
        return None
    return None


def is_color_options(options: tuple[str, ...]) -> bool:
    """Whether every option of a choice names a colour."""
    return bool(options) and all(color_word(o) for o in options)
