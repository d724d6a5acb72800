"""The program API: ``ImagePatch`` and the module functions programs call.

Follows the ViperGPT ImagePatch the authors' programs are written against (../shared/PAPER.md).
Coordinates follow that API's documentation: ``left``/``right`` are columns, ``lower``/``upper``
are measured from the *bottom* of the original frame, so a larger ``vertical_center`` is higher in
the picture. ``crop`` takes coordinates relative to the patch it is called on, as in the authors'
code. Every model call goes through the run's ``Invoker``, which charges it to the call site being
executed.
"""

from __future__ import annotations

import math
import re
from typing import Any, Protocol

import numpy as np

from fmprog.backends.config import Function
from fmprog.images import check_frame
from fmprog.program.callsites import is_numeric_name
from fmprog.program.errors import UnsupportedFunction

DEFAULT_QUERY = "What is this?"
NUMBER_QUESTION = "What number is written in the image (in digits)?"


class Invoker(Protocol):
    """What the API needs from a run: model calls charged to the current call site."""

    @property
    def function(self) -> Function:
        """The function of the call site being executed."""
        ...

    def invoke(self, function: Function, *arguments: Any, patch: ImagePatch | None = None) -> Any:
        """One call of ``function`` (its single call's arguments, as in
        ``fmprog.backends.functions``) on ``patch`` (``None`` for a text-only call), charged to the
        current call site; returns its result."""
        ...


class Frame:
    """An image handed to a program: opaque pixels plus the run that owns them. A patch's
    ``cropped_image`` is a frame too; it remembers where its pixels lie in the run's frame
    (``_root``): ``_left`` columns from its left edge, ``_top`` rows from its top."""

    __slots__ = ("_invoker", "_left", "_pixels", "_root", "_top")

    def __init__(self, pixels: np.ndarray, invoker: Invoker, root: Frame | None = None, left: int = 0, top: int = 0):
        self._pixels = pixels
        self._invoker = invoker
        self._root = self if root is None else root
        self._left = left
        self._top = top

    @property
    def height(self) -> int:
        return int(self._pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self._pixels.shape[1])

    def __repr__(self) -> str:
        return f"Frame({self.width}x{self.height})"


