"""The deterministic language half of the zoo's models (no torch): noun phrases and questions.

The zoo's models are neuro-symbolic, as in NS-VQA (Yi et al., 2018): a learned network perceives
the objects of an image (box, objectness, and probabilities of shape, colour and texture; size
follows from the box), and this module parses the text of a call and executes it over the
perceived objects. The parser and executor are fixed code shared by small and large models, so
every difference in answers between them comes from the learned perception.

- ``parse_noun("small red circles")`` -> ``ObjectQuery(shape="circle", color="red", size="small")``;
  a word outside the scene vocabulary gives ``None`` (the noun names nothing in these scenes).
- ``answer_question(question, objects, focus)`` answers the questions the program API emits
  ("What is this?", "Is this circle red?", "Which of these is it: a, b?") about ``focus``, and
  whole-frame questions ("Is there a star?", "How many circles are there?", "What color is the
  square?", "Is there a red triangle left of a blue circle?", and the benchmark tracks' compound
  forms: "Is there a red circle and a blue star?", "Are there at least 3 red objects?", "What color
  is the leftmost star?", "What color is the circle that is not striped?", "Which is larger, the red
  circle or the blue square?") over ``objects``. A question it cannot parse is answered
  ``UNKNOWN_ANSWER``; one about an object that is not there, ``NONE_ANSWER`` ("n/a").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from fmprog.scene.vocabulary import (
    ATTRIBUTE_OF_WORD,
    ATTRIBUTES,
    GENERIC_NOUNS,
    SYNONYMS,
    singular,
    size_of,
)

UNKNOWN_ANSWER = "unknown"
NONE_ANSWER = "n/a"  # the referent is not in the image (the benchmarks' label for it)
_ARTICLES = frozenset({"a", "an", "the", "any", "some", "this", "that"})


@dataclass(frozen=True, slots=True)
class ObjectQuery:
    """Attribute constraints a noun phrase puts on an object (None: unconstrained)."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    texture: str | None = None

    def constraints(self) -> dict[str, str]:
        return {
            name: value
            for name, value in (
                ("shape", self.shape),
                ("color", self.color),
                ("size", self.size),
                ("texture", self.texture),
            )
            if value is not None
        }


@dataclass(frozen=True, slots=True)
class PerceivedObject:
    """An object as a model perceived it: box in the image's pixels (y down), objectness score,
    probabilities over each learned attribute's values, and the side of the reference frame that
    defines its size class."""

    box: tuple[float, float, float, float]
    score: float
    probabilities: dict[str, tuple[float, ...]] = field(hash=False)
    frame_side: float

    def label(self, attribute: str) -> str:
        """The most probable value of ``attribute`` ("shape", "color", "texture" or "size")."""
        if attribute == "size":
            x0, y0, x1, y1 = self.box
            return size_of(max(x1 - x0, y1 - y0) / self.frame_side)
        probs = self.probabilities[attribute]
        return ATTRIBUTES[attribute][max(range(len(probs)), key=probs.__getitem__)]

    def probability(self, attribute: str, value: str) -> float:
        """The perceived probability that ``attribute`` is ``value``."""
        if attribute == "size":
            return 1.0 if self.label("size") == value else 0.0
        return self.probabilities[attribute][ATTRIBUTES[attribute].index(value)]

    def matches(self, query: ObjectQuery) -> bool:
        """Whether the most probable attributes satisfy every constraint of ``query``."""
        return all(self.label(attribute) == value for attribute, value in query.constraints().items())

    def match_score(self, query: ObjectQuery) -> float:
        """Objectness times the probability of each constrained attribute value."""
        score = self.score
        for attribute, value in query.constraints().items():
            score *= self.probability(attribute, value)
        return score

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


def certain(
    shape: str, color: str, texture: str, box: tuple[float, float, float, float], frame_side: float
) -> PerceivedObject:
    """A perceived object with certain attributes (ground truth seen through the same executor)."""
    probabilities = {
        attribute: tuple(1.0 if v == value else 0.0 for v in ATTRIBUTES[attribute])
        for attribute, value in (("shape", shape), ("color", color), ("texture", texture))
    }
    return PerceivedObject(box=box, score=1.0, probabilities=probabilities, frame_side=frame_side)


def _words(text: str) -> list[str]:
    text = re.sub(r"[^a-z0-9 ]+", " ", text.lower().replace("-", " "))
    return [SYNONYMS.get(word, word) for word in text.split()]


