"""The zoo's models by name: which function each serves and the shape of its network (no torch).

Small and large models differ in input resolution and width: a small model sees the frame at half
resolution with far fewer channels, so it is cheap and reliable on large clean objects and loses
small, cluttered, noisy ones.

The detect and VQA models of one size share one trained perception network (``NETWORKS``): the
CPU training budget of this project allows two networks, not four. They differ in the language
layer they run over it (noun phrases for detect, questions for VQA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ZooFunction = Literal["detect", "vqa"]


@dataclass(frozen=True, slots=True)
class Architecture:
    """A perception network's shape: input resolution and widths."""

    input_size: int  # side of the (square) network input, pixels
    stem_width: int  # channels after the first (stride 2) convolution
    width: int  # channels of the stride-4 trunk
    dilations: tuple[int, ...]  # one residual block per entry, with that dilation


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A trained perception network: its name (the weights file's stem), shape, seed and steps."""

    name: str
    arch: Architecture
    seed: int
    steps: int


NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec("perception-small", Architecture(64, 12, 24, (1, 2)), seed=11, steps=3000),
        NetworkSpec("perception-large", Architecture(128, 24, 48, (1, 2, 4)), seed=12, steps=900),
    )
}


@dataclass(frozen=True, slots=True)
class ZooEntry:
    """One zoo model: its name, the function it serves, and the network it runs."""

    name: str
    function: ZooFunction
    network: str

    @property
    def spec(self) -> NetworkSpec:
        return NETWORKS[self.network]

    @property
    def arch(self) -> Architecture:
        return self.spec.arch


ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry("detect-small", "detect", "perception-small"),
        ZooEntry("detect-large", "detect", "perception-large"),
        ZooEntry("vqa-small", "vqa", "perception-small"),
        ZooEntry("vqa-large", "vqa", "perception-large"),
    )
}


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``; KeyError naming the known models otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r} (known: {', '.join(ZOO)})") from None