def as_pixels(image: object) -> np.ndarray:
    """An image (array or PIL image) as a contiguous ``H x W x 3`` uint8 array: grayscale is
    repeated into three channels and RGBA loses its alpha, then the one frame check
    (``fmprog.images.check_frame``) applies. No copy for a frame that already is one."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    return check_frame(np.ascontiguousarray(array))


class ImagePatch:
    """A crop of the frame around an object, with its box in frame coordinates. A patch ``find``
    returned keeps its detector score in ``_score`` (for deciders; programs cannot read it)."""

    __slots__ = (
        "_frame",
        "_score",
        "height",
        "horizontal_center",
        "left",
        "lower",
        "right",
        "upper",
        "vertical_center",
        "width",
    )

    def __init__(self, image: Frame, left=None, lower=None, right=None, upper=None):
        if not isinstance(image, Frame):
            raise TypeError("ImagePatch() takes the image passed to execute_command (or a patch's cropped_image)")
        if left is None and lower is None and right is None and upper is None:
            box = (0, 0, image.width, image.height)
        else:
            box = (
                0 if left is None else left,
                0 if lower is None else lower,
                image.width if right is None else right,
                image.height if upper is None else upper,
            )
        self._set_box(image, *box)

    def _set_box(self, frame: Frame, left, lower, right, upper, score: float | None = None) -> None:
        left, right = _clip(left, frame.width), _clip(right, frame.width)
        lower, upper = _clip(lower, frame.height), _clip(upper, frame.height)
        if right <= left or upper <= lower:
            raise ValueError("ImagePatch has no area")
        self._frame = frame
        self._score = score
        self.left, self.lower, self.right, self.upper = left, lower, right, upper
        self.width = right - left
        self.height = upper - lower
        self.horizontal_center = (left + right) / 2
        self.vertical_center = (lower + upper) / 2

    @classmethod
    def _at(cls, frame: Frame, left, lower, right, upper, score: float | None = None) -> ImagePatch:
        patch = cls.__new__(cls)
        patch._set_box(frame, left, lower, right, upper, score)
        return patch

    @property
    def _invoker(self) -> Invoker:
        return self._frame._invoker

    def _pixels(self) -> np.ndarray:
        rows = self._frame.height
        return self._frame._pixels[rows - self.upper : rows - self.lower, self.left : self.right]

    def _frame_box(self) -> tuple[int, int, int, int]:
        """``(left, lower, right, upper)`` in the run's frame, also for a patch of a cropped_image."""
        frame = self._frame
        if frame._root is frame:
            return self.left, self.lower, self.right, self.upper
        x, y = frame._left, frame._root.height - frame._top - frame.height  # this frame's lower left corner
        return x + self.left, y + self.lower, x + self.right, y + self.upper

    @property
    def cropped_image(self) -> Frame:
        frame = self._frame
        return Frame(
            self._pixels(),
            self._invoker,
            frame._root,
            frame._left + self.left,
            frame._top + frame.height - self.upper,
        )

    # Routed methods: each runs backend invocations charged to the call site that called it.

    def find(self, object_name: str) -> list[ImagePatch]:
        """Patches of the objects matching ``object_name`` in this patch, best score first."""
        detections = self._invoker.invoke(Function.detect, self._pixels(), str(object_name), patch=self)
        patches = []
        for det in sorted(detections, key=lambda d: -d.score):
            x0, y0, x1, y1 = det.box
            try:
                patches.append(
                    ImagePatch._at(
                        self._frame,
                        self.left + round(x0),
                        self.upper - round(y1),
                        self.left + round(x1),
                        self.upper - round(y0),
                        float(det.score),
                    )
                )
            except ValueError:  # a box with no area inside this patch
                continue
        return patches

    def exists(self, object_name: str) -> bool:
        """Whether ``object_name`` is in this patch (one detection; see callsites for numbers)."""
        object_name = str(object_name)
        if self._invoker.function == Function.vqa and is_numeric_name(object_name):
            wanted = object_name.lower().replace("number", "").strip()
            answer = self._invoker.invoke(Function.vqa, self._pixels(), NUMBER_QUESTION, patch=self)
            try:
                return word_to_num(answer) == word_to_num(wanted)
            except ValueError:
                return False
        return len(self.find(object_name)) > 0

    def verify_property(self, object_name: str, attribute: str) -> bool:
        """Whether the object in this patch has the visual property (one VQA question)."""
        answer = self._invoker.invoke(
            Function.vqa, self._pixels(), property_question(object_name, attribute), patch=self
        )
        return "yes" in answer.lower()

    def query(self, question: str | None = None) -> str:
        """A short answer to a perception question about this patch."""
        question = DEFAULT_QUERY if question is None else str(question)
        return self._invoker.invoke(Function.vqa, self._pixels(), question, patch=self)

    simple_query = query

    def best_text_match(self, option_list: list[str], prefix: str | None = None) -> str:
        """The option that best describes this patch (one multiple-choice VQA question)."""
        options = [str(o) for o in option_list]
        if not options:
            raise ValueError("best_text_match needs at least one option")
        question = choice_question(options, prefix)
        answer = self._invoker.invoke(Function.vqa, self._pixels(), question, patch=self)
        return _closest_option(answer, options)

    def llm_query(self, question: str, long_answer: bool = True) -> str:
        """A text-only answer, for knowledge not in the image."""
        return llm_query(question, long_answer=long_answer, _invoker=self._invoker)

    def read_text(self) -> str:
        """The text written in this patch (a word, a number), "" when there is none."""
        return self._invoker.invoke(Function.ocr, self._pixels(), patch=self)

    # Unrouted helpers.

    def compute_depth(self) -> float:
        raise UnsupportedFunction("compute_depth is not supported by the configured backends")

    def crop(self, left, lower, right, upper) -> ImagePatch:
        """A patch at coordinates relative to this patch, clipped to it."""
        return ImagePatch._at(
            self._frame,
            self.left + max(0, int(left)),
            self.lower + max(0, int(lower)),
            self.left + min(self.width, int(right)),
            self.lower + min(self.height, int(upper)),
        )

    def overlaps_with(self, left, lower, right, upper) -> bool:
        return self.left <= right and self.right >= left and self.lower <= upper and self.upper >= lower

    def __repr__(self) -> str:
        return f"ImagePatch({self.left}, {self.lower}, {self.right}, {self.upper})"


