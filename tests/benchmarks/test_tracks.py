"""The authors' track formats: written and read back, refused with a clear error when malformed,
and image references resolved (generated scenes, COCO ids, files)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from benchmarks.vqa.queries import NOT_APPLICABLE, binary_queries, open_queries
from benchmarks.vqa.tracks import (
    ImageResolver,
    Track,
    TrackFormatError,
    build_streams,
    load_binary,
    load_open,
    save_binary,
    save_open,
)
from fmprog.scene.generator import generate_scene


@pytest.fixture(scope="module")
def small_streams():
    specs = [binary_queries()[0], binary_queries()[14], open_queries()[0], open_queries()[16]]
    return build_streams(specs, binary_frames=60, binary_positives=3, open_frames=30)


def test_streams_have_their_quotas(small_streams):
    binary, relation, spatial, count = small_streams
    assert Counter(binary.labels) == {"yes": 3, "no": 57}
    assert Counter(relation.labels) == {"yes": 3, "no": 57}
    assert Counter(spatial.labels)[NOT_APPLICABLE] == 12 and len(spatial.labels) == 30
    assert Counter(count.labels)[NOT_APPLICABLE] == 12


def test_binary_round_trip_in_the_authors_format(small_streams, tmp_path):
    save_binary(small_streams[:2], tmp_path / "binary.json")
    entries = json.loads((tmp_path / "binary.json").read_text())
    assert set(entries[0]) >= {"query", "code", "positive_images", "negative_images"}
    track = load_binary(tmp_path / "binary.json")
    for original, loaded in zip(small_streams[:2], track.queries, strict=True):
        assert (loaded.query, loaded.program, loaded.type) == (original.query, original.program, original.type)
        assert sorted(zip(loaded.frames, loaded.labels, strict=True)) == sorted(
            zip(original.frames, original.labels, strict=True)
        )
    again = load_binary(tmp_path / "binary.json")
    assert again.queries[0].frames == track.queries[0].frames  # shuffled with seed 42, deterministic
    cut = track.subset(frames=20).queries[0]
    assert Counter(cut.labels) == {"yes": 1, "no": 19}
    assert cut.frames == [f for f in track.queries[0].frames if f in set(cut.frames)]  # stream order kept


def test_open_round_trip_in_the_authors_layout(small_streams, tmp_path):
    save_open(small_streams[2:], tmp_path / "open")
    assert (tmp_path / "open" / "spatial" / "meta_annotation.json").is_file()
    assert (tmp_path / "open" / "numerical" / "0" / "annotation.json").is_file()
    track = load_open(tmp_path / "open")
    assert [q.type for q in track.queries] == ["spatial", "numerical"]
    for original, loaded in zip(small_streams[2:], track.queries, strict=True):
        assert sorted(zip(loaded.frames, loaded.labels, strict=True)) == sorted(
            zip(original.frames, original.labels, strict=True)
        )
    cut = track.subset(queries_per_type=1, frames=10)
    for q in cut.queries:
        assert 8 <= len(q.frames) <= 13 and Counter(q.labels)[NOT_APPLICABLE] == 4  # the label mix is kept


def test_malformed_tracks_are_refused_by_name(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"query": "q", "code": "x"}]))
    with pytest.raises(TrackFormatError, match="missing positive_images, negative_images"):
        load_binary(bad)
    bad.write_text("{not json")
    with pytest.raises(TrackFormatError, match=r"bad\.json"):
        load_binary(bad)
    with pytest.raises(TrackFormatError, match=r"no <type>/meta_annotation\.json"):
        load_open(tmp_path)


def test_image_references_resolve(tmp_path):
    scene = generate_scene(7, "hard")
    assert np.array_equal(ImageResolver()("scene/hard/7"), scene.image)
    (tmp_path / "train2017").mkdir()
    pixels = np.zeros((8, 6, 3), np.uint8)
    pixels[..., 0] = 200
    Image.fromarray(pixels).save(tmp_path / "train2017" / "000000000042.jpg", quality=100)
    coco = ImageResolver(coco_root=tmp_path, images_root=tmp_path)
    assert coco(42).shape == (8, 6, 3) and coco("42").shape == (8, 6, 3)
    assert coco("train2017/000000000042.jpg").shape == (8, 6, 3)
    with pytest.raises(TrackFormatError, match="COCO id: give the COCO root"):
        ImageResolver()(42)
    with pytest.raises(TrackFormatError, match="cannot read image"):
        coco(43)
    with pytest.raises(TrackFormatError, match="bad scene reference"):
        ImageResolver()("scene/hard/x")


def test_a_subset_takes_queries_per_type_then_at_most_so_many_cut_to_their_label_mix(small_streams):
    track = Track("binary", "binary", small_streams[:2])  # one attributes query, one relations query
    assert [q.type for q in track.subset(queries_per_type=1).queries] == ["attributes", "relations"]
    cut = track.subset(queries_per_type=1, frames=20, queries=1).queries
    assert [q.query for q in cut] == [small_streams[0].query]
    assert Counter(cut[0].labels) == {"yes": 1, "no": 19}
