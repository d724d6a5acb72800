"""The tracks' streams: built from the scene generator, stored and loaded in the authors' formats.

The authors published their benchmarks in two layouts (see ../shared/PAPER.md), and fmprog uses
the same two for its own tracks, so the loaders below read either:

- binary: one JSON file, a list of ``{query, code, positive_images, negative_images}``;
- open-form: ``<root>/<type>/meta_annotation.json`` = ``[{query, query_index, program}]`` and
  ``<root>/<type>/<query_index>/annotation.json`` = ``[{image, answer}]``.

An image reference is resolved by :class:`ImageResolver`: ``"scene/<difficulty>/<seed>"`` is a
generated frame (nothing is stored but the reference); ``"video/<file>/<index>"`` is a frame of a
video file under ``videos_root`` (OpenCV's sample videos by default); an integer (or a string of
digits) is a COCO train2017 id under ``coco_root``; any other string is a file path relative to
``images_root``. Streams are shuffled with seed 42 when loaded, as the authors did, except a video
track's, which keeps the camera's order.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.vqa.queries import NOT_APPLICABLE, OPEN_TYPES, QuerySpec
from fmprog.rewards import TaskKind
from fmprog.scene.generator import DIFFICULTIES, generate_scene
from fmprog.scene.seeds import VALIDATION_TRACKS, SeedRange
from fmprog.vision.video import SAMPLE_VIDEOS, VideoError, VideoFrames

STREAM_SEED = 42
ImageRef = str | int


@dataclass(frozen=True)
class TrackQuery:
    """One query of a track with its stream: frames (image references) and labels, in stream order."""

    query: str
    type: str
    program: str
    frames: list[ImageRef]
    labels: list[str]


@dataclass(frozen=True)
class Track:
    """A named track: binary (F1 on positives) or open (accuracy)."""

    name: str
    kind: TaskKind
    queries: list[TrackQuery] = field(default_factory=list)

    def subset(
        self, queries_per_type: int | None = None, frames: int | None = None, queries: int | None = None
    ) -> Track:
        """The first ``queries_per_type`` queries of each type (of those, the first ``queries``),
        each stream cut to ``frames`` frames that keep its label mix (the first frames of each
        label, in stream order)."""
        taken: dict[str, int] = {}
        chosen = []
        for q in self.queries:
            taken[q.type] = taken.get(q.type, 0) + 1
            if queries_per_type is None or taken[q.type] <= queries_per_type:
                chosen.append(q if frames is None else _cut(q, frames))
        return Track(self.name, self.kind, chosen[:queries])


def _cut(query: TrackQuery, frames: int) -> TrackQuery:
    if frames >= len(query.frames):
        return query
    counts = Counter(query.labels)
    keep = {label: max(1, round(frames * n / len(query.labels))) for label, n in counts.items()}
    kept = []
    for i, label in enumerate(query.labels):
        if keep[label] > 0:
            keep[label] -= 1
            kept.append(i)
    return TrackQuery(
        query.query, query.type, query.program, [query.frames[i] for i in kept], [query.labels[i] for i in kept]
    )


class TrackFormatError(ValueError):
    """A track file that does not follow the authors' format."""


# -- images -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageResolver:
    """Turns image references into ``H x W x 3`` uint8 frames (a video's frames are decoded once
    per process and kept)."""

    coco_root: Path | None = None
    images_root: Path | None = None
    videos_root: Path = SAMPLE_VIDEOS

    def __call__(self, ref: ImageRef) -> np.ndarray:
        if isinstance(ref, str) and ref.startswith("scene/"):
            try:
                _, difficulty, seed = ref.split("/")
                return generate_scene(int(seed), difficulty).image
            except ValueError as exc:
                raise TrackFormatError(f"bad scene reference {ref!r}: {exc}") from None
        if isinstance(ref, str) and ref.startswith("video/"):
            try:
                name, index = parse_video_ref(ref)
                return _video(self.videos_root / name)[index]
            except (ValueError, VideoError) as exc:
                raise TrackFormatError(f"bad video reference {ref!r}: {exc}") from None
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            if self.coco_root is None:
                raise TrackFormatError(f"image {ref} is a COCO id: give the COCO root (--coco-root)")
            return _read_image(self.coco_root / "train2017" / f"{int(ref):012d}.jpg")
        if self.images_root is None:
            raise TrackFormatError(f"image {ref!r} is a file: give the images' root (--images-root)")
        return _read_image(self.images_root / str(ref))