def property_question(object_name: str, attribute: str) -> str:
    """The VQA question ``verify_property`` asks."""
    return f"Is this {object_name} {attribute}?"


def choice_question(options: list[str], prefix: str | None = None) -> str:
    """The VQA question ``best_text_match`` asks."""
    shown = [f"{prefix} {o}" if prefix else o for o in options]
    return f"Which of these is it: {', '.join(shown)}?"


def _clip(value, limit: int) -> int:
    return min(max(int(value), 0), limit)


def llm_query(query: str, context: str | None = None, long_answer: bool = True, *, _invoker: Invoker) -> str:
    """Module-level form used by ViperGPT-style programs; ``context`` is prepended."""
    prompt = str(query) if context is None else f"{context}\n{query}"
    if not long_answer:
        prompt += "\nAnswer in one or two words."
    return _invoker.invoke(Function.llm, prompt)


def distance(patch_a: ImagePatch | float, patch_b: ImagePatch | float) -> float:
    """Distance between the edges of two patches (minus their IoU if they overlap), or |a - b|."""
    if isinstance(patch_a, ImagePatch) and isinstance(patch_b, ImagePatch):
        dx = max(0, patch_a.left - patch_b.right, patch_b.left - patch_a.right)
        dy = max(0, patch_a.lower - patch_b.upper, patch_b.lower - patch_a.upper)
        dist = math.hypot(dx, dy)
        if dist == 0:
            return -_iou(patch_a, patch_b)
        return dist
    return abs(patch_a - patch_b)


def _iou(a: ImagePatch, b: ImagePatch) -> float:
    w = max(0, min(a.right, b.right) - max(a.left, b.left))
    h = max(0, min(a.upper, b.upper) - max(a.lower, b.lower))
    inter = w * h
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union else 0.0


def bool_to_yesno(bool_answer: bool) -> str:
    return "yes" if bool_answer else "no"


_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")


def word_to_num(text: str) -> int | float:
    """``"twenty-one"`` -> 21, ``"7"`` -> 7; ValueError if the text is not a number."""
    text = str(text).strip().lower().rstrip(".")
    if _NUMBER.fullmatch(text):
        return float(text) if "." in text else int(text)
    words = [w for w in re.sub(r"(?<=[a-z])-(?=[a-z])|,", " ", text).split() if w != "and"]
    if not words:
        raise ValueError(f"not a number: {text!r}")
    total = current = 0
    for word in words:
        if word in _UNITS:
            current += _UNITS[word]
        elif word.isdigit():
            current += int(word)
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total += max(current, 1) * _SCALES[word]
            current = 0
        else:
            raise ValueError(f"not a number: {text!r}")
    return total + current


def to_numeric(string, no_string: bool = False):
    """A number from a model's answer: number words, digits amid text, the first value of a range.
    Returns the input unchanged if it holds no number (or raises ValueError if ``no_string``)."""
    if isinstance(string, int | float) and not isinstance(string, bool):
        return string
    text = str(string)
    try:
        return word_to_num(text)
    except ValueError:
        pass
    cleaned = re.sub(r"[^0-9.\-]", "", text)
    negative = cleaned.startswith("-")
    body = cleaned[1:] if negative else cleaned
    body = body.split("-")[0]  # "10-15" -> 10
    try:
        value = float(body) if "." in body else int(body)
    except ValueError:
        if no_string:
            raise ValueError(f"no number in {text!r}") from None
        return string
    return -value if negative else value


def _closest_option(answer: str, options: list[str]) -> str:
    answer_l = answer.lower()
    contained = [o for o in options if o.lower() in answer_l]
    if contained:
        return max(contained, key=len)
    answer_words = set(re.findall(r"\w+", answer_l))
    return max(options, key=lambda o: len(answer_words & set(re.findall(r"\w+", o.lower()))))
