"""Fixed, cheap image features shared by the fast policy and the whole-query baseline.

Why fixed statistics and not the zoo's perception layers or a learned trunk: what makes a frame
hard for a backend (noise, blur, low contrast, clutter, small objects, colour mix) shows up in
simple image statistics. Computed in numpy on the frame subsampled to 32 x 32 (nearest pixels, so
per-pixel noise survives) they cost about 0.2 ms, well under the cheapest backend call
(detect-small, ~1.4 ms), where even the zoo network's first convolutions in torch would cost
about as much as that call. Being fixed, they never drift, so a Bayesian linear model on top
stays exact. Those 32 x 32 pixels are all they read, so the router sends the policy that
thumbnail (``fmprog.contract.frame_input``) instead of the frame.

The vector (``FEATURE_DIM`` values, each roughly in 0..1, last one a constant 1 for the bias):
per-channel mean and standard deviation (6); mean absolute horizontal and vertical gradients and
the mean absolute Laplacian of the grey image, scaled (3); edge density at two thresholds (2);
a 4-bin histogram per colour channel (12); mean saturation and its spread (2); the grey image
averaged over a 4 x 4 grid (16); bias (1).
"""

from __future__ import annotations

import numpy as np

from fmprog.contract import THUMBNAIL_SIDE
from fmprog.images import thumbnail

SUBSAMPLE = THUMBNAIL_SIDE
FEATURE_DIM = 6 + 3 + 2 + 12 + 2 + 16 + 1


def frame_features(frame: np.ndarray) -> np.ndarray:
    """The feature vector (float64, ``FEATURE_DIM``) of an ``H x W x 3`` uint8 frame, read from its
    ``SUBSAMPLE`` x ``SUBSAMPLE`` thumbnail alone (``fmprog.images.thumbnail``): the thumbnail
    itself gives the same vector, bit for bit."""
    x = thumbnail(frame, SUBSAMPLE).transpose(2, 0, 1).astype(np.float32) * (1.0 / 255.0)  # [3, 32, 32]
    out = np.empty(FEATURE_DIM, np.float64)
    channels = x.reshape(3, -1)
    out[0:3] = channels.mean(axis=1)
    out[3:6] = channels.std(axis=1) * 2.0
    red, green, blue = x
    grey = (red + green + blue) * (1.0 / 3.0)
    dx = np.abs(grey[:, 1:] - grey[:, :-1])
    dy = np.abs(grey[1:] - grey[:-1])
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    out[6] = dx.mean() * 8.0
    out[7] = dy.mean() * 8.0
    out[8] = np.abs(lap).mean() * 4.0
    out[9] = np.count_nonzero(dx > 0.1) / dx.size
    out[10] = np.count_nonzero(dx > 0.3) / dx.size
    bins = np.minimum((channels * 4).astype(np.intp), 3) + np.array([[0], [4], [8]])
    out[11:23] = np.bincount(bins.reshape(-1), minlength=12) / channels.shape[1]
    saturation = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    out[23] = saturation.mean() * 2.0
    out[24] = saturation.std() * 2.0
    out[25:41] = grey.reshape(4, SUBSAMPLE // 4, 4, SUBSAMPLE // 4).mean(axis=(1, 3)).reshape(-1)
    out[41] = 1.0
    return out
