"""Frames of a real video file through PyAV: decoded in order as far as asked, kept read-only."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.vision.video import SAMPLE_VIDEOS, VideoError, VideoFrames, video_frames

VTEST = SAMPLE_VIDEOS / "vtest.avi"
needs_video = pytest.mark.skipif(not VTEST.is_file(), reason="Debian's opencv-doc is not installed")


@needs_video
def test_frames_are_decoded_as_far_as_asked_and_kept():
    video = VideoFrames(VTEST)
    third = video[2]
    assert third.shape == (576, 768, 3) and third.dtype == np.uint8
    assert len(video._frames) == 3  # decoded as far as frame 2, not the whole file
    assert video[2] is third and not third.flags.writeable
    first = next(video_frames(VTEST))
    assert np.array_equal(video[0], first) and not np.array_equal(video[0], video[2])


@needs_video
def test_the_whole_video_has_its_795_frames_and_no_more():
    video = VideoFrames(VTEST)
    assert len(video) == 795
    with pytest.raises(VideoError, match="has 795 frames, no frame 795"):
        video[795]
    with pytest.raises(VideoError, match="numbered from 0"):
        video[-1]


def test_a_missing_or_undecodable_file_is_a_clear_error(tmp_path):
    with pytest.raises(VideoError, match="no video file"):
        VideoFrames(tmp_path / "absent.avi")[0]
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoError, match="cannot decode"):
        VideoFrames(junk)[0]
