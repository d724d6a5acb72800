"""Bayesian linear reward models with Thompson sampling (numpy), shared by ``fast`` and ``whole_query``.

Per arm ``a``: ridge posterior with precision ``A_a = reg * I + sum x x^T`` and mean
``theta_a = A_a^-1 b_a``, ``b_a = sum r x``. ``A_a^-1`` is kept directly and updated by
Sherman-Morrison, so an update is ``O(d^2)`` and nothing is ever inverted. Sampling follows the
paper's gradient Thompson sampling with the features as the gradient of a linear last layer:
``r ~ N(x . theta_a, nu^2 * reg * x^T A_a^-1 x)`` (a scalar draw per arm, ``O(d^2)``, no Cholesky).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class LinearArms:
    """``n_arms`` independent Bayesian linear models over ``dim`` features."""

    def __init__(self, n_arms: int, dim: int, reg: float):
        self.reg = float(reg)
        self.a_inv = np.repeat(np.eye(dim)[None] / self.reg, n_arms, axis=0)  # [K, d, d]
        self.b = np.zeros((n_arms, dim))
        self.theta = np.zeros((n_arms, dim))
        self.counts = np.zeros(n_arms, np.int64)

    def mean_and_sigma(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean reward of each arm at ``x`` and ``sigma = sqrt(reg * x^T A^-1 x)``."""
        mean = self.theta @ x
        ax = self.a_inv @ x  # [K, d]
        var = self.reg * (ax @ x)
        return mean, np.sqrt(np.maximum(var, 0.0))

    def start_from(self, arm: int, mean: np.ndarray, cov: np.ndarray) -> None:
        """Replace one arm's prior with ``N(mean, cov)`` (before it has seen data)."""
        self.a_inv[arm] = cov
        self.b[arm] = np.linalg.solve(cov, mean)
        self.theta[arm] = mean

    def residual(self, arm: int, x: np.ndarray, reward: float) -> float:
        """The reward's distance from the arm's posterior mean prediction at ``x``, in units of the
        predictive spread under unit noise (``sqrt(1 + x^T A^-1 x)``)."""
        spread = 1.0 + float(x @ self.a_inv[arm] @ x)
        return (reward - float(self.theta[arm] @ x)) / np.sqrt(max(spread, 1e-12))

    def weight(self, arm: int) -> float:
        """How many observations one arm's posterior holds (its prior's included): the precision on
        the first feature above the base prior's, which is that sum when the first feature is a
        bias of 1."""
        return float(np.linalg.inv(self.a_inv[arm])[0, 0]) - self.reg

    def widen(self, arm: int, keep: float) -> None:
        """Count what one arm learned (its precision above the base prior's ``reg * I``, and its
        ``b``) ``keep`` times (in (0, 1]) against what comes next: its posterior widens back toward
        the base prior, its mean drawn toward it only where the base prior then weighs more."""
        precision = np.linalg.inv(self.a_inv[arm])
        base = self.reg * np.eye(len(precision))
        self.a_inv[arm] = np.linalg.inv(base + keep * (precision - base))
        self.b[arm] *= keep
        self.theta[arm] = self.a_inv[arm] @ self.b[arm]

    def update(self, arm: int, x: np.ndarray, reward: float) -> None:
        a_inv = self.a_inv[arm]
        ax = a_inv @ x
        a_inv -= np.outer(ax, ax) / (1.0 + x @ ax)
        self.b[arm] += reward * x
        self.theta[arm] = a_inv @ self.b[arm]
        self.counts[arm] += 1

    def state(self) -> dict[str, Any]:
        import torch

        return {
            "a_inv": torch.from_numpy(self.a_inv.copy()),
            "b": torch.from_numpy(self.b.copy()),
            "theta": torch.from_numpy(self.theta.copy()),
            "counts": torch.from_numpy(self.counts.copy()),
        }

    def load(self, state: dict[str, Any]) -> None:
        a_inv, b = state["a_inv"].numpy().copy(), state["b"].numpy().copy()
        if a_inv.shape != self.a_inv.shape or b.shape != self.b.shape:
            raise ValueError(f"state holds arms of shape {tuple(a_inv.shape)}, expected {self.a_inv.shape}")
        self.a_inv, self.b = a_inv, b
        self.counts = state["counts"].numpy().copy()
        self.theta = state["theta"].numpy().copy()