_VIDEOS: dict[Path, VideoFrames] = {}
_VIDEOS_LOCK = threading.Lock()


def _video(path: Path) -> VideoFrames:
    """The process's decoded copy of a video (the last one asked for: a track reads one at a time)."""
    with _VIDEOS_LOCK:
        if path not in _VIDEOS:
            _VIDEOS.clear()
            _VIDEOS[path] = VideoFrames(path)
        return _VIDEOS[path]


def video_ref(name: str, index: int) -> str:
    """The reference to frame ``index`` of the video file ``name`` (read by ``parse_video_ref``)."""
    return f"video/{name}/{index}"


def parse_video_ref(ref: str) -> tuple[str, int]:
    """The video file's name and the frame's index of a ``video/<file>/<index>`` reference."""
    prefix, name, index = ref.split("/")
    if prefix != "video" or not name or not index.isdigit():
        raise ValueError(f"not a video frame reference: {ref!r}")
    return name, int(index)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise TrackFormatError(f"cannot read image {path}: {exc}") from None


# -- building streams from the scene generator -------------------------------------------------------


@dataclass
class _Buckets:
    """Frames collected for one query, by role, up to quotas."""

    spec: QuerySpec
    quotas: dict[str, int]
    frames: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def offer(self, ref: str, label: str, lookalike: bool) -> None:
        if label not in ("no", NOT_APPLICABLE):
            roles = ["positive"]
        else:
            roles = ["lookalike", "other"] if lookalike else ["other"]
        for role in roles:
            held = self.frames.setdefault(role, [])
            if len(held) < self.quotas.get(role, 0):
                held.append((ref, label))
                return

    def stream(self) -> list[tuple[str, str]]:
        chosen = list(self.frames.get("positive", []))
        negatives = self.frames.get("lookalike", []) + self.frames.get("other", [])
        chosen += negatives[: self.quotas["other"]]
        return chosen


def build_streams(
    specs: Sequence[QuerySpec],
    *,
    binary_frames: int = 2000,
    binary_positives: int = 20,
    open_frames: int = 500,
    open_answered: float = 0.6,
    lookalike_share: float = 0.3,
    max_candidates: int = 300_000,
    seeds: SeedRange = VALIDATION_TRACKS,
) -> list[TrackQuery]:
    """A stream per query from generated scenes (equal thirds of easy, medium and hard frames):

    - binary: ``binary_positives`` positive frames (1 per 100 by default) and the rest negatives,
      ``lookalike_share`` of them holding a look-alike (one detail away from the query);
    - open: ``open_answered`` of the frames hold what the query asks about, the rest are "N/A",
      look-alike distractors where the candidates offer enough.

    Frames a query is ambiguous on are skipped for it. Raises ValueError when ``max_candidates``
    scenes do not fill a query's positives. Scenes are taken in order from the start of ``seeds``
    (``fmprog.scene.seeds``: a split's range for the tracks, the prior's for the cascade prior).
    """
    buckets = []
    for spec in specs:
        if spec.kind == "binary":
            negatives = binary_frames - binary_positives
            quotas = {"positive": binary_positives, "lookalike": round(negatives * lookalike_share)}
        else:
            negatives = open_frames - round(open_frames * open_answered)
            quotas = {"positive": open_frames - negatives, "lookalike": negatives}
        quotas["other"] = negatives  # also tops up look-alikes that run short
        buckets.append(_Buckets(spec, quotas))
    pending = list(buckets)
    for index in seeds.seeds(max_candidates):
        difficulty = DIFFICULTIES[index % len(DIFFICULTIES)]
        scene = generate_scene(index, difficulty)
        ref = f"scene/{difficulty}/{index}"
        for bucket in pending:
            label = bucket.spec.truth(scene.objects)
            if label is not None:
                bucket.offer(ref, label, bucket.spec.lookalike(scene.objects))
        pending = [b for b in pending if not _enough(b)]
        if not pending:
            break
    short = [b.spec.query for b in pending if len(b.frames.get("positive", [])) < b.quotas["positive"]]
    if short:
        raise ValueError(f"{max_candidates} scenes did not give enough positive frames for: {'; '.join(short)}")
    queries = []
    for bucket in buckets:
        stream = bucket.stream()
        queries.append(
            TrackQuery(
                bucket.spec.query, bucket.spec.type, bucket.spec.program, [r for r, _ in stream], [x for _, x in stream]
            )
        )
    return queries


