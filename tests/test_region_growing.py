import numpy as np
import pytest
from _tiny_nets import readonly
from scipy import ndimage

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


# --- the growth cap, stroke by stroke (mutation-testing additions) ---------------------------


def test_a_diagonal_stroke_is_one_stroke_with_one_budget():
    image = np.zeros((15, 15))
    scribbles = np.zeros(image.shape, np.int32)
    scribbles[6, 6] = scribbles[7, 7] = scribbles[8, 8] = 2  # 8-connected only
    grown = grow_scribbles(
        image, scribbles, threshold=0.5, max_distance=5, intensity_range=(0, 1),
        max_grown_ratio=1.5,
    )  # fmt: skip
    # one stroke of 3 pixels may add floor(1.5 * 3) = 4; three 1-pixel strokes only 3 x 1
    assert (grown == 2).sum() == 3 + 4


def test_each_stroke_of_three_classes_keeps_its_own_budget():
    image = np.zeros((30, 30))
    scribbles = np.zeros(image.shape, np.int32)
    scribbles[3, 3] = 2  # class 1: one stroke
    scribbles[5, 20] = 4  # class 3: a 1-pixel stroke, first in raster order among 3 and 4
    scribbles[15, 3] = 3  # class 2: a 1-pixel stroke ...
    scribbles[25, 10:13] = 3  # ... and a 3-pixel stroke
    grown = grow_scribbles(
        image, scribbles, threshold=0.5, max_distance=10, intensity_range=(0, 1),
        max_grown_ratio=2,
    )  # fmt: skip
    assert (grown == 2).sum() == 1 + 2
    assert (grown == 4).sum() == 1 + 2
    regions, n = ndimage.label(grown == 3)
    assert n == 2
    assert (regions == regions[15, 3]).sum() == 1 + 2
    assert (regions == regions[25, 11]).sum() == 3 + 6


def test_a_budget_spreads_over_several_steps_one_pixel_each():
    image = np.zeros((1, 20))
    scribbles = np.zeros(image.shape, np.int32)
    scribbles[0, 0] = 2
    grown = grow_scribbles(
        image, scribbles, threshold=0.5, max_distance=10, intensity_range=(0, 1),
        max_grown_ratio=3,
    )  # fmt: skip
    # one candidate per step along the row: steps 1, 2 and 3 each spend one of the 3
    np.testing.assert_array_equal(grown[0, :6], [2, 2, 2, 2, 0, 0])
    assert (grown == 2).sum() == 4


def test_default_threshold_and_distance():
    image = _flat((41, 41))
    seed = _seed(image.shape, ((20, 20), 2))
    # 10 steps on a flat image: the L1 diamond of radius 10
    assert (grow_scribbles(image, seed) == 2).sum() == 2 * 10 * 11 + 1
    step = _step_image(0.06)  # an edge just above the default T = 0.05 ...
    grown = grow_scribbles(step, _seed(step.shape, ((10, 19), 2)))
    assert grown[10, 18] == 2 and grown[10, 20] == 0
    step = _step_image(0.04)  # ... and one just below it
    assert grow_scribbles(step, _seed(step.shape, ((10, 19), 2)))[10, 20] == 2


def test_threshold_one_grows():
    image = _flat((9, 9))
    grown = grow_scribbles(image, _seed(image.shape, ((4, 4), 2)), threshold=1, max_distance=1)
    assert (grown == 2).sum() == 5


def test_a_contested_pixel_is_never_claimed_later():
    image = np.zeros((3, 5))
    image[1:, 3] = 1.0  # a wall below (0, 3) keeps class 2 from reaching row 1
    seed = _seed(image.shape, ((0, 0), 1), ((0, 4), 2))
    grown = grow_scribbles(image, seed, threshold=0.5, max_distance=6, intensity_range=(0, 1))
    # (0, 2) is offered by both classes at step 2; class 1 reaches its neighbour (1, 2) at
    # step 3, and offers it again alone at step 4: a tie is final
    assert grown[0, 2] == 0
    assert grown[1, 2] == 1 and grown[2, 2] == 1 and grown[0, 3] == 2


def test_two_channel_images_use_both_channels():
    image = np.zeros((10, 20, 2))
    image[:, :10, 0] = 1.0
    image[:, 10:, 1] = 1.0
    grown = grow_scribbles(image, _seed((10, 20), ((5, 5), 2)), threshold=0.5, max_distance=20)
    assert (grown[:, :10] == 2).all() and not grown[:, 10:].any()


def test_a_cap_of_zero_means_no_cap():
    image = _flat((21, 21))
    seed = _seed(image.shape, ((10, 10), 2))
    free = grow_scribbles(image, seed, threshold=0.5, max_distance=4)
    np.testing.assert_array_equal(
        grow_scribbles(image, seed, threshold=0.5, max_distance=4, max_grown_ratio=0), free
    )
    half = grow_scribbles(image, seed, threshold=0.5, max_distance=4, max_grown_ratio=0.5)
    np.testing.assert_array_equal(half, seed)  # floor(0.5 * 1) = 0 pixels


