"""The backends of fmprog/configs/real.yaml picked by what they are (their engine, cheapest first)
rather than by name, so that tests of the real-image backends outlive a renaming."""

from __future__ import annotations

from pathlib import Path

from fmprog.backends import BackendCatalog, BackendSpec, load_catalog

REAL_CONFIG = Path(__file__).resolve().parents[1] / "fmprog" / "configs" / "real.yaml"


def real_catalog() -> BackendCatalog:
    return load_catalog(REAL_CONFIG)


def by_engine(kind: str, catalog: BackendCatalog | None = None) -> list[BackendSpec]:
    """The backends served by engine ``kind`` (hog, darknet, classifier...), cheapest first."""
    catalog = catalog or real_catalog()
    specs = [spec for spec in catalog.backends if spec.engine is not None and spec.engine.kind == kind]
    return sorted(specs, key=lambda spec: spec.cost)


def hog_spec() -> BackendSpec:
    """OpenCV's HOG people detector as a backend (real.yaml leaves it out: slower than YOLOv3-tiny at
    320 px on this machine, and it sees fewer people), with its person-only vocabulary."""
    return BackendSpec.model_validate(
        {
            "name": "detect-hog",
            "function": "detect",
            "cost": 263,
            "engine": {"kind": "hog", "resize": 1.0, "threads": 1},
            "vocabulary": {"nouns": "person"},
        }
    )


def yolo_specs() -> tuple[BackendSpec, BackendSpec]:
    """The YOLOv3-tiny backends: at 320 px, then at 608 px."""
    small, large = by_engine("darknet")
    assert (small.engine.model.input_size, large.engine.model.input_size) == (320, 608)
    return small, large


def classifier_specs() -> tuple[BackendSpec, BackendSpec]:
    """The classifier VQA backends: EfficientNet-Lite0, then Lite2."""
    small, large = by_engine("classifier")
    assert (small.engine.architecture, large.engine.architecture) == ("efficientnet-lite0", "efficientnet-lite2")
    return small, large
