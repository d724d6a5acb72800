"""The propensity of a Thompson-sampling decision: how likely each backend is to be the argmax.

A Thompson-sampling policy draws one score per backend, independently ``N(m_a, s_a^2)``, and
takes the argmax. Backend ``a`` wins with probability

    ``P_a = integral of phi((t - m_a) / s_a) / s_a * prod_{b != a} Phi((t - m_b) / s_b) dt``,

which :func:`argmax_probabilities` computes for all backends at once by Gauss-Legendre
quadrature on panels cut at every backend's mean and a few multiples of its spread, so that each
factor is smooth within a panel however different the spreads are (absolute error below 1e-6);
two backends have the closed form ``P_0 = Phi((m_0 - m_1) / sqrt(s_0^2 + s_1^2))``. A backend
with no spread (``s_a = 0``) scores its mean exactly: it wins when every other draw falls below
it, and a draw beats it whenever it lands above it. Among backends without spread, ties go to
the first, as ``np.argmax`` gives them. Non-finite means or spreads put everything on the first
largest mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import numpy as np

from fmprog.contract import ScoreSpread

NODES = 6
"""Gauss-Legendre nodes per panel."""
CUTS = np.array([-8.0, -5.0, -3.0, -1.5, -0.5, 0.5, 1.5, 3.0, 5.0, 8.0])
"""Panel edges around every backend's mean, in its spreads (beyond 8: a density below 1e-15)."""

# Abramowitz and Stegun 26.2.17: the upper tail Q(z) = phi(z) * poly(1 / (1 + p z)) for z >= 0,
# absolute error below 7.5e-8
_TAIL_P = 0.2316419
_TAIL = (1.330274429, -1.821255978, 1.781477937, -0.356563782, 0.319381530)
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@cache
def _legendre() -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(NODES)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """``Phi(z)``, the standard normal distribution function, elementwise (error below 1e-7)."""
    with np.errstate(over="ignore", under="ignore"):
        return _density_and_cdf(np.asarray(z, dtype=np.float64))[1]


def _density_and_cdf(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``exp(-z^2 / 2)`` (the standard normal density times ``sqrt(2 pi)``) and ``Phi(z)``."""
    bell = np.exp(-0.5 * z * z)
    t = 1.0 / (1.0 + _TAIL_P * np.abs(z))
    poly = _TAIL[0] * t
    for c in _TAIL[1:]:
        poly += c
        poly *= t
    tail = bell * poly / _SQRT_2PI
    return bell, np.where(z >= 0, 1.0 - tail, tail)


def argmax_probabilities(means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """The probability that each backend's draw ``N(means[a], stds[a]^2)`` is the largest (the
    draws independent; a zero std is a fixed score). Sums to 1."""
    m = np.asarray(means, dtype=np.float64).reshape(-1)
    s = np.asarray(stds, dtype=np.float64).reshape(-1)
    if m.shape != s.shape:
        raise ValueError(f"{m.size} means but {s.size} stds")
    if m.size == 0:
        raise ValueError("no backends")
    spread = s > 0
    if m.size == 1 or not spread.any() or not (np.isfinite(m).all() and np.isfinite(s).all()):
        return _one_hot(m)
    if m.size == 2:  # the difference of the draws is normal
        first = 0.5 * math.erfc(float(m[1] - m[0]) / math.hypot(s[0], s[1]) * _SQRT_HALF)
        return np.array([first, 1.0 - first])
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        probs = _integrate(m, s, spread)
    total = probs.sum()
    if not np.isfinite(total) or total <= 0:
        return _one_hot(m)
    return probs / total


def _one_hot(m: np.ndarray) -> np.ndarray:
    """All the probability on the first largest mean (the argmax of draws without spread)."""
    probs = np.zeros(m.size)
    probs[int(np.argmax(m))] = 1.0
    return probs


def _integrate(m: np.ndarray, s: np.ndarray, spread: np.ndarray) -> np.ndarray:
    probs = np.zeros(m.size)
    mc, sc = m[spread], s[spread]
    floor = -np.inf
    if mc.size < m.size:
        fixed = np.flatnonzero(~spread)
        # the first largest fixed score wins when every draw falls below it; a draw wins only above it
        best = fixed[int(np.argmax(m[fixed]))]
        floor = m[best]
        probs[best] = _density_and_cdf((floor - mc) / sc)[1].prod()
    # one grid for every backend with a spread: panels cut at each one's CUTS, none below the floor
    edges = np.maximum((mc[:, None] + sc[:, None] * CUTS).reshape(-1), floor)
    edges.sort()
    nodes, weights = _legendre()
    half = 0.5 * (edges[1:] - edges[:-1])
    t = ((edges[:-1] + half)[:, None] + half[:, None] * nodes).reshape(-1)
    w = (half[:, None] * weights).reshape(-1)
    bell, cdf = _density_and_cdf((t[:, None] - mc) / sc)  # [nodes, backends]
    # the product of the other backends' distribution functions (where a backend's own is 0, so is
    # its density)
    others = np.divide(cdf.prod(axis=1, keepdims=True), cdf, out=np.zeros_like(cdf), where=cdf > 0)
    probs[spread] = (w @ (bell * others)) / (_SQRT_2PI * sc)
    return np.maximum(probs, 0.0)


def score_spreads(
    names: Sequence[str], means: np.ndarray, stds: np.ndarray, per_lambda: np.ndarray
) -> dict[str, ScoreSpread]:
    """A site's draws as a decision reports them (``fmprog.contract.ScoreSpread`` per backend)."""
    return {
        name: ScoreSpread(mean=float(m), std=float(s), per_lambda=float(d))
        for name, m, s, d in zip(names, means, stds, per_lambda, strict=True)
    }


__all__ = ["argmax_probabilities", "normal_cdf", "score_spreads"]
