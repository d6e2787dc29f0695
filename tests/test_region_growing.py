import numpy as np
import pytest
from _tiny_nets import readonly

from napari_scribble_refine.core.region_growing import (
    grow_scribbles,
    neighbour_offsets,
    robust_intensity_range,
)


def _seed(shape, *points_and_values):
    scribbles = np.zeros(shape, dtype=np.int32)
    for point, value in points_and_values:
        scribbles[point] = value
    return scribbles


def _flat(shape):
    """All 0 but the last corner pixel (1): too few for the percentiles, so the range is its
    min/max, [0, 1]."""
    image = np.zeros(shape)
    image[(-1,) * len(shape)] = 1.0
    return image


def _step_image(contrast):
    """Left half 0, right half ``contrast``; two top rows of 1 (10 %) fix the range to [0, 1]."""
    image = np.zeros((20, 40))
    image[:, 20:] = contrast
    image[:2] = 1.0
    return image


def test_flat_image_growth_capped_at_max_distance():
    image = _flat((41, 41))
    seed = _seed(image.shape, ((20, 20), 2))
    four = grow_scribbles(image, seed, threshold=0.05, max_distance=5, connectivity=1)
    ys, xs = np.nonzero(four)
    assert (np.abs(ys - 20) + np.abs(xs - 20)).max() == 5
    assert (four == 2).sum() == 2 * 5 * 6 + 1  # the L1 diamond of radius 5
    eight = grow_scribbles(image, seed, threshold=0.05, max_distance=5, connectivity=2)
    assert (eight == 2).sum() == 11 * 11


def test_distance_is_geodesic_around_an_obstacle():
    image = np.zeros((30, 30))
    image[:, 10] = 1.0  # a wall at x = 10 with a gap at the top
    image[0, 10] = 0.0
    seed = _seed(image.shape, ((10, 5), 2))
    near = grow_scribbles(image, seed, threshold=0.1, max_distance=8)
    assert near[2, 5] == 2 and near[1, 5] == 0  # 8 and 9 steps
    assert near[10, 11] == 0  # 6 steps as the crow flies, but behind the wall
    # through the gap: 10 up, 5 right to (0, 10), 1 right, 10 down = 26 steps
    assert grow_scribbles(image, seed, threshold=0.1, max_distance=25)[10, 11] == 0
    assert grow_scribbles(image, seed, threshold=0.1, max_distance=26)[10, 11] == 2


@pytest.mark.parametrize(
    ("contrast", "threshold", "crosses"), [(0.3, 0.2, False), (0.3, 0.5, True)]
)
def test_growth_stops_at_an_edge_of_contrast_above_threshold(contrast, threshold, crosses):
    image = _step_image(contrast)
    seed = _seed(image.shape, ((10, 15), 2))
    grown = grow_scribbles(image, seed, threshold=threshold, max_distance=10)
    assert grown[10, 19] == 2
    assert (grown[:, 20:] == 2).any() == crosses


def test_threshold_is_strict_and_zero_disables_growth():
    image = _step_image(0.25)
    seed = _seed(image.shape, ((10, 19), 2))
    assert grow_scribbles(image, seed, threshold=0.25, max_distance=3)[10, 20] == 0
    np.testing.assert_array_equal(grow_scribbles(image, seed, threshold=0, max_distance=3), seed)
    np.testing.assert_array_equal(grow_scribbles(image, seed, threshold=1, max_distance=0), seed)


def test_never_enters_another_scribble_and_class_zero_does_not_grow():
    image = _flat((21, 21))
    scribbles = np.zeros(image.shape, dtype=np.int32)
    scribbles[:, 12] = 3  # a wall of class 2 scribbles
    scribbles[10, 5] = 2
    grown = grow_scribbles(image, readonly(scribbles), threshold=0.5, max_distance=20)
    np.testing.assert_array_equal(grown[:, 12], 3)
    assert (grown[10, :8] == 2).all()  # class 1 grows on its side of the wall ...
    assert not (grown[:, 12:] == 2).any()  # ... and never through it
    assert (grown[:, 13:20] == 3).all()  # the wall's own class grows too
    empty = np.zeros(image.shape, dtype=np.int32)
    assert not grow_scribbles(image, empty, threshold=0.5, max_distance=5).any()


def test_contested_pixel_stays_unclaimed():
    image = _flat((5, 9))
    seed = _seed(image.shape, ((2, 2), 1), ((2, 6), 2))
    grown = grow_scribbles(image, seed, threshold=0.5, max_distance=4)
    assert grown[2, 4] == 0  # equidistant: both offer it in the same step
    assert grown[2, 3] == 1 and grown[2, 5] == 2
    np.testing.assert_array_equal(grown[:4, 4], 0)  # the tie line stays a border
    assert (grown[:4, :4] == 1).all() and (grown[:4, 5:] == 2).all()


def test_background_scribbles_grow_too():
    image = _flat((9, 9))
    grown = grow_scribbles(image, _seed(image.shape, ((4, 4), 1)), threshold=0.1, max_distance=1)
    assert (grown == 1).sum() == 5


