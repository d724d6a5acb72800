"""The frame a run answers, shared once with remote clients: where a crop lies in its frame, what is
shared per run, and what the serving side cuts back out."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fmprog.backends.frames import FramePart, answering, frame_region, shared_part

FRAME = np.arange(40 * 60 * 3, dtype=np.uint32).astype(np.uint8).reshape(40, 60, 3)


def test_a_crop_is_found_at_its_place_and_cut_back_out_identically():
    for row, column, height, width in [(0, 0, 40, 60), (3, 7, 10, 20), (39, 59, 1, 1), (12, 0, 5, 60)]:
        crop = FRAME[row : row + height, column : column + width]
        assert frame_region(FRAME, crop) == (row, column, height, width)
        part = FramePart("the frame", (row, column, height, width))
        np.testing.assert_array_equal(part.cut(FRAME), crop)


def test_what_is_not_a_plain_crop_of_the_frame_has_no_place():
    other = FRAME.copy()
    assert frame_region(FRAME, other) is None  # the same pixels, other memory
    assert frame_region(FRAME, FRAME[::2]) is None  # strided: not a crop
    assert frame_region(FRAME, FRAME[:, :, :2]) is None  # channels cut
    assert frame_region(FRAME, FRAME[:, ::-1]) is None  # mirrored
    assert frame_region(FRAME, FRAME[5:5]) is None  # empty
    assert frame_region(FRAME, FRAME.astype(np.int16)) is None
    assert frame_region(FRAME, FRAME[..., 0]) is None  # one channel: 2-D


@pytest.mark.parametrize("region", [(0, 0, 41, 60), (-1, 0, 4, 4), (0, 0, 0, 5), (0, 58, 4, 4), (0.5, 0, 2, 2)])
def test_a_part_that_does_not_fit_its_frame_is_refused(region):
    with pytest.raises(ValueError, match="region"):
        FramePart("the frame", region).cut(FRAME)


def test_the_frame_is_shared_once_per_run_and_only_inside_the_run():
    shared = []

    def share(frame: np.ndarray) -> str:
        shared.append(frame)
        return f"ref{len(shared)}"

    assert shared_part(FRAME, "ray", share) is None  # not answering
    with answering(FRAME):
        first = shared_part(FRAME[2:6, 3:9], "ray", share)
        second = shared_part(FRAME, "ray", share)
        assert shared_part(FRAME.copy(), "ray", share) is None
    assert first == FramePart("ref1", (2, 3, 4, 6))
    assert second == FramePart("ref1", (0, 0, 40, 60))
    assert len(shared) == 1 and shared[0] is FRAME
    with answering(FRAME):  # the next run shares again
        assert shared_part(FRAME, "ray", share) == FramePart("ref2", (0, 0, 40, 60))
    assert shared_part(FRAME, "ray", share) is None


def test_a_small_frame_is_not_shared():
    with answering(FRAME):
        assert shared_part(FRAME, "ray", lambda f: "ref", min_bytes=FRAME.nbytes + 1) is None
        assert shared_part(FRAME, "ray", lambda f: "ref", min_bytes=FRAME.nbytes) is not None


def test_runs_in_other_threads_have_their_own_frames():
    seen = {}

    def run(name: str, frame: np.ndarray) -> None:
        with answering(frame):
            barrier.wait()
            seen[name] = shared_part(frame, "ray", lambda f: name)

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=run, args=(n, FRAME.copy())) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen["a"].frame == "a" and seen["b"].frame == "b"