def test_error_messages_name_the_value():
    image = np.zeros((8, 8))
    labels = np.zeros((8, 8), int)
    with pytest.raises(
        TypeError,
        match=r"^scribbles must be an integer label array \(see validate_scribbles\), got "
        r"dtype float64$",
    ):
        grow_scribbles(image, np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"^scribbles must be 2D or 3D, got shape \(8,\)$"):
        grow_scribbles(np.zeros(8), np.zeros(8, int))
    with pytest.raises(ValueError, match=r"spatial shape: image shape \(8, 8, 3\), scribbles"):
        grow_scribbles(np.zeros((8, 8, 3)), np.zeros((8, 9), int))
    with pytest.raises(ValueError, match=r"^threshold must be a number >= 0, got -0\.1$"):
        grow_scribbles(image, labels, threshold=-0.1)
    with pytest.raises(ValueError, match=r"^max_distance must be an integer >= 0, got 1\.5$"):
        grow_scribbles(image, labels, max_distance=1.5)
    with pytest.raises(
        ValueError, match=r"^max_grown_ratio must be None or a number >= 0, got -1$"
    ):
        grow_scribbles(image, labels, max_grown_ratio=-1)
    with pytest.raises(ValueError, match=r"^connectivity must be between 1 and 2 .* got 0$"):
        grow_scribbles(image, labels, connectivity=0)


def test_robust_range_of_a_large_image_uses_every_kth_pixel():
    # 1024 x 1024 = 16 x 2**16 pixels: every 4th pixel along each axis, exactly the grid
    # of distinct values written here; the other pixels would all move the top percentile
    image = np.full((1024, 1024), 1e6)
    grid = np.arange(256 * 256, dtype=np.float64)
    image[::4, ::4] = grid.reshape(256, 256)
    low, high = robust_intensity_range(image)
    assert low == pytest.approx(np.percentile(grid, 0.5))
    assert high == pytest.approx(np.percentile(grid, 99.5))


def test_robust_range_subsamples_only_the_spatial_axes_of_a_colour_image():
    image = np.full((1024, 1024, 3), 1e6)
    grid = np.arange(256 * 256 * 3, dtype=np.float64)
    image[::4, ::4, :] = grid.reshape(256, 256, 3)  # 2**20 pixels: every 4th, all channels
    low, high = robust_intensity_range(image, channel_axis=-1)
    assert low == pytest.approx(np.percentile(grid, 0.5))
    assert high == pytest.approx(np.percentile(grid, 99.5))


def test_robust_range_of_a_long_1d_signal_uses_every_kth_sample():
    signal = np.full(5 * 2**16, 1e6)
    grid = np.arange(2**16, dtype=np.float64)
    signal[::5] = grid  # 5 x 2**16 samples in one dimension: every 5th
    low, high = robust_intensity_range(signal)
    assert low == pytest.approx(np.percentile(grid, 0.5))
    assert high == pytest.approx(np.percentile(grid, 99.5))


def _striped(channels: int | None) -> np.ndarray:
    """512 x 512 (x 3): odd rows 1000, even rows in [0, 100], row 0 steps of 5 and 20.

    Every 2nd pixel along each spatial axis estimates the range: the even rows only, so
    about [0, 100] and T = 0.1 is 10 grey levels; taking the odd rows too would make it 100.
    """
    rng = np.random.default_rng(0)
    shape = (512, 512) if channels is None else (512, 512, channels)
    image = rng.uniform(0, 100, shape)
    image[1::2] = 1000.0
    row = np.where(np.arange(512) < 10, 50.0, np.where(np.arange(512) < 20, 55.0, 75.0))
    if channels is None:
        image[0] = row
    else:
        image[..., 0] = rng.uniform(0, 1, shape[:2])  # a dim first channel
        image[1::2, :, 0] = 1000.0
        image[0, :, 0] = 0.5
        image[0, :, 1:] = row[:, None]
    return image


@pytest.mark.parametrize("channels", [None, 3])
def test_growth_on_a_large_image_uses_the_subsampled_range(channels):
    image = _striped(channels)
    scribbles = _seed(image.shape[:2], ((0, 0), 2))
    grown = grow_scribbles(image, scribbles, threshold=0.1, max_distance=40)
    # the step of 5 (7.1 in colour) is below 10 grey levels, the step of 20 (28) above
    assert (grown[0, :20] == 2).all() and not grown[0, 20:].any()
    assert not grown[1:].any()


def test_fortran_order_scribbles_grow_like_c_order_ones():
    """``x.T`` and ``scipy.io.loadmat`` give Fortran-order arrays: growth must not be lost."""
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((40, 50)), 3)
    scribbles = np.zeros((40, 50), np.int32)
    scribbles[20, 10:15] = 1
    scribbles[5:9, 40] = 2
    fortran = np.asfortranarray(scribbles)
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
    expected = grow_scribbles(image, scribbles, threshold=0.05, max_distance=6)
    assert np.count_nonzero(expected) > 2 * np.count_nonzero(scribbles)  # it did grow
    np.testing.assert_array_equal(
        grow_scribbles(image, fortran, threshold=0.05, max_distance=6), expected
    )
    np.testing.assert_array_equal(  # a Fortran-order image too
        grow_scribbles(np.asfortranarray(image), scribbles, threshold=0.05, max_distance=6),
        expected,
    )