def _enough(bucket: _Buckets) -> bool:
    return all(len(bucket.frames.get(role, [])) >= n for role, n in bucket.quotas.items())


def _shuffled(frames: list[ImageRef], labels: list[str]) -> tuple[list[ImageRef], list[str]]:
    order = np.random.default_rng(STREAM_SEED).permutation(len(frames))
    return [frames[i] for i in order], [labels[i] for i in order]


# -- the authors' formats ------------------------------------------------------------------------------


def save_binary(queries: Iterable[TrackQuery], path: Path) -> None:
    """Write binary queries in the authors' format (plus a ``type`` per query)."""
    entries = []
    for q in queries:
        entries.append(
            {
                "query": q.query,
                "type": q.type,
                "code": q.program,
                "positive_images": [f for f, label in zip(q.frames, q.labels, strict=True) if label == "yes"],
                "negative_images": [f for f, label in zip(q.frames, q.labels, strict=True) if label != "yes"],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_json_lines(entries))


def load_binary(path: Path, name: str = "binary") -> Track:
    """Read a binary track in the authors' format; each stream is positives + negatives, shuffled."""
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise TrackFormatError(f"{path}: a binary track is a JSON list of queries")
    queries = []
    for i, entry in enumerate(entries):
        _require(entry, ("query", "code", "positive_images", "negative_images"), f"{path}: query {i}")
        frames = list(entry["positive_images"]) + list(entry["negative_images"])
        labels = ["yes"] * len(entry["positive_images"]) + ["no"] * len(entry["negative_images"])
        frames, labels = _shuffled(frames, labels)
        queries.append(TrackQuery(entry["query"], entry.get("type", "binary"), entry["code"], frames, labels))
    return Track(name, "binary", queries)


def save_open(queries: Iterable[TrackQuery], root: Path) -> None:
    """Write open-form queries in the authors' layout, one folder per reasoning type."""
    by_type: dict[str, list[TrackQuery]] = {}
    for q in queries:
        by_type.setdefault(q.type, []).append(q)
    for type_, members in by_type.items():
        folder = root / type_
        folder.mkdir(parents=True, exist_ok=True)
        meta = [{"query": q.query, "query_index": i, "program": q.program} for i, q in enumerate(members)]
        (folder / "meta_annotation.json").write_text(_json_lines(meta))
        for i, q in enumerate(members):
            (folder / str(i)).mkdir(exist_ok=True)
            annotation = [{"image": f, "answer": label} for f, label in zip(q.frames, q.labels, strict=True)]
            (folder / str(i) / "annotation.json").write_text(json.dumps(annotation) + "\n")


def load_open(root: Path, name: str = "open", *, shuffle: bool = True) -> Track:
    """Read an open-form track in the authors' layout (types in the paper's order, then any others);
    each stream shuffled with seed 42 as the authors did, unless ``shuffle`` is off (a video's
    frames keep their order)."""
    if not root.is_dir():
        raise TrackFormatError(f"{root}: not a folder of reasoning types")
    found = sorted(p.name for p in root.iterdir() if (p / "meta_annotation.json").is_file())
    if not found:
        raise TrackFormatError(f"{root}: no <type>/meta_annotation.json inside")
    types = [t for t in OPEN_TYPES if t in found] + [t for t in found if t not in OPEN_TYPES]
    queries = []
    for type_ in types:
        meta = _read_json(root / type_ / "meta_annotation.json")
        for entry in meta:
            _require(entry, ("query", "query_index", "program"), f"{root / type_}: meta_annotation")
            annotation = _read_json(root / type_ / str(entry["query_index"]) / "annotation.json")
            for item in annotation:
                _require(item, ("image", "answer"), f"{root / type_ / str(entry['query_index'])}: annotation")
            frames, labels = [a["image"] for a in annotation], [str(a["answer"]) for a in annotation]
            if shuffle:
                frames, labels = _shuffled(frames, labels)
            queries.append(TrackQuery(entry["query"], type_, entry["program"], frames, labels))
    return Track(name, "open", queries)


def _json_lines(entries: list[dict]) -> str:
    """A JSON list with one entry per line (compact, and diffs stay readable)."""
    return "[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n"


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrackFormatError(f"{path}: {exc}") from None


def _require(entry: object, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise TrackFormatError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise TrackFormatError(f"{where}: missing {', '.join(missing)}")
