"""The real-image backends' compute and seconds per call on real frames (fmprog/configs/real.yaml).

For each detector and VQA backend of the configuration, loaded in this process as its replica
loads it (one thread each, as configured):
- the multiply-adds of one call at the input size it runs at, counted from the networks' layers
  (YOLOv3-tiny's convolutions from its .cfg, EfficientNet-Lite's convolutions and classifier with
  torch hooks; HOG's SVM over every window of the image pyramid plus its gradients, an estimate):
  the configuration's costs are these counts;
- the seconds of one call, median over frames of OpenCV's ``vtest.avi`` (768x576): a detector on
  the whole frame ("person"), a VQA backend on the people a detector found there ("What color is
  this?" and "What is this?", half each).

    python -m benchmarks.real_backends [--config fmprog/configs/real.yaml] [--frames 40]
        [--out benchmarks/results/real_backends.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import provenance
from fmprog.backends import BackendSpec, Function, load_catalog
from fmprog.backends.config import DEFAULT_CONFIG
from fmprog.backends.engine_config import ClassifierEngineOptions, DarknetEngineOptions, DarknetModel, HogEngineOptions
from fmprog.engines import build_engine
from fmprog.engines.darknet import with_masks
from fmprog.engines.sources import resolve_source
from fmprog.vision.video import SAMPLE_VIDEOS, VideoFrames

HOG_WINDOW, HOG_FEATURES = (64, 128), 3780  # the default people detector's window and descriptor length
HOG_PIXEL_OPS = 20  # gradients, orientation binning and block normalisation per pixel and level (estimate)


def darknet_macs(model: DarknetModel) -> float:
    """Millions of multiply-adds of the network's convolutions at its input size and each merged size."""
    return sum(_darknet_macs(model, size) for size in (model.input_size, *model.merged_sizes))


def _darknet_macs(model: DarknetModel, size: int) -> float:
    cfg = resolve_source(model.network).read_text()
    if model.masks is not None:
        cfg = with_masks(cfg, model.masks)
    sections = re.findall(r"\[(\w+)\]([^\[]*)", cfg)
    shapes: list[tuple[int, int, int]] = []
    channels, height, width = 3, size, size
    total = 0
    for name, body in sections[1:]:
        options = dict(re.findall(r"(?m)^\s*(\w+)\s*=\s*(.+?)\s*$", body))
        if name == "convolutional":
            filters, size, stride = int(options["filters"]), int(options["size"]), int(options["stride"])
            height, width = -(-height // stride), -(-width // stride)
            total += height * width * filters * channels * size * size
            channels = filters
        elif name in ("maxpool", "upsample"):
            stride = int(options["stride"])
            height, width = (
                (-(-height // stride), -(-width // stride)) if name == "maxpool" else (height * stride, width * stride)
            )
        elif name == "route":
            layers = [int(x) for x in options["layers"].split(",")]
            picked = [shapes[len(shapes) + i if i < 0 else i] for i in layers]
            channels, height, width = sum(p[0] for p in picked), picked[0][1], picked[0][2]
        shapes.append((channels, height, width))
    return total / 1e6


def classifier_macs(options: ClassifierEngineOptions) -> float:
    """Millions of multiply-adds of the classifier's convolutions and final layer at its input size."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from fmprog.engines.classifier import INPUT_SIZE

    net = EfficientNet.from_name(options.architecture).eval()
    total = [0]

    def conv(module: torch.nn.Conv2d, _: Any, out: torch.Tensor) -> None:
        total[0] += out.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]

    def linear(module: torch.nn.Linear, _: Any, __: Any) -> None:
        total[0] += module.in_features * module.out_features

    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(conv)
        elif isinstance(module, torch.nn.Linear):
            module.register_forward_hook(linear)
    size = INPUT_SIZE[options.architecture]
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return total[0] / 1e6


def hog_macs(options: HogEngineOptions, width: int = 768, height: int = 576) -> float:
    """An estimate: the SVM's dot product over every window of every pyramid level, and a fixed
    number of operations per pixel and level for the gradients and histograms."""
    width, height = round(width * options.resize), round(height * options.resize)
    total, level = 0.0, 0
    while True:
        w, h = round(width / options.scale**level), round(height / options.scale**level)
        if w < HOG_WINDOW[0] or h < HOG_WINDOW[1]:
            break
        windows = ((w + 16 - HOG_WINDOW[0]) // options.win_stride + 1) * (
            (h + 16 - HOG_WINDOW[1]) // options.win_stride + 1
        )
        total += windows * HOG_FEATURES + w * h * HOG_PIXEL_OPS
        level += 1
    return total / 1e6


def counted_macs(spec: BackendSpec) -> float | None:
    """The multiply-adds of one call of a real-image backend (None for other engines)."""
    engine = spec.engine
    if isinstance(engine, DarknetEngineOptions):
        return darknet_macs(engine.model)
    if isinstance(engine, HogEngineOptions):
        return hog_macs(engine)
    if isinstance(engine, ClassifierEngineOptions):
        detector = darknet_macs(engine.detector) if engine.detector is not None else 0.0
        return classifier_macs(engine) + detector
    return None


def _seconds(call: Any, items: list[Any]) -> list[float]:
    call(*items[0])  # warm up
    times = []
    for item in items:
        start = time.perf_counter()
        call(*item)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--frames", type=int, default=40, help="frames of vtest.avi, evenly spaced")
    parser.add_argument("--videos-root", type=Path, default=SAMPLE_VIDEOS)
    parser.add_argument("--out", default="benchmarks/results/real_backends.json")
    args = parser.parse_args()
    catalog = load_catalog(args.config)
    video = VideoFrames(args.videos_root / "vtest.avi")
    picks = np.linspace(0, len(video) - 1, args.frames).round().astype(int)
    frames = [video[int(i)] for i in picks]
    detectors = [s for s in catalog.backends if s.function == Function.detect]
    dearest = build_engine(max(detectors, key=lambda s: s.cost))
    dearest.load()
    crops = []
    for frame in frames:
        for det in dearest.detect_batch([frame], ["person"])[0][:3]:
            x0, y0, x1, y1 = (round(v) for v in det.box)
            crops.append(np.ascontiguousarray(frame[y0:y1, x0:x1]))
    dearest.close()
    rows = []
    for spec in catalog.backends:
        if spec.function not in (Function.detect, Function.vqa):
            continue
        engine = build_engine(spec)
        engine.load()
        if spec.function == Function.detect:
            items = [([f], ["person"]) for f in frames]
            times = _seconds(engine.detect_batch, items)
            on = "768x576 frame, 'person'"
        else:
            questions = ["What color is this?", "What is this?"]
            items = [([c], [questions[i % 2]]) for i, c in enumerate(crops)]
            times = _seconds(engine.vqa_batch, items)
            on = f"person crop (median {statistics.median(c.shape[0] for c in crops):.0f} px tall)"
        engine.close()
        row = {
            "backend": spec.name,
            "function": spec.function.value,
            "cost": spec.cost,
            "counted_mmac": counted_macs(spec),
            "seconds_p50": statistics.median(times),
            "seconds_mean": statistics.fmean(times),
            "calls": len(times),
            "on": on,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        "| backend | function | cost (config) | counted MMAC | seconds per call, p50 | on |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['function']} | {r['cost']:g} | {r['counted_mmac']:.0f} "
            f"| {r['seconds_p50']:.3f} | {r['on']} |"
        )
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"provenance": provenance(), "config": args.config, "backends": rows}
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
