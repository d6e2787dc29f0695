"""HoVer-Net post-processing (reference d.3-d.5): HV watershed and per-instance types."""

from __future__ import annotations

import numpy as np
import pytest

from napari_scribble_refine.core.hovernet_postprocess import (
    _sobel_taps,
    hv_instances,
    instance_info,
    instance_type,
)

DISKS = [(30, 30, 10), (30, 47, 10), (70, 65, 14), (72, 20, 6), (10, 85, 1.5)]


def d5_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The reference's 96x96 scene (d.5): probability, hv, type map and ownership."""
    yy, xx = np.mgrid[0:96, 0:96]
    owner = np.full((96, 96), -1)
    best = np.full((96, 96), np.inf)
    for i, (cy, cx, r) in enumerate(DISKS):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        take = (d2 <= r * r) & (d2 < best)  # earlier disk wins exact ties
        owner[take] = i
        best[take] = d2[take]
    prob = np.where(owner >= 0, 0.95, 0.05).astype(np.float32)
    hv = np.zeros((2, 96, 96), np.float32)
    types = np.zeros((96, 96), np.float32)
    for i, (cy, cx, r) in enumerate(DISKS):
        m = owner == i
        hv[0][m] = np.clip((xx[m] - cx) / r, -1, 1)
        hv[1][m] = np.clip((yy[m] - cy) / r, -1, 1)
    types[owner == 0] = 1
    types[owner == 1] = 2
    types[owner == 3] = 4
    types[owner == 4] = 1
    c = owner == 2
    types[c & (xx - 65 >= 2)] = 3
    return prob, hv, types, owner


def test_sobel_taps_match_opencv_size_21():
    deriv, smooth = _sobel_taps(21)
    expected = [-1, -18, -152, -798, -2907, -7752, -15504, -23256, -25194, -16796, 0]
    assert deriv[:11].tolist() == expected
    assert deriv[11:].tolist() == [-v for v in expected[:10][::-1]]
    assert smooth[[0, 1, 2, 10, 20]].tolist() == [1, 20, 190, 184756, 1]


def test_d5_scene_counts():
    _, _, types, owner = d5_scene()
    assert [int((owner == i).sum()) for i in range(5)] == [307, 307, 613, 113, 9]
    c = owner == 2
    assert int((types[c] == 0).sum()) == 348 and int((types[c] == 3).sum()) == 265


def test_d5_scene_gives_the_official_instances():
    prob, hv, types, owner = d5_scene()
    labels = hv_instances(prob, hv)
    info = instance_info(labels, types)
    assert len(info) == 4
    table = [
        # area, centroid (y, x), bbox ((r0, c0), (r1, c1)), type, type_prob
        (307, (30.0, 29.7036), ((20, 20), (41, 39)), 1, 1.0),
        (307, (30.0, 47.2964), ((20, 39), (41, 58)), 2, 1.0),
        (613, (70.0, 65.0), ((56, 51), (85, 80)), 3, 0.4323),
        (113, (72.0, 20.0), ((66, 14), (79, 27)), 4, 1.0),
    ]
    for (_, entry), (area, centroid, bbox, typ, prob_t) in zip(
        sorted(info.items()), table, strict=True
    ):
        assert entry["area"] == area
        assert entry["centroid"] == pytest.approx(centroid, abs=1e-4)
        assert entry["bbox"] == bbox
        assert entry["type"] == typ
        assert entry["type_prob"] == pytest.approx(prob_t, abs=1e-4)
    # A and B are split exactly along the ownership boundary; E (9 px) is removed
    ids = sorted(info)
    for iid, disk in zip(ids, [0, 1, 2, 3], strict=True):
        assert np.array_equal(labels == iid, owner == disk)
    assert not labels[owner == 4].any()


def test_two_touching_nuclei_are_split():
    yy, xx = np.mgrid[0:64, 0:80]
    centres = [(32, 28, 12), (32, 50, 12)]
    owner = np.full((64, 80), -1)
    best = np.full((64, 80), np.inf)
    for i, (cy, cx, r) in enumerate(centres):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        take = (d2 <= r * r) & (d2 < best)
        owner[take] = i
        best[take] = d2[take]
    prob = np.where(owner >= 0, 0.9, 0.1).astype(np.float32)
    hv = np.zeros((2, 64, 80), np.float32)
    for i, (cy, cx, r) in enumerate(centres):
        m = owner == i
        hv[0][m] = (xx[m] - cx) / r
        hv[1][m] = (yy[m] - cy) / r
    # the two disks form one connected foreground component
    from scipy import ndimage as ndi

    assert ndi.label(owner >= 0)[1] == 1
    labels = hv_instances(prob, hv)
    ids = [i for i in np.unique(labels) if i]
    assert len(ids) == 2
    for i in ids:
        agree = np.bincount(owner[labels == i] + 1).max() / (labels == i).sum()
        assert agree > 0.97


def test_empty_and_constant_maps():
    prob = np.zeros((32, 32), np.float32)
    hv = np.zeros((2, 32, 32), np.float32)
    assert not hv_instances(prob, hv).any()
    assert instance_info(np.zeros((8, 8), int)) == {}
    with pytest.raises(ValueError, match="hv"):
        hv_instances(prob, hv[:1])


def test_instance_type_rule():
    assert instance_type(np.array([0, 0, 0, 2, 2, 1])) == (2, pytest.approx(2 / 6, abs=1e-6))
    assert instance_type(np.array([0, 0]))[0] == 0
    assert instance_type(np.array([3, 3, 1, 1, 0]))[0] == 1  # ties: smaller id first


def test_keep_unmarked_keeps_nuclei_whose_markers_vanish():
    # A nucleus with a flat (uninformative) HV map everywhere: the edge map is high on the
    # whole foreground, so no marker survives and the official rule returns nothing.
    prob = np.zeros((64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    prob[(yy - 32) ** 2 + (xx - 32) ** 2 <= 100] = 0.9
    hv = np.random.default_rng(0).normal(0, 1, (2, 64, 64)).astype(np.float32)
    official = hv_instances(prob, hv)
    kept = hv_instances(prob, hv, keep_unmarked=True)
    fg = prob >= 0.5
    assert np.array_equal(kept[official > 0], official[official > 0])
    assert np.all(kept[fg] > 0)
    assert np.all(kept[~fg] == 0)
    assert (official[fg] == 0).any()
