"""Held-out evaluation of detect and VQA backends on generated scenes (no torch).

- ``evaluation_set(function, difficulty, n, seed)``: ``n`` items ``(image, text, expected)`` on
  frames whose seeds are disjoint from every training seed.
- ``score(function, predictions, expected)``: detect is F1 at IoU 0.5 over all items (a detection
  is a true positive when it matches a not yet matched ground-truth box of the noun at IoU >= 0.5,
  best score first); VQA is exact-match accuracy of the normalised answer.
- ``evaluate(backend, function, difficulty, n, seed)``: runs any object with ``detect_batch`` /
  ``vqa_batch`` (a local zoo model, an engine, a remote client) or a plain callable
  ``(images, texts) -> predictions`` over the set, in batches, and scores it.

Detect items name present objects at every level of detail ("circle", "red circle", "small
striped circles", "object") and absent ones (expected: no detection). VQA items mix questions
about a crop around one object (what the program API asks of found patches) with whole-frame
questions (existence, counting, attribute of a named object, spatial relations). Expected answers
are computed from the ground truth by the same executor the models use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fmprog.backends.base import box_iou
from fmprog.scene import generate_scene
from fmprog.scene.generator import Difficulty, SceneObject
from fmprog.scene.seeds import ZOO_EVALUATION
from fmprog.scene.vocabulary import (
    COLOR_LOOK_ALIKES,
    COLORS,
    SHAPE_LOOK_ALIKES,
    SHAPES,
    TEXTURES,
    plural,
)
from fmprog.zoo.language import ObjectQuery, PerceivedObject, answer_question, certain

HELD_OUT_SEED_BASE = ZOO_EVALUATION.start  # training draws its frame seeds below this (ZOO_TRAINING)
_SEEDS_PER_SET = 100_000
MATCH_IOU = 0.5


@dataclass(frozen=True, slots=True)
class EvaluationItem:
    """One call to score: an image, the noun or question, and the expected result (a list of
    boxes for detect, an answer string for VQA)."""

    image: np.ndarray
    text: str
    expected: Any
    difficulty: str
    kind: str  # which template produced the item


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A backend's score on one evaluation set."""

    function: str
    difficulty: str
    items: int
    score: float
    seconds: float

    @property
    def latency_per_item_s(self) -> float:
        return self.seconds / max(self.items, 1)


def _as_perceived(obj: SceneObject, frame_side: float, offset: tuple[int, int] = (0, 0)) -> PerceivedObject:
    x0, y0, x1, y1 = obj.box
    box = (float(x0 - offset[0]), float(y0 - offset[1]), float(x1 - offset[0]), float(y1 - offset[1]))
    return certain(obj.shape, obj.color, obj.texture, box, frame_side)


def _satisfies(obj: SceneObject, query: ObjectQuery) -> bool:
    return all(getattr(obj, attribute) == value for attribute, value in query.constraints().items())


def _noun_text(query: ObjectQuery, plural_form: bool, generic: str = "object") -> str:
    words = [w for w in (query.size, query.color, query.texture) if w]
    head = query.shape or generic
    return " ".join([*words, plural(head) if plural_form else head])


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _detect_item(rng: np.random.Generator, objects: Sequence[SceneObject]) -> tuple[str, list[tuple[int, ...]], str]:
    kind = _choice(rng, ("shape", "color_shape", "detailed", "generic", "absent", "absent"))
    if kind == "generic" or not objects:
        query, text = ObjectQuery(), _choice(rng, ("object", "objects", "shape", "shapes"))
    elif kind == "absent":
        for _ in range(20):
            query = ObjectQuery(shape=_choice(rng, SHAPES), color=_choice(rng, COLORS))
            if not any(_satisfies(o, query) for o in objects):
                break
        text = _noun_text(query, plural_form=bool(rng.random() < 0.3))
    else:
        obj = _choice(rng, objects)
        if kind == "shape":
            query = ObjectQuery(shape=obj.shape)
        elif kind == "color_shape":
            query = ObjectQuery(shape=obj.shape, color=obj.color)
        else:
            fields = _choice(
                rng, (("size",), ("texture",), ("size", "color"), ("color", "texture"), ("size", "color", "texture"))
            )
            query = ObjectQuery(shape=obj.shape, **{f: getattr(obj, f) for f in fields})
        text = _noun_text(query, plural_form=bool(rng.random() < 0.3))
    return text, [o.box for o in objects if _satisfies(o, query)], kind


