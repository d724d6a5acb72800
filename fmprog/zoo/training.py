"""Training of the zoo's perception networks on scenes generated on the fly.

Each step draws a batch of fresh frames (a mix of difficulties) from the scene generator; a share
of the batch are *crops* around one object, pasted into a black canvas, so that the networks also
see the crops programs hand to VQA and detection. Training frame seeds are drawn from
``ZOO_TRAINING`` (``fmprog.scene.seeds``), which no evaluation set, prior or benchmark track shares.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmprog.scene import generate_scene
from fmprog.scene.seeds import ZOO_TRAINING
from fmprog.scene.vocabulary import COLORS, SHAPES, TEXTURES
from fmprog.zoo.catalog import NetworkSpec
from fmprog.zoo.network import PerceptionNet, TargetObject, build_targets, detection_loss, placement_of, prepare_inputs

TRAIN_MIX: tuple[tuple[str, float], ...] = (("easy", 0.25), ("medium", 0.35), ("hard", 0.4))


@dataclass(frozen=True, slots=True)
class TrainingResult:
    """What a training run did."""

    steps: int
    seconds: float
    device: str
    first_loss: float
    last_loss: float


def training_batch(
    rng: np.random.Generator, batch_size: int, crop_fraction: float = 0.25
) -> tuple[list[np.ndarray], list[list[TargetObject]]]:
    """Images (frames or object crops) and their objects in canvas pixels."""
    names = [name for name, _ in TRAIN_MIX]
    weights = np.asarray([w for _, w in TRAIN_MIX])
    images: list[np.ndarray] = []
    targets: list[list[TargetObject]] = []
    for _ in range(batch_size):
        difficulty = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        scene = generate_scene(ZOO_TRAINING.draw(rng), difficulty)
        objects = [o for o in scene.objects if o.visibility >= 0.3]
        if objects and rng.random() < crop_fraction:
            focus = objects[int(rng.integers(len(objects)))]
            x0, y0, x1, y1 = focus.box
            side = x1 - x0
            margins = rng.uniform(-0.05, 0.3, 4) * side
            cx0, cy0 = max(0, int(x0 - margins[0])), max(0, int(y0 - margins[1]))
            cx1 = min(scene.image.shape[1], math.ceil(x1 + margins[2]))
            cy1 = min(scene.image.shape[0], math.ceil(y1 + margins[3]))
            image = scene.image[cy0:cy1, cx0:cx1]
            place = placement_of(image.shape[0], image.shape[1])
            kept = []
            for obj in objects:
                ox, oy = obj.center
                if not (cx0 <= ox < cx1 and cy0 <= oy < cy1):
                    continue
                bx0, by0, bx1, by1 = obj.box
                box = (max(bx0, cx0) - cx0, max(by0, cy0) - cy0, min(bx1, cx1) - cx0, min(by1, cy1) - cy0)
                kept.append(
                    (
                        obj,
                        (
                            box[0] + place.offset_x,
                            box[1] + place.offset_y,
                            box[2] + place.offset_x,
                            box[3] + place.offset_y,
                        ),
                    )
                )
        else:
            image = scene.image
            kept = [(obj, tuple(float(v) for v in obj.box)) for obj in objects]
        images.append(image)
        targets.append(
            [
                TargetObject(box, SHAPES.index(o.shape), COLORS.index(o.color), TEXTURES.index(o.texture))
                for o, box in kept
            ]
        )
    return images, targets


def train(
    entry: NetworkSpec,
    steps: int,
    device: str = "cpu",
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    log: Callable[[str], None] | None = None,
) -> tuple[PerceptionNet, TrainingResult]:
    """Train the network ``entry`` from scratch for ``steps`` steps (seeded by ``entry.seed``)."""
    torch.manual_seed(entry.seed)
    rng = np.random.default_rng(entry.seed)
    net = PerceptionNet(entry.arch).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=max(steps, 1), pct_start=0.15
    )
    net.train()
    start = time.perf_counter()
    losses: list[float] = []
    for step in range(steps):
        images, objects = training_batch(rng, batch_size)
        inputs, _ = prepare_inputs(images, entry.arch.input_size, device)
        targets = {k: v.to(device) for k, v in build_targets(objects, entry.arch.input_size).items()}
        loss = detection_loss(net(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 100 == 0 or step == steps - 1):
            recent = losses[-100:]
            elapsed = time.perf_counter() - start
            log(f"{entry.name}: step {step + 1}/{steps} loss {sum(recent) / len(recent):.3f} ({elapsed:.0f}s)")
    net.eval()
    window = max(1, min(20, len(losses) // 4))
    result = TrainingResult(
        steps=steps,
        seconds=time.perf_counter() - start,
        device=str(device),
        first_loss=float(np.mean(losses[:window])) if losses else math.nan,
        last_loss=float(np.mean(losses[-window:])) if losses else math.nan,
    )
    return net.cpu(), result


# -- the whole zoo ----------------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"
METRICS = {
    "detect": "F1 at IoU 0.5 over held-out (frame, noun) items: present nouns at every level of detail and absent ones",
    "vqa": "exact-match accuracy over held-out questions: half about a crop around one object, half whole-frame",
}


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def measure_latency(model: object, function: str, frames: int = 40) -> dict[str, float]:
    """Milliseconds per item on CPU: one item per call, and in batches of 32."""
    from fmprog.zoo.evaluate import evaluation_set

    items = evaluation_set(function, "medium", max(frames, 32), seed=7)
    run = getattr(model, f"{function}_batch")
    run([items[0].image], [items[0].text])  # warm up
    start = time.perf_counter()
    for item in items[:frames]:
        run([item.image], [item.text])
    single = (time.perf_counter() - start) / frames
    start = time.perf_counter()
    run([item.image for item in items[:32]], [item.text for item in items[:32]])
    batched = (time.perf_counter() - start) / 32
    return {"batch_1_ms": round(single * 1000, 3), "batch_32_ms_per_item": round(batched * 1000, 3)}


def train_zoo(
    names: list[str],
    out_dir: Path,
    steps: int | None = None,
    device: str = "auto",
    threads: int = 2,
    batch_size: int = 32,
    eval_frames: int = 300,
    eval_only: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, object]]:
    """Train (unless ``eval_only``) the networks behind the named zoo models, save them, and
    evaluate each model; returns the manifest written to ``out_dir / MANIFEST_NAME``."""
    import hashlib
    import json
    import platform

    from fmprog.zoo.catalog import NETWORKS, zoo_entry
    from fmprog.zoo.evaluate import evaluate
    from fmprog.zoo.models import build_model, load_network, save_weights

    torch.set_num_threads(threads)
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    manifest: dict[str, dict[str, object]] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    entries = [zoo_entry(name) for name in names]
    trained: dict[str, dict[str, object]] = {}
    for network in dict.fromkeys(entry.network for entry in entries):
        spec = NETWORKS[network]
        path = out_dir / f"{network}.pt"
        if eval_only:
            continue
        n_steps = steps if steps is not None else spec.steps
        net, result = train(spec, n_steps, device=device, batch_size=batch_size, log=log)
        save_weights(network, net, path)
        trained[network] = {
            "seed": spec.seed,
            "steps": result.steps,
            "batch_size": batch_size,
            "seconds": round(result.seconds, 1),
            "device": result.device,
            "threads": threads,
            "first_loss": round(result.first_loss, 4),
            "last_loss": round(result.last_loss, 4),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
    for entry in entries:
        path = out_dir / f"{entry.network}.pt"
        model = build_model(entry.name, entry.function, load_network(path), "cpu")
        record = dict(manifest.get(entry.name, {}))
        if entry.network in trained:
            record["training"] = trained[entry.network]
        arch = entry.arch
        record.update(
            function=entry.function,
            network=entry.network,
            parameters=model.parameters,
            input_size=arch.input_size,
            architecture={
                "input_size": arch.input_size,
                "stem_width": arch.stem_width,
                "width": arch.width,
                "dilations": list(arch.dilations),
            },
            weights={
                "file": path.name,
                "bytes": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            },
        )
        accuracy = {}
        for difficulty in ("easy", "medium", "hard"):
            accuracy[difficulty] = round(evaluate(model, entry.function, difficulty, n=eval_frames, seed=0).score, 4)
        record["accuracy"] = accuracy
        record["evaluation"] = {"metric": METRICS[entry.function], "items_per_difficulty": eval_frames, "seed": 0}
        record["latency_cpu"] = measure_latency(model, entry.function)
        manifest[entry.name] = record
        if log is not None:
            log(f"{entry.name}: {model.parameters} parameters, accuracy {accuracy}, latency {record['latency_cpu']}")
        manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return manifest
