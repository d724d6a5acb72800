"""The zoo's perception network: a small CenterNet-style dense predictor (torch).

For each cell of an output grid (stride 4 of the network's input) it predicts an object-centre
heatmap, the object's box (side lengths and centre offset within the cell) and logits for its
shape, colour and texture. Size is not predicted separately: it follows from the box side
relative to the reference frame, exactly as the scene generator defines it.

Inputs of any size are placed, at their native scale, in the centre of a square canvas of side
``max(H, W, REFERENCE_SIDE)`` filled with black, and the canvas is resized to the network's input
resolution. A crop of a frame therefore keeps its objects' pixel scale, and a frame of the default
size is used as is; small models see the canvas at a lower resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from fmprog.scene.vocabulary import COLORS, SHAPES, TEXTURES
from fmprog.zoo.catalog import Architecture

REFERENCE_SIDE = 128  # canvas side for frames and crops of the default frame size
STRIDE = 4  # output grid stride, in network input pixels
# Output channels: heatmap, box side (w, h) in cells, centre offset (x, y), then attribute logits.
HEAT, SIDE, OFFSET = slice(0, 1), slice(1, 3), slice(3, 5)
SHAPE_LOGITS = slice(5, 5 + len(SHAPES))
COLOR_LOGITS = slice(SHAPE_LOGITS.stop, SHAPE_LOGITS.stop + len(COLORS))
TEXTURE_LOGITS = slice(COLOR_LOGITS.stop, COLOR_LOGITS.stop + len(TEXTURES))
OUTPUT_CHANNELS = TEXTURE_LOGITS.stop


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.body = _conv(width, width, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PerceptionNet(nn.Module):
    """Image ``[B, 3, R, R]`` (floats in 0..1) to per-cell predictions ``[B, OUTPUT_CHANNELS, R/4, R/4]``."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.trunk = nn.Sequential(
            _conv(3, arch.stem_width, stride=2),
            _conv(arch.stem_width, arch.width, stride=2),
            *[_Residual(arch.width, d) for d in arch.dilations],
        )
        self.head = nn.Sequential(
            nn.Conv2d(arch.width, arch.width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(arch.width, OUTPUT_CHANNELS, 1),
        )
        with torch.no_grad():  # start the heatmap at a low prior, as CenterNet does
            self.head[-1].bias[HEAT].fill_(-2.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x - 0.5))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """How an input image sits in its canvas: canvas side and the image's offset in it."""

    canvas_side: int
    offset_x: int
    offset_y: int
    width: int
    height: int


def placement_of(height: int, width: int) -> Placement:
    side = max(height, width, REFERENCE_SIDE)
    return Placement(side, (side - width) // 2, (side - height) // 2, width, height)


def prepare_inputs(
    images: Sequence[np.ndarray], input_size: int, device: torch.device | str
) -> tuple[torch.Tensor, list[Placement]]:
    """Network inputs ``[B, 3, input_size, input_size]`` for images of any size, and their placements.

    Images whose canvas is the reference side are pasted into one batch and resized together."""
    placements: list[Placement] = []
    reference = torch.zeros((len(images), 3, REFERENCE_SIDE, REFERENCE_SIDE), dtype=torch.float32)
    larger: dict[int, torch.Tensor] = {}
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"image must be H x W x 3 with H, W >= 1, got shape {array.shape}")
        place = placement_of(array.shape[0], array.shape[1])
        placements.append(place)
        pixels = torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        rows = slice(place.offset_y, place.offset_y + place.height)
        cols = slice(place.offset_x, place.offset_x + place.width)
        if place.canvas_side == REFERENCE_SIDE:
            reference[i, :, rows, cols] = pixels
        else:
            canvas = torch.zeros((1, 3, place.canvas_side, place.canvas_side), dtype=torch.float32)
            canvas[0, :, rows, cols] = pixels
            larger[i] = functional.interpolate(canvas, size=(REFERENCE_SIDE, REFERENCE_SIDE), mode="area")[0]
    for i, canvas in larger.items():
        reference[i] = canvas
    if input_size != REFERENCE_SIDE:
        reference = functional.interpolate(reference, size=(input_size, input_size), mode="area")
    return reference.to(device), placements


# -- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """One decoded heatmap peak, in canvas pixels, with attribute probabilities."""

    score: float
    box: tuple[float, float, float, float]
    shape: tuple[float, ...]
    color: tuple[float, ...]
    texture: tuple[float, ...]


