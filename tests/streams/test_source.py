"""Stream sources: the one-frame mailbox, sampling a real video by presentation time, resuming a
file where it was left, and what a refused source or a logged URL says."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fmprog.streams.source import (
    LatestFrame,
    SampledFrame,
    SourceError,
    StreamReader,
    check_source,
    open_source,
    redacted,
    sampled,
)
from fmprog.vision.video import SAMPLE_VIDEOS

VIDEO = SAMPLE_VIDEOS / "vtest.avi"
needs_video = pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} is missing (Debian's opencv-doc)")


def frame(index: int) -> SampledFrame:
    return SampledFrame(index=index, pts=index / 10, image=np.zeros((2, 2, 3), np.uint8), received=time.monotonic())


def test_the_mailbox_keeps_the_latest_frame_and_says_which_were_dropped():
    box = LatestFrame()
    assert box.take(0.01) is None
    assert box.put(frame(0)) is False
    assert box.put(frame(1)) is True  # frame 0 was never taken: dropped
    assert box.take(0.01).index == 1 and box.take(0.01) is None
    threading.Timer(0.05, box.put, [frame(2)]).start()
    assert box.take(2).index == 2  # a waiting consumer wakes for a new frame


@needs_video
def test_a_file_is_sampled_by_presentation_time_and_resumed_where_it_was_left():
    container = open_source(str(VIDEO), 5)
    try:
        frames = []
        for item in sampled(container, 4, pace=False, stopped=threading.Event()):
            frames.append(item)
            if len(frames) == 6:
                break
    finally:
        container.close()
    assert [f.index for f in frames] == [0, 1, 2, 3, 4, 5]  # 4 a second from a 10 fps file
    # each the first frame whose time rounds to the next quarter second (a frame 0.1 s early is nearest)
    assert [f.pts for f in frames] == pytest.approx([0.0, 0.2, 0.4, 0.7, 0.9, 1.2])
    assert frames[0].image.shape == (576, 768, 3) and frames[0].image.dtype == np.uint8

    container = open_source(str(VIDEO), 5)
    try:
        resumed = next(iter(sampled(container, 10, start_pts=30.0, pace=False, stopped=threading.Event())))
    finally:
        container.close()
    assert resumed.index == 300 and resumed.pts == pytest.approx(30.0)


@needs_video
def test_a_file_is_read_at_its_own_pace_and_ends():
    box = LatestFrame()
    reader = StreamReader(str(VIDEO), 10, box, start_pts=78.5).start()  # the last second of the file
    started = time.monotonic()
    taken = []
    while reader.state != "ended" and time.monotonic() - started < 10:
        item = box.take(0.2)
        if item is not None:
            taken.append(item.index)
    reader.stop()
    assert reader.state == "ended" and taken[-1] == 794
    assert time.monotonic() - started >= 0.7  # about a second of video took about a second
    assert reader.counters.received == len(taken) + reader.counters.dropped


def test_sources_are_refused_with_the_reason(tmp_path: Path):
    (tmp_path / "clip.avi").write_bytes(b"")
    assert check_source((tmp_path / "clip.avi").as_uri(), [tmp_path]) == str(tmp_path / "clip.avi")
    assert check_source("rtsp://camera.local:8554/live", []) == "rtsp://camera.local:8554/live"
    cases = {
        "ftp://camera/live": "the scheme must be one of",
        (tmp_path / "clip.avi").as_uri(): "file sources are not allowed here",
        "file:///etc/hostname": "files are allowed only under",
        "https:///x": "names no host",
    }
    for source, says in cases.items():
        roots = [] if "not allowed" in says else [tmp_path]
        with pytest.raises(SourceError, match=says):
            check_source(source, roots)
    with pytest.raises(SourceError, match="files are allowed only under"):
        check_source((tmp_path / ".." / "elsewhere.avi").as_uri(), [tmp_path])  # no way out by ..


def test_a_logged_url_hides_its_password():
    assert redacted("rtsp://admin:hunter2@10.0.0.7:554/stream1") == "rtsp://admin:***@10.0.0.7:554/stream1"
    assert redacted("rtsp://10.0.0.7/stream1") == "rtsp://10.0.0.7/stream1"