def test_colour_distance_not_grey_level():
    # red and green halves: same mean intensity, different colour
    image = np.zeros((10, 20, 3))
    image[:, :10, 0] = 1.0
    image[:, 10:, 1] = 1.0
    seed = _seed((10, 20), ((5, 5), 2))
    grown = grow_scribbles(image, seed, threshold=0.5, max_distance=20)
    assert (grown[:, :10] == 2).all() and not grown[:, 10:].any()
    # with the same colour on both sides it crosses
    same = np.zeros((10, 20, 3))
    same[..., 0] = 1.0
    same[0, 0] = 0.0  # give the image a range
    grown = grow_scribbles(same, seed, threshold=0.5, max_distance=20)
    assert (grown[:, 10:] == 2).all()


def test_alpha_channel_is_ignored():
    image = np.zeros((10, 20, 4))
    image[..., :3] = 0.5
    image[0, 0, :3] = 1.0
    image[:, 10:, 3] = 1.0  # an alpha edge only
    grown = grow_scribbles(image, _seed((10, 20), ((5, 5), 2)), threshold=0.2, max_distance=30)
    assert (grown[1:, :] == 2).all()


def test_3d_growth_six_connected_and_stops_at_an_edge():
    image = np.zeros((9, 15, 15))
    image[:, :, 10:] = 1.0
    seed = _seed(image.shape, ((4, 7, 5), 2))
    grown = grow_scribbles(image, seed, threshold=0.2, max_distance=2)
    offsets = np.argwhere(grown == 2) - [4, 7, 5]
    assert np.abs(offsets).sum(axis=1).max() == 2
    assert (grown == 2).sum() == 25  # the L1 ball of radius 2
    wide = grow_scribbles(image, seed, threshold=0.2, max_distance=20, connectivity=3)
    assert (wide[:, :, :10] == 2).all() and not wide[:, :, 10:].any()


def test_same_result_for_any_intensity_units():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40)).astype(np.uint8)
    image = np.sort(image, axis=1)  # smooth-ish rows with edges
    seed = _seed(image.shape, ((20, 20), 2), ((5, 5), 1))
    reference = grow_scribbles(image, seed, threshold=0.05, max_distance=6)
    assert (reference > 0).sum() > 2
    for scaled in (image.astype(np.uint16) * 257, image / 255.0, image.astype(np.float32) - 50):
        np.testing.assert_array_equal(
            grow_scribbles(scaled, seed, threshold=0.05, max_distance=6), reference
        )


def test_inputs_untouched_output_is_new_int32():
    image = readonly(np.random.default_rng(1).random((16, 16)))
    seed = readonly(_seed((16, 16), ((3, 3), 2)).astype(np.uint8))
    grown = grow_scribbles(image, seed, threshold=0.3, max_distance=3)
    assert grown.dtype == np.int32 and grown.flags.writeable
    assert seed.sum() == 2


def test_robust_range_percentiles_and_constant():
    image = np.arange(1000, dtype=np.float64)
    low, high = robust_intensity_range(image.reshape(10, 100))
    assert low == pytest.approx(np.percentile(image, 0.5))
    assert high == pytest.approx(np.percentile(image, 99.5))
    assert robust_intensity_range(np.full((5, 5), 3.0)) == (3.0, 4.0)
    sparse = np.zeros((100, 100))
    sparse[0, 0] = 10.0
    assert robust_intensity_range(sparse) == (0.0, 10.0)  # percentiles equal: min/max


def test_explicit_intensity_range_is_used():
    image = _step_image(0.3)
    seed = _seed(image.shape, ((10, 15), 2))
    grown = grow_scribbles(image, seed, threshold=0.2, max_distance=10, intensity_range=(0, 10))
    assert (grown[:, 20:] == 2).any()  # 0.3 is only 0.03 of a range of 10


def test_neighbour_offsets_counts():
    assert len(neighbour_offsets(2, 1)) == 4
    assert len(neighbour_offsets(2, 2)) == 8
    assert len(neighbour_offsets(3, 1)) == 6
    assert len(neighbour_offsets(3, 3)) == 26


def test_errors():
    image = np.random.default_rng(0).random((8, 8))
    with pytest.raises(ValueError, match=r"spatial shape: image shape \(8, 8\), scribbles shape"):
        grow_scribbles(image, np.zeros((8, 9), int))
    with pytest.raises(TypeError, match="scribbles must be an integer label array"):
        grow_scribbles(image, np.zeros((8, 8)))
    with pytest.raises(ValueError, match="connectivity must be between 1 and 2"):
        grow_scribbles(image, np.zeros((8, 8), int), connectivity=3)
    with pytest.raises(ValueError, match="scribbles must be >= 0"):
        grow_scribbles(image, -np.ones((8, 8), int))
    with pytest.raises(ValueError, match="max_distance must be an integer >= 0"):
        grow_scribbles(image, np.zeros((8, 8), int), max_distance=-1)
