"""Evidence: the sufficient statistics of a Bayesian linear model's data, to pool across programs.

A model fitted to observations ``(x, y)`` with a Gaussian prior and known noise is determined by
the prior and ``X'X``, ``X'y`` and the count; these add up across models that score the same
features on the same scale. ``cascade`` keeps one ``Evidence`` per model key next to each of its
models, so the policy service can give a new program the summed evidence of every program before
it, and a prior built offline (``policy/priors``) is the same kind of record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np


@dataclass
class Evidence:
    """``X'X``, ``X'y`` and the count of the observations one model has seen."""

    xtx: np.ndarray
    xty: np.ndarray
    n: int = 0

    @classmethod
    def empty(cls, dim: int) -> Evidence:
        return cls(np.zeros((dim, dim)), np.zeros(dim))

    @property
    def dim(self) -> int:
        return len(self.xty)

    def add(self, x: np.ndarray, y: float) -> None:
        self.xtx += np.outer(x, x)
        self.xty += y * x
        self.n += 1

    def __add__(self, other: Evidence) -> Evidence:
        if other.dim != self.dim:
            raise ValueError(f"evidence over {other.dim} features cannot be added to evidence over {self.dim}")
        return Evidence(self.xtx + other.xtx, self.xty + other.xty, self.n + other.n)

    def copy(self) -> Evidence:
        return Evidence(self.xtx.copy(), self.xty.copy(), self.n)

    def to_json(self) -> dict[str, Any]:
        return {"xtx": self.xtx.tolist(), "xty": self.xty.tolist(), "n": self.n}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Evidence:
        xtx, xty = np.asarray(data["xtx"], np.float64), np.asarray(data["xty"], np.float64)
        if xtx.shape != (len(xty), len(xty)) or not (np.isfinite(xtx).all() and np.isfinite(xty).all()):
            raise ValueError("evidence needs a finite square X'X matching X'y")
        return cls(xtx, xty, int(data["n"]))


def pooled(*sources: Mapping[str, Evidence]) -> dict[str, Evidence]:
    """The evidence of several sources summed per model key."""
    total: dict[str, Evidence] = {}
    for source in sources:
        for key, evidence in source.items():
            total[key] = total[key] + evidence if key in total else evidence.copy()
    return total


def dump_prior(models: Mapping[str, Evidence], features: Mapping[str, Iterable[str]], about: str) -> str:
    """A prior file's text: the evidence per model key and the feature names it was built over."""
    return json.dumps(
        {
            "about": about,
            "features": {role: list(names) for role, names in features.items()},
            "models": {key: models[key].to_json() for key in sorted(models)},
        },
        indent=1,
    )


def load_prior(text: str, features: Mapping[str, Iterable[str]]) -> dict[str, Evidence]:
    """The evidence in a prior file's text; ValueError when it was built over other features (a
    prior over features that changed since must be rebuilt, not read into the wrong weights)."""
    data = json.loads(text)
    expected = {role: list(names) for role, names in features.items()}
    if data.get("features") != expected:
        raise ValueError("the prior was built over other features; rebuild it")
    return {key: Evidence.from_json(value) for key, value in data["models"].items()}


@cache
def shipped_prior(name: str, features: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, Evidence]:
    """A prior shipped in ``policy/priors/<name>.json`` (read once); empty when there is none."""
    path = resources.files("policy") / "priors" / f"{name}.json"
    if not path.is_file():
        return {}
    return load_prior(path.read_text(), dict(features))
