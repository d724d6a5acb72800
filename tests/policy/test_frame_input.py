"""What the policy reads of a frame (``fmprog.contract.frame_input``) matches what each registered
algorithm does: one that reads no pixels decides with ``None``, one that reads pixels refuses it,
and every algorithm decides the same on what the router sends as on the whole frame."""

from __future__ import annotations

import numpy as np
import pytest

from fmprog.contract import FRAME_INPUTS, THUMBNAIL_SIDE, Feedback, FrameInput, PolicySpec, frame_input
from fmprog.images import decode_image, encode_png, thumbnail
from policy.algorithms import ALGORITHMS, build_policy
from policy.algorithms.base import Policy
from policy.features import SUBSAMPLE, frame_features
from policy.service import PolicyService
from policy.settings import PolicySettings
from tests.policy.conftest import SITE, SITES, make_spec
from tests.policy.test_algorithms import small_hyper

REGISTERED = sorted(ALGORITHMS)
SHAPES = [(48, 64), (37, 53), (90, 120), (20, 24), (64, 48), (33, 70)]


def random_frames(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8) for shape in SHAPES]


def as_sent(frame: np.ndarray, spec: PolicySpec) -> np.ndarray | None:
    """What the policy decodes of what the router sends for ``frame`` (the thumbnail as PNG)."""
    wanted = frame_input(spec)
    if wanted.pixels == "none":
        return None
    if wanted.pixels == "thumbnail":
        return decode_image(encode_png(thumbnail(frame, wanted.side)))
    return frame


def decisions(policy: Policy, frames: list[np.ndarray], given) -> list[dict]:
    """The policy's pending decisions on ``given(frame)`` for each frame, twice over, with feedback
    that depends on the frame and the choice after each (so what it learns shows in later ones)."""
    out = []
    for r in range(2):
        for i, frame in enumerate(frames):
            decision = policy.decide(given(frame))
            out.append(decision.model_dump())
            brightness = float(frame.mean()) / 255.0
            cheap = decision.backends[SITE] == "small"
            loss = float(cheap and brightness > 0.5) + 0.1 * ((i + r) % 3)
            executed = [SITE] if i % 2 else [s["id"] for s in SITES]
            costs = {
                s: {b["name"]: b["cost"] for site in SITES for b in site["backends"]}[decision.backends[s]]
                for s in executed
            }
            policy.observe(decision, Feedback(loss=loss, executed_sites=executed, costs=costs))
            policy.train()
    return out


def test_the_table_names_every_registered_algorithm_and_no_other():
    assert sorted(FRAME_INPUTS) == REGISTERED
    assert frame_input(make_spec("oracle")) == FrameInput(pixels="full")  # unknown: the whole frame
    assert frame_input(make_spec("fast")) == FrameInput(pixels="thumbnail", side=SUBSAMPLE)
    assert SUBSAMPLE == THUMBNAIL_SIDE


def test_a_frame_input_is_checked():
    with pytest.raises(ValueError, match="thumbnail needs its side"):
        FrameInput(pixels="thumbnail")
    with pytest.raises(ValueError, match="no other frame input has one"):
        FrameInput(pixels="none", side=32)
    with pytest.raises(ValueError, match="pixels"):
        FrameInput(pixels="half")


@pytest.mark.parametrize("algorithm", REGISTERED)
def test_decides_without_a_frame_iff_it_reads_no_pixels(algorithm):
    spec = make_spec(algorithm, seed=5, **small_hyper(algorithm))
    policy = build_policy(spec)
    if frame_input(spec).pixels == "none":
        decision = policy.decide(None)
        assert decision.algorithm == algorithm and set(decision.backends) == {s["id"] for s in SITES}
    else:
        with pytest.raises(ValueError, match=f"algorithm {algorithm} reads the frame: send one"):
            policy.decide(None)


@pytest.mark.parametrize("algorithm", REGISTERED)
def test_decides_the_same_on_what_the_router_sends_as_on_the_frame(algorithm):
    frames = random_frames(11)
    spec = make_spec(algorithm, seed=9, **small_hyper(algorithm))
    whole = decisions(build_policy(spec), frames, lambda frame: frame)
    sent = decisions(build_policy(spec), frames, lambda frame: as_sent(frame, spec))
    assert sent == whole


@pytest.mark.parametrize("algorithm", [a for a in REGISTERED if frame_input(make_spec(a)).pixels == "full"])
def test_the_thumbnail_would_not_do_for_an_algorithm_that_reads_the_whole_frame(algorithm):
    """Why ``structured`` and ``structured_code`` are sent the frame: on its thumbnail they decide
    otherwise (so the comparison above can tell a wrong table entry)."""
    frames = random_frames(12)
    spec = make_spec(algorithm, seed=9, **small_hyper(algorithm))
    whole = decisions(build_policy(spec), frames, lambda frame: frame)
    small = decisions(build_policy(spec), frames, lambda frame: thumbnail(frame, THUMBNAIL_SIDE))
    assert [d["scores"] for d in small] != [d["scores"] for d in whole]


def test_features_of_the_thumbnail_are_the_frames_bit_for_bit():
    for frame in random_frames(13):
        small = thumbnail(frame, THUMBNAIL_SIDE)
        assert np.array_equal(thumbnail(small, THUMBNAIL_SIDE), small)
        assert frame_features(small).tobytes() == frame_features(frame).tobytes()


def test_the_service_passes_no_frame_through(tmp_path):
    service = PolicyService(PolicySettings(state_dir=tmp_path / "state"))
    service.restore()
    try:
        service.put("cascade", make_spec("cascade"))
        service.put("fast", make_spec("fast"))
        decision = service.decide("cascade", "d1", None)
        assert decision.algorithm == "cascade" and decision.gates
        with pytest.raises(ValueError, match="algorithm fast reads the frame: send one"):
            service.decide("fast", "d2", None)
        assert service.info("cascade").pending == 1 and service.info("fast").pending == 0
        frame = random_frames(14)[0]
        assert service.decide("fast", "d2", thumbnail(frame, THUMBNAIL_SIDE)).algorithm == "fast"
    finally:
        service.close()