def decode(
    outputs: torch.Tensor, input_size: int, placements: Sequence[Placement], top_k: int = 24
) -> list[list[Candidate]]:
    """The ``top_k`` heatmap peaks of each image, boxes mapped back to the image's own pixels."""
    heat = torch.sigmoid(outputs[:, HEAT])
    peaks = heat * (heat == functional.max_pool2d(heat, 3, stride=1, padding=1))
    batch, _, grid, _ = heat.shape
    k = min(top_k, grid * grid)
    scores, index = peaks.flatten(1).topk(k)
    rows, cols = index // grid, index % grid
    flat = outputs.flatten(2)  # [B, C, G*G]
    gathered = flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1))  # [B, C, k]
    shape_p = torch.softmax(gathered[:, SHAPE_LOGITS], dim=1)
    color_p = torch.softmax(gathered[:, COLOR_LOGITS], dim=1)
    texture_p = torch.softmax(gathered[:, TEXTURE_LOGITS], dim=1)
    sides = gathered[:, SIDE].clamp(min=0.25)
    offsets = gathered[:, OFFSET]
    cx = (cols.float() + offsets[:, 0]) * STRIDE
    cy = (rows.float() + offsets[:, 1]) * STRIDE
    w, h = sides[:, 0] * STRIDE, sides[:, 1] * STRIDE
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=2).cpu().numpy()
    scores_np = scores.cpu().numpy()
    shape_np, color_np, texture_np = (p.cpu().numpy() for p in (shape_p, color_p, texture_p))
    results: list[list[Candidate]] = []
    for b in range(batch):
        place = placements[b]
        scale = place.canvas_side / input_size
        found = []
        for j in range(k):
            x0, y0, x1, y1 = boxes[b, j] * scale
            x0, x1 = x0 - place.offset_x, x1 - place.offset_x
            y0, y1 = y0 - place.offset_y, y1 - place.offset_y
            x0, y0 = max(0.0, float(x0)), max(0.0, float(y0))
            x1, y1 = min(float(place.width), float(x1)), min(float(place.height), float(y1))
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            found.append(
                Candidate(
                    score=float(scores_np[b, j]),
                    box=(x0, y0, x1, y1),
                    shape=tuple(float(v) for v in shape_np[b, :, j]),
                    color=tuple(float(v) for v in color_np[b, :, j]),
                    texture=tuple(float(v) for v in texture_np[b, :, j]),
                )
            )
        results.append(found)
    return results


# -- training targets and loss ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetObject:
    """A ground-truth object in canvas pixels with its attribute indices."""

    box: tuple[float, float, float, float]
    shape: int
    color: int
    texture: int


def build_targets(objects_per_image: Sequence[Sequence[TargetObject]], input_size: int) -> dict[str, torch.Tensor]:
    """Dense training targets on the output grid for objects given in reference-canvas pixels."""
    grid = input_size // STRIDE
    cell = REFERENCE_SIDE / grid  # canvas pixels per output cell
    n = len(objects_per_image)
    heat = np.zeros((n, grid, grid), np.float32)
    index = np.zeros((n, 32), np.int64)
    valid = np.zeros((n, 32), np.float32)
    side = np.zeros((n, 32, 2), np.float32)
    offset = np.zeros((n, 32, 2), np.float32)
    labels = np.full((n, 3, 32), -100, np.int64)
    ys, xs = np.mgrid[0:grid, 0:grid]
    for b, objects in enumerate(objects_per_image):
        for j, obj in enumerate(objects[:32]):
            x0, y0, x1, y1 = obj.box
            cx, cy = (x0 + x1) / 2 / cell, (y0 + y1) / 2 / cell
            ci, cj = min(int(cy), grid - 1), min(int(cx), grid - 1)
            w, h = (x1 - x0) / cell, (y1 - y0) / cell
            sigma = max(0.5, min(w, h) / 6)
            gauss = np.exp(-((xs - cj) ** 2 + (ys - ci) ** 2) / (2 * sigma * sigma))
            np.maximum(heat[b], gauss, out=heat[b])
            heat[b, ci, cj] = 1.0
            index[b, j] = ci * grid + cj
            valid[b, j] = 1.0
            side[b, j] = (w, h)
            offset[b, j] = (cx - cj, cy - ci)
            labels[b, :, j] = (obj.shape, obj.color, obj.texture)
    return {
        "heat": torch.from_numpy(heat),
        "index": torch.from_numpy(index),
        "valid": torch.from_numpy(valid),
        "side": torch.from_numpy(side),
        "offset": torch.from_numpy(offset),
        "labels": torch.from_numpy(labels),
    }


def detection_loss(outputs: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heatmap, L1 on box side and offset at object
    centres, and cross-entropy on the attributes at object centres."""
    logits = outputs[:, 0]
    heat = targets["heat"]
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = heat.eq(1).float()
    pos_loss = -torch.log(prob) * (1 - prob) ** 2 * positive
    neg_loss = -torch.log(1 - prob) * prob**2 * (1 - heat) ** 4 * (1 - positive)
    n_pos = positive.sum().clamp(min=1)
    focal = (pos_loss.sum() + neg_loss.sum()) / n_pos

    flat = outputs.flatten(2)
    index = targets["index"]
    gathered = flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1))  # [B, C, 32]
    valid = targets["valid"]
    n_obj = valid.sum().clamp(min=1)
    side_loss = (
        functional.l1_loss(gathered[:, SIDE].permute(0, 2, 1), targets["side"], reduction="none").sum(2) * valid
    ).sum()
    offset_loss = (
        functional.l1_loss(gathered[:, OFFSET].permute(0, 2, 1), targets["offset"], reduction="none").sum(2) * valid
    ).sum()
    labels = targets["labels"]
    attribute_loss = (
        functional.cross_entropy(gathered[:, SHAPE_LOGITS], labels[:, 0], reduction="sum")
        + functional.cross_entropy(gathered[:, COLOR_LOGITS], labels[:, 1], reduction="sum")
        + functional.cross_entropy(gathered[:, TEXTURE_LOGITS], labels[:, 2], reduction="sum")
    )
    return focal + (0.1 * side_loss + offset_loss + attribute_loss) / n_obj