def _crop_item(rng: np.random.Generator, image: np.ndarray, obj: SceneObject) -> tuple[np.ndarray, str, str, str]:
    """A crop around ``obj`` like a detection's (a small random margin) and a question about it."""
    x0, y0, x1, y1 = obj.box
    side = x1 - x0
    margin = rng.uniform(0.0, 0.15, 4) * side
    cx0, cy0 = max(0, round(x0 - margin[0])), max(0, round(y0 - margin[1]))
    cx1, cy1 = min(image.shape[1], round(x1 + margin[2])), min(image.shape[0], round(y1 + margin[3]))
    crop = image[cy0:cy1, cx0:cx1]
    focus = _as_perceived(obj, frame_side=max(crop.shape[0], crop.shape[1], 128), offset=(cx0, cy0))
    kind = _choice(rng, ("what", "color", "shape", "verify_color", "verify_texture", "which_shape", "which_color"))
    if kind == "what":
        question = "What is this?"
    elif kind == "color":
        question = _choice(rng, ("What color is this?", "What colour is this?", f"What color is this {obj.shape}?"))
    elif kind == "shape":
        question = "What shape is this?"
    elif kind == "verify_color":
        color = obj.color if rng.random() < 0.5 else _choice(rng, (COLOR_LOOK_ALIKES[obj.color], _choice(rng, COLORS)))
        question = f"Is this {_choice(rng, (obj.shape, 'shape', 'object'))} {color}?"
    elif kind == "verify_texture":
        question = f"Is this {obj.shape} {_choice(rng, TEXTURES)}?"
    elif kind == "which_shape":
        others = [s for s in SHAPES if s not in (obj.shape, SHAPE_LOOK_ALIKES[obj.shape])]
        options = [obj.shape, SHAPE_LOOK_ALIKES[obj.shape], _choice(rng, others)]
        rng.shuffle(options)
        question = f"Which of these is it: {', '.join(options)}?"
    else:
        others = [c for c in COLORS if c not in (obj.color, COLOR_LOOK_ALIKES[obj.color])]
        options = [f"{c} {obj.shape}" for c in (obj.color, COLOR_LOOK_ALIKES[obj.color], _choice(rng, others))]
        rng.shuffle(options)
        question = f"Which of these is it: {', '.join(options)}?"
    return crop, question, answer_question(question, [focus], focus), kind


def _frame_question(rng: np.random.Generator, objects: Sequence[SceneObject]) -> tuple[str, str]:
    kind = _choice(rng, ("exists", "count", "attribute", "spatial"))
    if kind == "exists" or (len(objects) < 2 and kind == "spatial") or not objects:
        if objects and rng.random() < 0.5:
            obj = _choice(rng, objects)
            query = ObjectQuery(shape=obj.shape, color=obj.color if rng.random() < 0.6 else None)
        else:
            query = ObjectQuery(shape=_choice(rng, SHAPES), color=_choice(rng, COLORS))
        return f"Is there {_a(_noun_text(query, plural_form=False))}?", "exists"
    if kind == "count":
        shape = _choice(rng, objects).shape if rng.random() < 0.8 else _choice(rng, SHAPES)
        return f"How many {plural(shape)} are there?", "count"
    if kind == "attribute":
        obj = _choice(rng, objects)
        for query in (
            ObjectQuery(shape=obj.shape),
            ObjectQuery(shape=obj.shape, texture=obj.texture),
            ObjectQuery(shape=obj.shape, size=obj.size),
        ):
            if sum(_satisfies(o, query) for o in objects) == 1:
                asked = _choice(rng, ("color", "size")) if query.size is None else "color"
                return f"What {asked} is the {_noun_text(query, plural_form=False)}?", "attribute"
        return f"How many {plural(obj.shape)} are there?", "count"
    a, b = (objects[i] for i in rng.choice(len(objects), 2, replace=False))
    relation = _choice(rng, ("left of", "right of", "above", "below"))
    first = ObjectQuery(shape=a.shape, color=a.color)
    second = ObjectQuery(shape=b.shape, color=b.color if rng.random() < 0.5 else None)
    if rng.random() < 0.3:
        second = ObjectQuery(shape=_choice(rng, SHAPES), color=_choice(rng, COLORS))
    return f"Is there {_a(_noun_text(first, False))} {relation} {_a(_noun_text(second, False))}?", "spatial"


