"""Whether a call is inside a backend's vocabulary: one reading shared by the engines that answer
it, the executor that marks it in the trace, and the check that warns when a program is registered.

``read_noun`` and ``read_question`` return what a backend will act on (the matched classes, the
question's form and arguments) together with the reason the call is out of its vocabulary, if it
is: a noun that matches no class, a noun with words the backend cannot check ("red car" to a
detector), a question of another form, or a question about a noun it does not know. A backend
answers such a call anyway, as well as it can (a detector finds nothing, or the head noun; VQA
says ``unknown``), and the call is marked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fmprog.vision.questions import Question, is_color_options, parse_question
from fmprog.vision.vocabulary import COCO_CLASSES, NounMatch, Vocabulary, VocabularySpec, vocabulary

DETECTOR_CLASSES = frozenset(COCO_CLASSES)


@dataclass(frozen=True, slots=True)
class NounReading:
    """A detector's reading of a noun: its classes (none when unmatched) and why it is out of
    vocabulary (None when it is inside)."""

    match: NounMatch | None
    out_of_vocabulary: str | None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.match.classes if self.match is not None else ()


@dataclass(frozen=True, slots=True)
class QuestionReading:
    """A VQA backend's reading of a question: its form (None when it is none of those answered),
    the matched noun (``is_a``, ``exists``, ``count``; a class ``property``) and why it is out of
    vocabulary."""

    question: Question | None
    match: NounMatch | None
    out_of_vocabulary: str | None


def read_noun(spec: VocabularySpec, noun: str) -> NounReading:
    """What a detector with this vocabulary finds for ``noun``."""
    vocab = vocabulary(spec)
    match = vocab.resolve(noun)
    if match is None:
        return NounReading(None, f"{noun!r} names none of the {_described(vocab)}")
    if not match.exact:
        kept = ", ".join(match.classes) if len(match.classes) <= 3 else f"{len(match.classes)} classes"
        return NounReading(match, f"{noun!r}: finds {kept} but cannot check {' '.join(match.ignored)!r}")
    return NounReading(match, None)


def read_question(spec: VocabularySpec, text: str) -> QuestionReading:
    """What a VQA backend with this vocabulary answers to ``text``."""
    question = parse_question(text)
    forms = spec.questions or ()
    if question is None:
        return QuestionReading(None, None, f"{text!r} is none of the question forms answered ({', '.join(forms)})")
    if question.form not in forms:
        return QuestionReading(question, None, f"{text!r}: this backend does not answer {question.form!r} questions")
    noun: str | None = None
    if question.form in ("is_a", "exists", "count"):
        noun = question.noun
    elif question.form == "property" and question.color is None:
        noun = re.sub(r"^(?:an?|the) ", "", question.attribute or "")  # the class, without its article
    elif question.form == "choice" and not is_color_options(question.options):
        for option in question.options:
            reading = _noun_in(vocabulary(spec), option, whole_frame=False)
            if reading[1] is not None:
                return QuestionReading(question, None, f"{text!r}: option {reading[1]}")
        return QuestionReading(question, None, None)
    if noun is None:
        return QuestionReading(question, None, None)
    match, problem = _noun_in(vocabulary(spec), noun, whole_frame=question.form in ("exists", "count"))
    return QuestionReading(question, match, None if problem is None else f"{text!r}: {problem}")


def _noun_in(vocab: Vocabulary, noun: str, *, whole_frame: bool) -> tuple[NounMatch | None, str | None]:
    match = vocab.resolve(noun)
    if match is None:
        return None, f"{noun!r} names none of the {_described(vocab)}"
    if not match.exact:
        return match, f"{noun!r}: cannot check {' '.join(match.ignored)!r}"
    if whole_frame and not set(match.classes) <= DETECTOR_CLASSES:
        return match, f"{noun!r} is not a class its detector counts (only the 80 COCO classes)"
    return match, None


_DESCRIBED = {
    "coco": "80 COCO classes",
    "person": "person class",
    "coco+imagenet": "80 COCO and 1,000 ImageNet classes",
}


def _described(vocab: Vocabulary) -> str:
    return _DESCRIBED[vocab.spec.nouns]


def out_of_vocabulary(spec: VocabularySpec | None, function: str, text: str | None) -> str | None:
    """Why a call of ``function`` with ``text`` (noun or question) is outside a backend's
    vocabulary, or None when it is inside (or the backend declares none, or the call has no text)."""
    if spec is None or text is None:
        return None
    if function == "detect":
        return read_noun(spec, text).out_of_vocabulary
    if function == "vqa":
        return read_question(spec, text).out_of_vocabulary
    return None
