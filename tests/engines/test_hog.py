"""The HOG people detector (OpenCV's HOG descriptor and linear SVM) as a backend (tests.real_backends'
hog_spec: real.yaml leaves it out), on vtest.avi's pedestrians."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from fmprog.backends import BackendSpec
from fmprog.backends.base import box_iou
from fmprog.engines import EngineError, build_engine
from fmprog.engines.hog import HogEngine
from tests.engines.vision_data import vtest_frames
from tests.real_backends import hog_spec

pytest.importorskip("cv2", reason="opencv-python<5 is not installed")

WIDTH, HEIGHT = 768, 576


@pytest.fixture(scope="module")
def hog() -> Iterator[HogEngine]:
    engine = build_engine(hog_spec())
    assert isinstance(engine, HogEngine)
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return vtest_frames((0,))[0]


def test_people_are_found_on_a_vtest_frame_person_shaped_and_inside_it(hog, frame):
    [people] = hog.detect_batch([frame], ["person"])
    assert len(people) >= 1
    assert [d.score for d in people] == sorted((d.score for d in people), reverse=True)
    for d in people:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT
        assert y1 - y0 > 1.5 * (x1 - x0)  # the detection window is 64 x 128
        assert hog.hog_options.confidence <= d.score < 1


def test_people_by_another_name_are_the_same_boxes(hog, frame):
    assert hog.detect_batch([frame], ["pedestrians"]) == hog.detect_batch([frame], ["person"])


@pytest.mark.parametrize("noun", ["car", "vehicle", "dog", "octopus"])
def test_anything_but_a_person_finds_nothing(hog, frame, noun):
    assert hog.detect_batch([frame], [noun]) == [[]]


def test_a_bicycle_is_not_a_person(hog, frame):
    assert hog.detect_batch([frame], ["bicycle"]) == [[]]


def test_a_frame_smaller_than_the_window_finds_nothing(hog, frame):
    assert hog.detect_batch([frame[:100, :60]], ["person"]) == [[]]


def test_an_enlarged_frame_finds_smaller_people_with_boxes_in_the_frames_pixels(hog, frame):
    data = hog_spec().model_dump(mode="json")
    data["engine"]["resize"] = 1.5  # people shorter than the 128-px window are found only enlarged
    enlarged = build_engine(BackendSpec.model_validate(data))
    enlarged.load()
    [more] = enlarged.detect_batch([frame], ["person"])
    [people] = hog.detect_batch([frame], ["person"])
    assert len(more) > len(people)
    for d in people:  # the boxes found at both sizes are the same people, in the frame's pixels
        assert max(box_iou(d.box, m.box) for m in more) > 0.5
    for d in more:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT


def test_detection_before_load_is_refused():
    engine = build_engine(hog_spec())
    with pytest.raises(EngineError, match="not loaded"):
        engine.detect_batch([np.zeros((200, 100, 3), np.uint8)], ["person"])
