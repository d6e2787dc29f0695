"""Type strokes teach a classifier that retypes look-alike nuclei (core.type_classifier)."""

from __future__ import annotations

import numpy as np
from _tiny_nets import disk_labels, fraction, scribble_disks

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.session import RefineSession
from napari_scribble_refine.core.type_classifier import (
    classify_types,
    feature_image,
    pixel_features,
)


def _two_kinds(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bright small nuclei (true type 2) and dim large ones (true type 3) on a dark field."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.1, 0.02, size=(160, 160))
    instances = np.zeros((160, 160), dtype=np.int32)
    truth = {}
    yy, xx = np.mgrid[:160, :160]
    label = 0
    for row in range(4):
        for col in range(4):
            label += 1
            bright = (row + col) % 2 == 0
            cy, cx, r = 20 + 40 * row, 20 + 40 * col, (6 if bright else 12)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            image[disk] = rng.normal(0.9 if bright else 0.45, 0.03, size=int(disk.sum()))
            instances[disk] = label
            truth[label] = 2 if bright else 3
    return np.clip(image, 0, 1), instances, truth


def _classify(image, instances, class_map, scribbles, **kw):
    cached = feature_image(image)
    return classify_types(lambda m: cached[m], instances, class_map, scribbles, **kw)


def test_two_type_strokes_retype_every_look_alike_nucleus() -> None:
    image, instances, truth = _two_kinds()
    class_map = np.where(instances > 0, 1, 0)  # the model calls every nucleus type 1
    scribbles = np.zeros_like(instances, dtype=np.uint8)
    scribbles[instances == 1] = 3  # nucleus 1 (bright) is type 2
    scribbles[instances == 2] = 4  # nucleus 2 (dim) is type 3
    out = _classify(image, instances, class_map, scribbles)
    for label, kind in truth.items():
        if label <= 2:
            continue  # scribbled nuclei are typed by their strokes (type_by_instance)
        assert set(np.unique(out[instances == label])) == {kind}, label
    assert np.array_equal(out == 0, instances == 0)  # background stays background


def test_one_type_stroke_moves_only_the_nuclei_that_look_like_it() -> None:
    """A stroke on one bright nucleus retypes the bright ones; the dim ones keep type 1."""
    image, instances, truth = _two_kinds()
    class_map = np.where(instances > 0, 1, 0)
    scribbles = np.zeros_like(instances, dtype=np.uint8)
    scribbles[instances == 1] = 3  # nucleus 1 (bright) is type 2
    before = (image.copy(), instances.copy(), class_map.copy(), scribbles.copy())
    out = _classify(image, instances, class_map, scribbles)
    for label, kind in truth.items():
        if label > 1:
            expected = 2 if kind == 2 else 1
            assert set(np.unique(out[instances == label])) == {expected}, label
    for a, b in zip(before, (image, instances, class_map, scribbles), strict=True):
        assert np.array_equal(a, b)  # the inputs stay as they were


def test_the_networks_types_win_when_they_weigh_as_much_as_the_strokes() -> None:
    """``prior_weight`` is the network's say: equal to a stroke's, look-alikes stay."""
    image, instances, truth = _two_kinds()
    class_map = np.where(instances > 0, 1, 0)
    scribbles = np.zeros_like(instances, dtype=np.uint8)
    scribbles[instances == 1] = 3
    out = _classify(image, instances, class_map, scribbles, prior_weight=100.0)
    assert np.array_equal(out[instances > 1], class_map[instances > 1])


def test_no_type_stroke_changes_nothing() -> None:
    image, instances, _ = _two_kinds()
    class_map = np.where(instances > 0, 2, 0)
    scribbles = np.zeros_like(instances, dtype=np.uint8)
    scribbles[instances == 2] = 1  # background only
    assert np.array_equal(_classify(image, instances, class_map, scribbles), class_map)


def test_feature_image_is_standardised_and_sees_the_square() -> None:
    image = np.zeros((32, 32, 3))
    image[8:16, 8:16] = 1.0
    feats = feature_image(image)
    mask = np.zeros((32, 32), dtype=bool)
    mask[10, 10] = mask[30, 30] = True
    assert np.array_equal(pixel_features(image, mask), feats[mask])  # the large-slice path
    assert feats.shape[:2] == (32, 32) and feats.dtype == np.float32
    flat = feats.reshape(-1, feats.shape[-1])
    assert np.allclose(flat.mean(0), 0, atol=1e-4)
    assert feats[10, 10, 0] > feats[30, 30, 0]  # smoothed intensity: inside, then outside


def test_session_type_strokes_retype_unscribbled_look_alikes(model3, scene) -> None:
    """With ``type_classifier`` two type strokes retype the whole image; off, only their
    nuclei.

    The network calls every disk class 1 (it never predicts class 2); the user says bright
    disks are class 2 and dim ones class 1, with one stroke on one disk of each kind.
    """
    image, kinds = scene
    scribbles = np.zeros(kinds.shape, np.uint8)
    scribble_disks(scribbles, kinds, 1, [0], value=3)  # bright disk 0 is class 2
    scribble_disks(scribbles, kinds, 2, [0], value=2)  # dim disk 0 is class 1
    bright, _ = disk_labels(kinds, 1)
    dim, _ = disk_labels(kinds, 2)
    others_bright = (bright > 1) & (kinds == 1)
    others_dim = (dim > 1) & (kinds == 2)
    base = RefineConfig(device="cpu", max_iterations=10, crf_weight=0.0, type_classifier=False)
    off = RefineSession(model3, image, base).run(scribbles).prediction
    others_dim &= off > 0  # the network misses some dim pixels; typing concerns nuclei
    assert fraction(off, others_bright, 1) > 0.9 and fraction(off, others_dim, 1) > 0.9
    on = RefineSession(model3, image, base.replace(type_classifier=True)).run(scribbles)
    assert fraction(on.prediction, others_bright, 2) > 0.9
    assert fraction(on.prediction, others_dim, 1) > 0.9