def evaluation_set(function: str, difficulty: Difficulty, n: int, seed: int = 0) -> list[EvaluationItem]:
    """``n`` held-out items for ``function`` ("detect" or "vqa") on frames of ``difficulty``;
    the same arguments always give the same items."""
    if function not in ("detect", "vqa"):
        raise ValueError(f"evaluation sets exist for detect and vqa, not {function!r}")
    if not 0 <= n <= _SEEDS_PER_SET:
        raise ValueError(f"n must lie in [0, {_SEEDS_PER_SET}], got {n}")
    rng = np.random.default_rng([seed, len(function), _SEEDS_PER_SET])
    items = []
    for i in range(n):
        scene = generate_scene(ZOO_EVALUATION.seed(seed * _SEEDS_PER_SET + i), difficulty)
        objects = scene.objects
        side = max(scene.image.shape[:2])
        if function == "detect":
            text, boxes, kind = _detect_item(rng, objects)
            items.append(EvaluationItem(scene.image, text, boxes, difficulty, kind))
        elif objects and rng.random() < 0.5:
            crop, question, answer, kind = _crop_item(rng, scene.image, _choice(rng, objects))
            items.append(EvaluationItem(crop, question, answer, difficulty, kind))
        else:
            question, kind = _frame_question(rng, objects)
            truth = [_as_perceived(o, side) for o in objects]
            items.append(
                EvaluationItem(scene.image, question, answer_question(question, truth, None), difficulty, kind)
            )
    return items


def detection_counts(predictions: Sequence[Any], expected: Sequence[Sequence[float]]) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of one item's detections."""
    ordered = sorted(predictions, key=lambda d: -float(d.score))
    unmatched = list(expected)
    tp = 0
    for det in ordered:
        best = max(range(len(unmatched)), key=lambda j: box_iou(det.box, unmatched[j]), default=None)
        if best is not None and box_iou(det.box, unmatched[best]) >= MATCH_IOU:
            unmatched.pop(best)
            tp += 1
    return tp, len(ordered) - tp, len(unmatched)


def normalize_answer(answer: str) -> str:
    return " ".join(str(answer).lower().strip().rstrip(".!?").split())


def score(function: str, predictions: Sequence[Any], expected: Sequence[Any]) -> float:
    """Detect: F1 at IoU 0.5 summed over all items (1.0 when nothing was expected or found).
    VQA: exact-match accuracy of normalised answers."""
    if len(predictions) != len(expected):
        raise ValueError(f"{len(predictions)} predictions for {len(expected)} expected results")
    if function == "detect":
        tp = fp = fn = 0
        for found, boxes in zip(predictions, expected, strict=True):
            a, b, c = detection_counts(found, boxes)
            tp, fp, fn = tp + a, fp + b, fn + c
        return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    if function == "vqa":
        if not expected:
            return 1.0
        return sum(
            normalize_answer(p) == normalize_answer(e) for p, e in zip(predictions, expected, strict=True)
        ) / len(expected)
    raise ValueError(f"no score for function {function!r}")


Runner = Callable[[list[np.ndarray], list[str]], list[Any]]


def as_runner(backend: Any, function: str) -> Runner:
    """A batch callable for ``backend``: its ``detect_batch``/``vqa_batch``, or itself when it is
    already a callable ``(images, texts) -> predictions``."""
    method = getattr(backend, f"{function}_batch", None)
    if method is not None:
        return method
    if callable(backend):
        return backend
    raise TypeError(f"{type(backend).__name__} has no {function}_batch() and is not callable")


def evaluate(
    backend: Any,
    function: str,
    difficulty: Difficulty,
    n: int = 200,
    seed: int = 0,
    batch_size: int = 32,
) -> Evaluation:
    """Score ``backend`` (anything ``as_runner`` accepts) on ``evaluation_set(function, difficulty, n, seed)``."""
    run = as_runner(backend, function)
    items = evaluation_set(function, difficulty, n, seed)
    predictions: list[Any] = []
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):
        batch = items[i : i + batch_size]
        predictions.extend(run([item.image for item in batch], [item.text for item in batch]))
    seconds = time.perf_counter() - start
    value = score(function, predictions, [item.expected for item in items])
    return Evaluation(function=function, difficulty=difficulty, items=len(items), score=value, seconds=seconds)


__all__ = [
    "HELD_OUT_SEED_BASE",
    "Evaluation",
    "EvaluationItem",
    "as_runner",
    "detection_counts",
    "evaluate",
    "evaluation_set",
    "normalize_answer",
    "score",
]
