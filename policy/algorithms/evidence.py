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
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field


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


class PriorUse(BaseModel):
    """Where one of a policy's models started: the shipped prior it found, and how."""

    site: str
    model: str = Field(description='"choice:<backend>" (a first choice) or "escalation".')
    key: str = Field(description="What the model is to any configuration (its key in a prior file).")
    matched: Literal["backends", "role", "none"] = Field(
        description="backends: a prior built with this site's very backends; role: priors built with other "
        "backends, by each backend's role; none: no shipped prior holds the key, the model starts from the base prior."
    )
    priors: list[str] = Field(default_factory=list, description="The prior files it started from.")


@dataclass(frozen=True)
class Prior:
    """One prior file: the evidence per role key (``cascade.role_key``: what a model is to any
    configuration) and the backends it was built with, per function, cheapest first."""

    name: str
    about: str
    backends: Mapping[str, tuple[str, ...]]
    models: Mapping[str, Evidence]

    def built_for(self, function: str, candidates: Iterable[str]) -> bool:
        """Whether this prior was built with exactly these backends for ``function``."""
        return sorted(self.backends.get(function, ())) == sorted(candidates)


def dump_prior(
    models: Mapping[str, Evidence],
    features: Mapping[str, Iterable[str]],
    about: str,
    backends: Mapping[str, Iterable[str]],
) -> str:
    """A prior file's text: the evidence per key, the feature names it was built over and the
    backends it was built with (per function, cheapest first)."""
    return json.dumps(
        {
            "about": about,
            "features": {role: list(names) for role, names in features.items()},
            "backends": {function: list(names) for function, names in sorted(backends.items())},
            "models": {key: models[key].to_json() for key in sorted(models)},
        },
        indent=1,
    )


def load_prior(text: str, features: Mapping[str, Iterable[str]], name: str = "") -> Prior:
    """The prior in a prior file's text; ValueError when it was built over other features (a
    prior over features that changed since must be rebuilt, not read into the wrong weights)."""
    data = json.loads(text)
    expected = {role: list(names) for role, names in features.items()}
    if data.get("features") != expected:
        raise ValueError("the prior was built over other features; rebuild it")
    return Prior(
        name=name,
        about=str(data.get("about", "")),
        backends={function: tuple(names) for function, names in data.get("backends", {}).items()},
        models={key: Evidence.from_json(value) for key, value in data["models"].items()},
    )


def prior_for(
    priors: Iterable[Prior], function: str, candidates: Iterable[str], key: str
) -> tuple[Evidence | None, list[Prior], str]:
    """The evidence a model under ``key`` at a site of ``function`` over ``candidates`` starts
    from: the priors built with exactly those backends that hold the key when there are any, else
    every prior that holds it (matched by role), else none. Returns the evidence, the priors used
    and how they matched (``PriorUse.matched``)."""
    names = list(candidates)
    holding = [prior for prior in priors if key in prior.models]
    own = [prior for prior in holding if prior.built_for(function, names)]
    used, matched = (own, "backends") if own else (holding, "role") if holding else ([], "none")
    if not used:
        return None, [], matched
    return pooled(*({key: prior.models[key]} for prior in used))[key], used, matched


@cache
def shipped_priors(name: str, features: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[Prior, ...]:
    """The priors shipped for algorithm ``name`` (``policy/priors/<name>.json`` and
    ``<name>-*.json``, read once), in file-name order; none when there are none."""
    folder = resources.files("policy") / "priors"
    if not folder.is_dir():
        return ()
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name == f"{name}.json" or entry.name.startswith(f"{name}-")),
        key=lambda entry: entry.name,
    )
    return tuple(
        load_prior(entry.read_text(), dict(features), entry.name.removesuffix(".json"))
        for entry in files
        if entry.name.endswith(".json")
    )
