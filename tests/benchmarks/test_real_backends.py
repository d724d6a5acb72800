"""The real-image configuration's costs are the multiply-adds its backends' networks count."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.real_backends import counted_macs, darknet_macs, hog_macs
from fmprog.backends import Function, load_catalog
from fmprog.backends.engine_config import HogEngineOptions

REAL = Path(__file__).resolve().parents[2] / "fmprog" / "configs" / "real.yaml"


def test_each_detect_and_vqa_cost_of_real_yaml_is_its_counted_multiply_adds():
    catalog = load_catalog(REAL)
    vision = [spec for spec in catalog.backends if spec.function in (Function.detect, Function.vqa)]
    assert len(vision) == 4
    for spec in vision:
        assert spec.cost == pytest.approx(counted_macs(spec), abs=1), spec.name


def test_a_darknet_network_costs_its_convolutions_at_each_size_it_runs_at():
    yolo = load_catalog(REAL).get("detect-yolo320").engine.model
    at_320, at_608 = darknet_macs(yolo), darknet_macs(yolo.model_copy(update={"input_size": 608}))
    assert at_608 / at_320 == pytest.approx((608 / 320) ** 2, rel=0.02)  # convolutions grow with the area
    merged = yolo.model_copy(update={"input_size": 608, "merged_sizes": [320]})
    assert darknet_macs(merged) == pytest.approx(at_608 + at_320)


def test_hog_costs_less_on_a_smaller_frame():
    full = hog_macs(HogEngineOptions(kind="hog"))
    assert 100 < full < 1000 and hog_macs(HogEngineOptions(kind="hog", resize=0.5)) < full / 3