def parse_noun(text: str) -> ObjectQuery | None:
    """The constraints of a noun phrase ("small red circles", "striped square", "objects"), or
    None when it uses a word outside the scene vocabulary or contradicts itself ("red blue star")."""
    values: dict[str, str] = {}
    words = [w for w in _words(text) if w not in _ARTICLES]
    if not words:
        return None
    for raw in words:
        word = singular(raw)
        if word in GENERIC_NOUNS:
            continue
        attribute = ATTRIBUTE_OF_WORD.get(word)
        if attribute is None or values.get(attribute, word) != word:
            return None
        values[attribute] = word
    return ObjectQuery(**values)


def matching(objects: Sequence[PerceivedObject], query: ObjectQuery) -> list[PerceivedObject]:
    """The objects that satisfy ``query``, best match first."""
    return sorted((o for o in objects if o.matches(query)), key=lambda o: -o.match_score(query))


# -- questions --------------------------------------------------------------------------------

_THIS = r"(?:this|it|that)"
_RELATIONS: dict[str, str] = {
    "to the left of": "left",
    "left of": "left",
    "on the left of": "left",
    "to the right of": "right",
    "right of": "right",
    "on the right of": "right",
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
}
_RELATION_PATTERN = "|".join(sorted((re.escape(r) for r in _RELATIONS), key=len, reverse=True))
_ATTRIBUTE_QUESTION = {"color": "color", "shape": "shape", "size": "size", "texture": "texture", "pattern": "texture"}
_WHERE = r"(?: in (?:the|this) (?:image|picture|frame|scene))?"


def _normalize(question: str) -> str:
    text = question.lower().strip().replace("colour", "color").replace("grey", "gray")
    text = re.sub(r"\s+", " ", text)
    return text.rstrip(" ?.!")


def _related(a: PerceivedObject, b: PerceivedObject, relation: str) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    if relation == "left":
        return ax < bx
    if relation == "right":
        return ax > bx
    if relation == "above":
        return ay < by
    return ay > by


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def answer_question(question: str, objects: Sequence[PerceivedObject], focus: PerceivedObject | None) -> str:
    """The short lower-case answer to ``question``: about ``focus`` (the object the image shows,
    for "this" questions) or over ``objects`` (everything detected in the image)."""
    text = _normalize(question)

    # Questions about the object the image (a crop) shows.
    if match := re.fullmatch(rf"what (color|shape|size|texture|pattern) is {_THIS}(?: [a-z ]+)?", text):
        return focus.label(_ATTRIBUTE_QUESTION[match[1]]) if focus else NONE_ANSWER
    if match := re.fullmatch(rf"what is the (color|shape|size|texture|pattern) of {_THIS}(?: [a-z ]+)?", text):
        return focus.label(_ATTRIBUTE_QUESTION[match[1]]) if focus else NONE_ANSWER
    if re.fullmatch(rf"what (?:is|kind of (?:object|shape) is) {_THIS}(?: [a-z ]+)?", text):
        return focus.label("shape") if focus else NONE_ANSWER
    if match := re.fullmatch(rf"which of these is {_THIS} ?:? (.+)", text):
        return _best_option(match[1], focus)
    if match := re.fullmatch(rf"is {_THIS} (an? )?([a-z ]+)", text):
        return _verify(match[2], bool(match[1]), focus)

    # Questions about the whole image.
    if answer := _compound_question(text, objects):
        return answer
    if match := re.fullmatch(
        rf"(?:is|are) there (?:an?|any|some) ([a-z ]+?) ({_RELATION_PATTERN}) (?:an?|any|the|some) ([a-z ]+?){_WHERE}",
        text,
    ):
        first, second = parse_noun(match[1]), parse_noun(match[3])
        if first is None or second is None:
            return UNKNOWN_ANSWER
        relation = _RELATIONS[match[2]]
        return _yes_no(
            any(
                a is not b and _related(a, b, relation)
                for a in matching(objects, first)
                for b in matching(objects, second)
            )
        )
    if match := re.fullmatch(rf"(?:is|are) there (?:(?:an?|any|some) )?([a-z ]+?){_WHERE}", text):
        query = parse_noun(match[1])
        return UNKNOWN_ANSWER if query is None else _yes_no(bool(matching(objects, query)))
    if match := re.fullmatch(rf"how many ([a-z ]+?)(?: are there| can you see| do you see)?{_WHERE}", text):
        query = parse_noun(match[1])
        return UNKNOWN_ANSWER if query is None else str(len(matching(objects, query)))
    if match := re.fullmatch(rf"what (color|shape|size|texture|pattern) is the ([a-z ]+?){_WHERE}", text):
        query = parse_noun(match[2])
        if query is None:
            return UNKNOWN_ANSWER
        found = matching(objects, query)
        return found[0].label(_ATTRIBUTE_QUESTION[match[1]]) if found else NONE_ANSWER
    return UNKNOWN_ANSWER


_COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_EXTREMES = {
    "leftmost": (0, 1),
    "rightmost": (0, -1),
    "topmost": (1, 1),
    "highest": (1, 1),
    "bottommost": (1, -1),
    "lowest": (1, -1),
}
_A = r"(?:an?|any|some)"


def _side(o: PerceivedObject) -> float:
    x0, y0, x1, y1 = o.box
    return max(x1 - x0, y1 - y0)


def _compound_question(text: str, objects: Sequence[PerceivedObject]) -> str | None:
    """Whole-image questions that combine nouns: conjunction, counts, extremes, negation and
    comparison (the benchmark tracks' forms); None when ``text`` is none of them."""
    if match := re.fullmatch(rf"(?:is|are) there {_A} ([a-z ]+?) and {_A} ([a-z ]+?){_WHERE}", text):
        first, second = parse_noun(match[1]), parse_noun(match[2])
        if first is None or second is None:
            return UNKNOWN_ANSWER
        return _yes_no(bool(matching(objects, first)) and bool(matching(objects, second)))
    if match := re.fullmatch(rf"(?:is|are) there at least (\w+) ([a-z ]+?){_WHERE}", text):
        query = parse_noun(match[2])
        count = int(match[1]) if match[1].isdigit() else _COUNT_WORDS.get(match[1])
        if query is None or count is None:
            return UNKNOWN_ANSWER
        return _yes_no(len(matching(objects, query)) >= count)
    extremes = "|".join(_EXTREMES)
    if match := re.fullmatch(rf"what (color|shape|size|texture|pattern) is the ({extremes}) ([a-z ]+?){_WHERE}", text):
        query = parse_noun(match[3])
        if query is None:
            return UNKNOWN_ANSWER
        found = matching(objects, query)
        if not found:
            return NONE_ANSWER
        axis, sign = _EXTREMES[match[2]]
        extreme = min(found, key=lambda o: sign * o.center[axis])
        return extreme.label(_ATTRIBUTE_QUESTION[match[1]])
    if match := re.fullmatch(
        rf"what (color|shape|size|texture|pattern) is the ([a-z ]+?) that is not ([a-z]+){_WHERE}", text
    ):
        query, excluded = parse_noun(match[2]), parse_noun(match[3])
        if query is None or excluded is None or len(excluded.constraints()) != 1:
            return UNKNOWN_ANSWER
        found = [o for o in matching(objects, query) if not o.matches(excluded)]
        return found[0].label(_ATTRIBUTE_QUESTION[match[1]]) if found else NONE_ANSWER
    if match := re.fullmatch(r"which is (larger|bigger|smaller),? the ([a-z ]+?),? or the ([a-z ]+?)", text):
        first, second = parse_noun(match[2]), parse_noun(match[3])
        if first is None or second is None:
            return UNKNOWN_ANSWER
        a, b = matching(objects, first), matching(objects, second)
        if not a or not b:
            return NONE_ANSWER
        larger = _side(a[0]) >= _side(b[0])
        return match[2] if larger == (match[1] != "smaller") else match[3]
    return None


def _verify(phrase: str, with_article: bool, focus: PerceivedObject | None) -> str:
    """ "Is this {noun} {attribute}" (the last word is the attribute; the noun is the program's name
    for the object), or "Is this a {noun phrase}" (every constraint must hold)."""
    words = [w for w in _words(phrase) if w not in _ARTICLES]
    if not words:
        return UNKNOWN_ANSWER
    if with_article:
        query = parse_noun(" ".join(words))
    else:
        attribute = singular(words[-1])
        query = parse_noun(attribute) if attribute not in GENERIC_NOUNS else None
    if query is None:
        return UNKNOWN_ANSWER
    return _yes_no(focus is not None and focus.matches(query))


def _best_option(options_text: str, focus: PerceivedObject | None) -> str:
    options = [o.strip() for o in re.split(r",| or ", options_text) if o.strip()]
    scored = []
    for option in options:
        query = parse_noun(option)
        if query is not None:
            scored.append((focus.match_score(query) if focus else 0.0, option))
    if not scored or focus is None:
        return UNKNOWN_ANSWER
    return max(scored, key=lambda pair: pair[0])[1]
