"""Loaded zoo models: a trained perception network with the deterministic language layer.

``ZooDetector.detect_batch(images, nouns)`` and ``ZooVQA.vqa_batch(images, questions)`` run one
forward pass for the whole batch, then parse each noun or question and execute it over that
image's perceived objects (see ``fmprog.zoo.language``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmprog.backends.base import Detection, box_iou
from fmprog.zoo.catalog import Architecture, zoo_entry
from fmprog.zoo.language import PerceivedObject, answer_question, matching, parse_noun
from fmprog.zoo.network import Candidate, PerceptionNet, decode, parameter_count, prepare_inputs

WEIGHTS_DIR = Path(__file__).parent / "weights"  # same as fmprog.zoo.WEIGHTS_DIR
DETECTION_THRESHOLD = 0.3  # objectness at which a heatmap peak counts as an object
NMS_IOU = 0.5  # peaks whose boxes overlap more than this are one object


def weights_path(name: str) -> Path:
    """Where the committed weights of zoo model ``name`` (its perception network) live."""
    return WEIGHTS_DIR / f"{zoo_entry(name).network}.pt"


def _perceived(candidate: Candidate, frame_side: float) -> PerceivedObject:
    return PerceivedObject(
        box=candidate.box,
        score=candidate.score,
        probabilities={"shape": candidate.shape, "color": candidate.color, "texture": candidate.texture},
        frame_side=frame_side,
    )


class ZooModel:
    """A zoo model: one trained ``PerceptionNet`` on a device."""

    def __init__(self, name: str, function: str, net: PerceptionNet, device: str = "cpu"):
        self.name = name
        self.function = function
        self.net = net.eval()
        self.device = "cpu"
        self.to(device)

    @property
    def parameters(self) -> int:
        """Number of learned parameters (the zoo's cost is this in millions)."""
        return parameter_count(self.net)

    @property
    def input_size(self) -> int:
        return self.net.arch.input_size

    def to(self, device: str) -> ZooModel:
        """Move the network to ``device`` ("cpu", "cuda", "cuda:1", ...)."""
        self.net.to(device)
        self.device = str(device)
        return self

    def perceive(self, images: Sequence[np.ndarray]) -> list[tuple[list[PerceivedObject], PerceivedObject | None]]:
        """For each image (one forward pass for all): the objects perceived in it, and the object
        it shows (the best peak weighted by how well its box covers the image; None if no peak)."""
        if not images:
            return []
        inputs, placements = prepare_inputs(images, self.input_size, self.device)
        with torch.inference_mode():
            outputs = self.net(inputs)
        results = []
        for candidates, place in zip(decode(outputs, self.input_size, placements), placements, strict=True):
            kept: list[Candidate] = []
            for candidate in candidates:  # already sorted by score
                if all(box_iou(candidate.box, other.box) <= NMS_IOU for other in kept):
                    kept.append(candidate)
            frame = (0.0, 0.0, float(place.width), float(place.height))
            objects = [_perceived(c, place.canvas_side) for c in kept if c.score >= DETECTION_THRESHOLD]
            focus = max(kept, key=lambda c: c.score * box_iou(c.box, frame), default=None)
            results.append((objects, None if focus is None else _perceived(focus, place.canvas_side)))
        return results

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "function": self.function, "parameters": self.parameters, "device": self.device}


class ZooDetector(ZooModel):
    """Text-conditioned detection over the scene vocabulary."""

    def detect_batch(self, images: Sequence[np.ndarray], nouns: Sequence[str]) -> list[list[Detection]]:
        """For each image, the objects matching its noun (best first); a noun outside the scene
        vocabulary finds nothing."""
        if len(images) != len(nouns):
            raise ValueError(f"detect_batch got {len(images)} images and {len(nouns)} nouns")
        results: list[list[Detection]] = []
        for (objects, _focus), noun in zip(self.perceive(images), nouns, strict=True):
            query = parse_noun(str(noun))
            if query is None:
                results.append([])
                continue
            results.append(
                [
                    Detection(box=tuple(round(v, 2) for v in o.box), score=round(o.match_score(query), 4))  # type: ignore[arg-type]
                    for o in matching(objects, query)
                ]
            )
        return results

    def detect(self, image: np.ndarray, noun: str) -> list[Detection]:
        return self.detect_batch([image], [noun])[0]


class ZooVQA(ZooModel):
    """Visual question answering: learned perception, then the question executed over it."""

    def vqa_batch(self, images: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        """For each image, the short lower-case answer to its question ("unknown" when the question
        cannot be parsed)."""
        if len(images) != len(questions):
            raise ValueError(f"vqa_batch got {len(images)} images and {len(questions)} questions")
        return [
            answer_question(str(question), objects, focus)
            for (objects, focus), question in zip(self.perceive(images), questions, strict=True)
        ]

    def vqa(self, image: np.ndarray, question: str) -> str:
        return self.vqa_batch([image], [question])[0]


def build_model(name: str, function: str, net: PerceptionNet, device: str = "cpu") -> ZooModel:
    """Wrap a network as the zoo model class of its function."""
    cls = {"detect": ZooDetector, "vqa": ZooVQA}.get(function)
    if cls is None:
        raise ValueError(f"zoo models serve detect or vqa, not {function!r}")
    return cls(name, function, net, device)


def save_weights(network: str, net: PerceptionNet, path: Path) -> None:
    """Write a network's state dict with what is needed to rebuild it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = net.arch
    torch.save(
        {
            "network": network,
            "arch": {
                "input_size": arch.input_size,
                "stem_width": arch.stem_width,
                "width": arch.width,
                "dilations": list(arch.dilations),
            },
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        },
        path,
    )


def load_network(path: str | Path) -> PerceptionNet:
    """Load a perception network from a weights file written by ``save_weights``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no zoo weights file at {path}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    try:
        arch = Architecture(
            input_size=int(saved["arch"]["input_size"]),
            stem_width=int(saved["arch"]["stem_width"]),
            width=int(saved["arch"]["width"]),
            dilations=tuple(int(d) for d in saved["arch"]["dilations"]),
        )
        net = PerceptionNet(arch)
        net.load_state_dict(saved["state_dict"])
        return net
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a zoo weights file: {exc}") from exc


def load_model(name: str, device: str = "cpu", weights: str | Path | None = None) -> ZooModel:
    """Load zoo model ``name`` ("detect-small", "detect-large", "vqa-small", "vqa-large") from the
    weights shipped in the package, or from the file ``weights`` (a network of the same shape)."""
    entry = zoo_entry(name)  # KeyError for unknown names
    path = Path(weights) if weights is not None else weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"zoo model {name!r} has no weights at {path}; train it with scripts/train_zoo.py")
    net = load_network(path)
    if net.arch != entry.arch:
        raise ValueError(f"{path} holds a network of shape {net.arch}, not the {entry.arch} of {name!r}")
    return build_model(name, entry.function, net, device)
