"""What a real-image backend can see: its vocabulary, declared in the configuration, and how a
program's noun is matched to it.

A backend's ``vocabulary`` block names a class list (``nouns``) and, for VQA, the question forms
it answers (``questions``, see ``fmprog.vision.questions``). A noun is matched to the classes in
this order, and the first that succeeds says how (``NounMatch.how``):

1. ``generic``: "object", "objects", "thing"... stand for every class;
2. ``name``: a class name, singular or plural ("person", "traffic lights", "buses");
3. ``synonym``: an everyday word for one or more classes ("people", "bike", "vehicle"), from the
   built-in table (``fmprog.vision.classes.SYNONYMS``) and the block's own ``synonyms``;
4. ``head``: the noun phrase's head matches by 2 or 3 ("red car" -> car, "person riding a bike"
   -> person): the other words are ``ignored``, which the backend cannot check (so the call is out
   of its vocabulary);
5. ``embedding``: the noun (the phrase without what qualifies it, singular or as written) has a
   WordLlama embedding whose cosine similarity with a class name or synonym reaches
   ``embedding_threshold`` ("motorcar" -> car, "kitty" -> cat); what qualified it is ``ignored``.
   A noun that names a known class outside this vocabulary (by name or synonym) is never matched
   by similarity: "bike" is not a person to a people detector, nor "tiger" a COCO class.

A noun that none of these match is outside the vocabulary: ``resolve`` returns None.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fmprog.vision.classes import COCO_CLASSES, IMAGENET_OF_COCO, SYNONYMS, imagenet_names

NounSet = Literal["coco", "person", "coco+imagenet"]
QuestionFormName = Literal["what", "color", "is_a", "property", "choice", "exists", "count"]
GENERIC_NOUNS = frozenset({"object", "objects", "thing", "things", "item", "items", "something", "anything"})
_ARTICLES = frozenset({"a", "an", "the", "any", "some", "this", "that", "these", "those"})
# Words that end a noun phrase: what follows them ("riding a bike", "in red") qualifies the noun.
QUALIFIERS = frozenset(
    "with without in on at near next beside behind under over wearing holding riding carrying "
    "walking sitting standing running that who which of from".split()
)
_IRREGULAR = {"mice": "mouse", "knives": "knife", "geese": "goose", "teeth": "tooth", "feet": "foot"}
DEFAULT_EMBEDDING_THRESHOLD = 0.6


class VocabularySpec(BaseModel):
    """A backend's vocabulary, as its configuration declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nouns: NounSet = Field(
        description="The classes it knows: coco (the 80 COCO classes), person, or coco+imagenet "
        "(COCO classes, and the 1,000 ImageNet classes by name)."
    )
    synonyms: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="More words for classes of this vocabulary, e.g. {jogger: [person]}."
    )
    embedding_threshold: float | None = Field(
        default=DEFAULT_EMBEDDING_THRESHOLD,
        gt=0,
        le=1,
        description="Least WordLlama cosine similarity for a noun to match a class by meaning; null: never.",
    )
    questions: tuple[QuestionFormName, ...] | None = Field(
        default=None, min_length=1, description="VQA: the question forms answered (see fmprog.vision.questions)."
    )

    @field_validator("synonyms")
    @classmethod
    def _lower(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return {normalize(k): tuple(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _synonyms_name_known_classes(self) -> VocabularySpec:
        if self.synonyms:
            Vocabulary(self)  # raises ValueError naming a synonym's unknown class
        return self

    @functools.cached_property
    def key(self) -> str:
        """The spec as JSON: what its shared ``Vocabulary`` is cached under."""
        return self.model_dump_json()


@dataclass(frozen=True, slots=True)
class NounMatch:
    """The classes a noun names, and how it was matched (see the module docstring)."""

    noun: str
    classes: tuple[str, ...]
    how: Literal["generic", "name", "synonym", "head", "embedding"]
    similarity: float | None = None
    ignored: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        """Whether the backend can check every word of the noun."""
        return not self.ignored


def normalize(text: str) -> str:
    """Lower case, words only, no leading articles: "A Red-Car!" -> "red car"."""
    words = re.sub(r"[^a-z0-9' ]+", " ", str(text).lower().replace("-", " ")).split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def singular_forms(phrase: str) -> tuple[str, ...]:
    """The phrase and the forms its last word may have in the singular ("traffic lights" -> "traffic
    light"; "gloves" -> "glove", "knives" -> "knife"), most likely first."""
    words = phrase.split()
    if not words:
        return (phrase,)
    last = words[-1]
    forms = [last]
    if last in _IRREGULAR:
        forms.append(_IRREGULAR[last])
    elif last.endswith("ies") and len(last) > 4:
        forms.append(last[:-3] + "y")
    elif last.endswith("ves") and len(last) > 4:
        forms += [last[:-1], last[:-3] + "f", last[:-3] + "fe"]
    elif last.endswith(("sses", "shes", "ches", "xes", "zzes", "uses")):
        forms += [last[:-2], last[:-1]]
    elif last.endswith("s") and not last.endswith("ss") and len(last) > 3:
        forms.append(last[:-1])
    return tuple(dict.fromkeys(" ".join([*words[:-1], form]) for form in forms))


class Vocabulary:
    """A ``VocabularySpec`` ready to match nouns (``resolve``); build it with ``vocabulary(spec)``.

    A noun that names a known class outside this vocabulary (by name or synonym among the 80 COCO
    and 1,000 ImageNet classes: "bike" to a people detector, "tiger" to a COCO detector) matches
    nothing here, whatever its similarity to a class here."""

    def __init__(self, spec: VocabularySpec):
        self.spec = spec
        self.classes: tuple[str, ...] = ("person",) if spec.nouns == "person" else COCO_CLASSES
        self._names = _class_names(spec.nouns)
        synonyms = {word: classes for word, classes in SYNONYMS.items() if set(classes) <= set(self.classes)}
        for word, classes in spec.synonyms.items():
            unknown = [c for c in classes if c.lower() not in self._names]
            if unknown:
                raise ValueError(
                    f"vocabulary synonym {word!r} names classes the {spec.nouns} vocabulary does not know: "
                    + ", ".join(unknown)
                )
            synonyms[word] = tuple(dict.fromkeys(n for c in classes for n in self._names[c.lower()]))
        self._synonyms = synonyms
        self._candidates = tuple(dict.fromkeys((*self._names, *self._synonyms)))  # compared by meaning
        self._lock = threading.Lock()
        self._resolved: dict[str, NounMatch | None] = {}

    @property
    def size(self) -> int:
        """How many classes it names."""
        return len(self._names)

    def imagenet_indices(self, classes: Iterable[str]) -> tuple[int, ...]:
        """The ImageNet-1k indices of matched classes (COCO classes through ``IMAGENET_OF_COCO``; a
        name two ImageNet classes share gives both)."""
        names = _imagenet_index()
        indices: list[int] = []
        for c in classes:
            if c in IMAGENET_OF_COCO:
                indices.extend(IMAGENET_OF_COCO[c])
            else:
                indices.extend(names.get(c.lower(), ()))
        return tuple(dict.fromkeys(indices))

    def resolve(self, noun: str) -> NounMatch | None:
        """The classes ``noun`` names in this vocabulary, or None when it names none of them."""
        phrase = normalize(noun)
        with self._lock:
            if phrase in self._resolved:
                return self._resolved[phrase]
        match = self._resolve(phrase)
        with self._lock:
            if len(self._resolved) > 4096:
                self._resolved.clear()
            self._resolved[phrase] = match
        return match

    def _lookup(self, phrase: str) -> tuple[tuple[str, ...], str] | None:
        for form in singular_forms(phrase):
            if form in self._names:
                return self._names[form], "name"
            if form in self._synonyms:
                return self._synonyms[form], "synonym"
        return None

    def _resolve(self, phrase: str) -> NounMatch | None:
        if not phrase:
            return None
        if phrase in GENERIC_NOUNS:
            return NounMatch(phrase, self.classes, "generic")
        found = self._lookup(phrase)
        if found is not None:
            return NounMatch(phrase, found[0], found[1])  # type: ignore[arg-type]
        words = phrase.split()
        cut = next((i for i, w in enumerate(words) if i > 0 and w in QUALIFIERS), len(words))
        qualifier = tuple(words[cut:])
        words = words[:cut]
        if qualifier:
            found = self._lookup(" ".join(words))
            if found is not None:
                return NounMatch(phrase, found[0], "head", ignored=qualifier)
        for start in range(1, len(words)):
            head = " ".join(words[start:])
            found = self._lookup(head)
            if found is not None or head in GENERIC_NOUNS:
                classes = found[0] if found is not None else self.classes
                return NounMatch(phrase, classes, "head", ignored=(*words[:start], *qualifier))
        noun = " ".join(words)
        if self.spec.embedding_threshold is None or _names_another_class(noun, self.spec.nouns):
            return None
        best = max(
            (_embedding_match(form, self._candidates) for form in singular_forms(noun)),
            key=lambda pair: pair[1] if pair is not None else -1.0,
        )
        if best is None or best[1] < self.spec.embedding_threshold:
            return None
        word, similarity = best
        classes = self._names.get(word) or self._synonyms[word]
        return NounMatch(phrase, classes, "embedding", similarity=round(similarity, 3), ignored=qualifier)


@functools.cache
def _imagenet_index() -> dict[str, tuple[int, ...]]:
    """Each ImageNet class name, lower case, with the indices of the classes it names."""
    index: dict[str, tuple[int, ...]] = {}
    for i, name in enumerate(imagenet_names()):
        index[name.lower()] = (*index.get(name.lower(), ()), i)
    return index


@functools.cache
def _class_names(nouns: NounSet) -> dict[str, tuple[str, ...]]:
    """The class names of a noun set, lower case, each with the class it names."""
    classes = ("person",) if nouns == "person" else COCO_CLASSES
    names = {c: (c,) for c in classes}
    if nouns == "coco+imagenet":
        for name in imagenet_names():
            names.setdefault(name.lower(), (name,))
    return names


def _names_another_class(noun: str, nouns: NounSet) -> bool:
    """Whether ``noun`` names, by name or synonym, a COCO or ImageNet class that ``nouns`` lacks."""
    world = _class_names("coco+imagenet")
    own = _class_names(nouns)
    for form in singular_forms(noun):
        named = world.get(form) or SYNONYMS.get(form)
        if named is not None and not any(c.lower() in own for c in named):
            return True
    return False


@functools.lru_cache(maxsize=64)
def _vocabulary(key: str) -> Vocabulary:
    return Vocabulary(VocabularySpec.model_validate_json(key))


def vocabulary(spec: VocabularySpec) -> Vocabulary:
    """The (shared, cached) vocabulary of a spec."""
    return _vocabulary(spec.key)


# -- embedding similarity (WordLlama, 16 MB of static token embeddings from its wheel) ------------


class _Embedder:
    """WordLlama, loaded on first use from its installed package; never downloads."""

    def __init__(self) -> None:
        self._model = None
        self._lock = threading.Lock()
        self._matrices: dict[tuple[str, ...], np.ndarray] = {}

    def model(self):
        with self._lock:
            if self._model is None:
                import wordllama
                from wordllama import WordLlama

                self._model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
            return self._model

    def best(self, phrase: str, candidates: tuple[str, ...]) -> tuple[str, float] | None:
        model = self.model()
        with self._lock:
            matrix = self._matrices.get(candidates)
        if matrix is None:
            matrix = np.asarray(model.embed(list(candidates), norm=True), dtype=np.float32)
            with self._lock:
                self._matrices[candidates] = matrix
        vector = np.asarray(model.embed([phrase], norm=True), dtype=np.float32)[0]
        scores = matrix @ vector
        best = int(np.argmax(scores))
        return candidates[best], float(scores[best])


_EMBEDDER = _Embedder()


def _embedding_match(phrase: str, candidates: tuple[str, ...]) -> tuple[str, float] | None:
    """The candidate closest to ``phrase`` by WordLlama cosine similarity, with it."""
    if not candidates:
        return None
    return _EMBEDDER.best(phrase, candidates)
