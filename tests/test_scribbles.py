import numpy as np
import pytest
from _tiny_nets import readonly

from napari_scribble_refine.core.scribbles import (
    boxes_to_scribbles,
    merge_scribbles,
    points_to_scribbles,
    scribbled_classes,
    validate_scribbles,
)

# --- validate_scribbles -------------------------------------------------------------------


def test_validate_returns_int32_copy_of_readonly_input():
    scribbles = np.zeros((8, 9), dtype=np.uint8)
    scribbles[1, 1], scribbles[2, 2] = 1, 3
    scribbles = readonly(scribbles)
    out = validate_scribbles(scribbles, (8, 9), n_classes=3)
    assert out.dtype == np.int32 and out.flags.writeable
    assert not np.shares_memory(out, scribbles)
    np.testing.assert_array_equal(out, scribbles)


def test_validate_empty_scribbles_is_fine():
    out = validate_scribbles(np.zeros((4, 4), int), (4, 4), 2)
    assert not out.any()
    assert scribbled_classes(out) == ()


def test_validate_wrong_number_of_dimensions():
    with pytest.raises(ValueError, match=r"scribbles must have 2 dimensions.*\(8, 8\).*got 3"):
        validate_scribbles(np.zeros((8, 8, 3), int), (8, 8), 2)


def test_validate_wrong_shape():
    with pytest.raises(
        ValueError, match=r"scribbles must have the image's spatial shape \(8, 8\), got \(8, 7\)"
    ):
        validate_scribbles(np.zeros((8, 7), int), (8, 8), 2)


def test_validate_names_the_argument():
    with pytest.raises(ValueError, match=r"^Scribble layer 'x' must have"):
        validate_scribbles(np.zeros((8, 7), int), (8, 8), 2, name="Scribble layer 'x'")


def test_validate_accepts_whole_floats():
    out = validate_scribbles(readonly(np.array([[0.0, 1.0], [2.0, 0.0]])), (2, 2), 2)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 1], [2, 0]])


@pytest.mark.parametrize("bad", [1.5, np.nan, np.inf])
def test_validate_rejects_fractional_floats(bad):
    scribbles = np.zeros((3, 3))
    scribbles[1, 1] = bad
    with pytest.raises(ValueError, match=r"scribbles must hold whole numbers.*got value"):
        validate_scribbles(scribbles, (3, 3), 3)


def test_validate_rejects_bool():
    with pytest.raises(TypeError, match="scribbles must be an integer label array, got a bool"):
        validate_scribbles(np.ones((3, 3), bool), (3, 3), 2)


@pytest.mark.parametrize("dtype", [np.complex64, object])
def test_validate_rejects_non_numeric(dtype):
    with pytest.raises(TypeError, match=r"scribbles must be an integer label array, got dtype"):
        validate_scribbles(np.zeros((3, 3), dtype=dtype), (3, 3), 2)


def test_validate_rejects_negative():
    scribbles = np.zeros((3, 3), int)
    scribbles[0, 0] = -1
    with pytest.raises(ValueError, match=r"scribbles must be >= 0.*got minimum -1"):
        validate_scribbles(scribbles, (3, 3), 2)


def test_validate_rejects_class_beyond_model():
    scribbles = np.zeros((3, 3), int)
    scribbles[0, 0] = 4  # class 3, but the model has classes 0..2
    with pytest.raises(
        ValueError, match=r"scribbles has value 4 \(class 3\).*3 classes.*allow a new class"
    ):
        validate_scribbles(scribbles, (3, 3), n_classes=3)
    out = validate_scribbles(scribbles, (3, 3), n_classes=3, allow_new_class=True)
    assert scribbled_classes(out) == (3,)


def test_validate_allows_only_one_new_class():
    scribbles = np.zeros((3, 3), np.uint64)
    scribbles[0, 0] = 5
    with pytest.raises(ValueError, match=r"values must be 0\.\.4.*at most one new class"):
        validate_scribbles(scribbles, (3, 3), n_classes=3, allow_new_class=True)


def test_scribbled_classes_sorted_class_indices():
    scribbles = np.array([[0, 3, 1], [3, 0, 0]])
    assert scribbled_classes(scribbles) == (0, 2)


# --- points_to_scribbles ------------------------------------------------------------------


def test_points_paint_disks_with_their_values():
    points = readonly([[10.4, 10.6], [30, 5]])
    out = points_to_scribbles(points, [2, 1], (40, 40), radius=2)
    assert out.dtype == np.int32 and out.shape == (40, 40)
    assert out[10, 11] == 2 and out[30, 5] == 1
    assert (out == 2).sum() == 13  # a radius-2 disk: 1 + 4 + 4 + 4
    assert out[10, 14] == 0 and out[12, 11] == 2 and out[12, 12] == 0


def test_points_later_win_and_clip_at_border():
    out = points_to_scribbles([[0, 0], [0, 1]], [2, 3], (10, 10), radius=1)
    assert out[0, 0] == 3 and out[1, 0] == 2
    assert (out > 0).sum() == 5  # the two half-disks, clipped


def test_points_radius_zero_and_scalar_class():
    out = points_to_scribbles(np.array([[1, 2], [3, 4]]), 2, (5, 5), radius=0)
    assert out.sum() == 4 and out[1, 2] == 2 and out[3, 4] == 2


def test_points_3d_disk_in_slice_or_ball():
    flat = points_to_scribbles([[4, 5, 5]], 2, (9, 11, 11), radius=2)
    assert np.flatnonzero(flat.any(axis=(1, 2))).tolist() == [4]
    assert (flat == 2).sum() == 13
    ball = points_to_scribbles([[4, 5, 5]], 2, (9, 11, 11), radius=2, per_slice=False)
    assert np.flatnonzero(ball.any(axis=(1, 2))).tolist() == [2, 3, 4, 5, 6]
    assert (ball == 2).sum() == 33  # lattice points with x^2 + y^2 + z^2 <= 4


def test_points_outside_image_rejected():
    with pytest.raises(ValueError, match=r"points\[1\] = \[5\.0, 12\.0\] lies outside.*\(10, 10\)"):
        points_to_scribbles([[1, 1], [5, 12]], 2, (10, 10))


def test_points_wrong_shape_or_class():
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\).*got \(2, 3\)"):
        points_to_scribbles(np.zeros((2, 3)), 2, (10, 10))
    with pytest.raises(ValueError, match=r"classes must be one scribble value or one per point"):
        points_to_scribbles(np.zeros((2, 2)), [2, 2, 2], (10, 10))
    with pytest.raises(ValueError, match=r"classes must be scribble values >= 1"):
        points_to_scribbles(np.zeros((1, 2)), 0, (10, 10))


def test_no_points_give_empty_scribbles():
    out = points_to_scribbles(np.zeros((0, 2)), [], (6, 7))
    assert out.shape == (6, 7) and not out.any()


# --- boxes_to_scribbles -------------------------------------------------------------------


def test_box_core_and_background_ring():
    out = boxes_to_scribbles([np.array([[10, 20], [30, 40]])], 3, (60, 60), ring=2)
    # core: central half of 10..30 x 20..40 -> 15..25 x 25..35
    assert (out == 3).sum() == 11 * 11
    assert out[15, 25] == 3 and out[25, 35] == 3 and out[14, 25] == 0
    # inside the box but outside the core: no constraint
    assert out[10, 20] == 0 and out[12, 30] == 0
    # ring: 2 px outside the box (8..32 x 18..42 minus the box)
    ring = out == 1
    assert ring.sum() == 25 * 25 - 21 * 21
    assert out[8, 18] == 1 and out[9, 30] == 1 and out[7, 30] == 0 and out[32, 42] == 1


def test_box_from_napari_rectangle_corners_is_the_same_as_two_corners():
    four = np.array([[10.2, 20.0], [10.2, 39.8], [30.0, 39.8], [30.0, 20.0]])
    two = np.array([[10, 20], [30, 40]])
    np.testing.assert_array_equal(
        boxes_to_scribbles([four], 2, (60, 60)), boxes_to_scribbles([two], 2, (60, 60))
    )


def test_box_ring_clipped_at_border():
    out = boxes_to_scribbles([[[0, 0], [9, 9]]], 2, (20, 20), ring=3)
    assert out[0, 12] == 1 and out[12, 12] == 1 and out[12, 13] == 0
    assert (out == 1).sum() == 13 * 13 - 10 * 10


def test_box_ring_not_painted_inside_other_boxes_and_cores_win():
    boxes = [[[0, 0], [10, 10]], [[0, 11], [10, 21]]]
    out = boxes_to_scribbles(boxes, [2, 3], (30, 30), ring=3)
    # the first box's ring would fall in the second box: left unconstrained there
    assert out[5, 12] == 0 and out[5, 11] == 0
    assert out[5, 16] == 3 and out[5, 5] == 2
    assert out[13, 5] == 1


def test_box_3d_napari_rectangle_stays_in_its_slice():
    rect = np.array([[4, 10, 10], [4, 10, 30], [4, 30, 30], [4, 30, 10]])
    out = boxes_to_scribbles([rect], 2, (9, 40, 40), ring=2)
    assert np.flatnonzero(out.any(axis=(1, 2))).tolist() == [4]
    np.testing.assert_array_equal(out[4], boxes_to_scribbles([rect[:, 1:]], 2, (40, 40), ring=2))


def test_box_tiny_core_is_at_least_the_centre():
    out = boxes_to_scribbles([[[5, 5], [6, 6]]], 2, (12, 12), ring=0)
    assert (out == 2).sum() == 1 and out[6, 6] == 2  # centre 5.5 rounds half up


def test_box_errors():
    with pytest.raises(ValueError, match=r"boxes\[0\] must be corner coordinates.*got \(2, 3\)"):
        boxes_to_scribbles([np.zeros((2, 3))], 2, (10, 10))
    with pytest.raises(ValueError, match=r"boxes\[1\] with corners .* lies outside"):
        boxes_to_scribbles([[[0, 0], [2, 2]], [[20, 20], [25, 25]]], 2, (10, 10))
    with pytest.raises(ValueError, match=r"boxes\[0\] has no extent"):
        boxes_to_scribbles([[[3, 3], [3, 3]]], 2, (10, 10))
    with pytest.raises(ValueError, match="ring must be an integer >= 0"):
        boxes_to_scribbles([[[0, 0], [2, 2]]], 2, (10, 10), ring=-1)


# --- merge_scribbles ----------------------------------------------------------------------


def test_merge_later_nonzero_wins_and_inputs_untouched():
    a = readonly([[1, 2, 0], [0, 0, 0]])
    b = readonly(np.array([[0, 3, 3], [0, 0, 0]], dtype=np.uint8))
    out = merge_scribbles(a, b)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[1, 3, 3], [0, 0, 0]])
    np.testing.assert_array_equal(a, [[1, 2, 0], [0, 0, 0]])


def test_merge_errors():
    with pytest.raises(ValueError, match=r"scribbles\[1\] has shape \(2, 2\).*\(3, 3\)"):
        merge_scribbles(np.zeros((3, 3), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="at least one"):
        merge_scribbles()
    with pytest.raises(TypeError, match=r"scribbles\[0\] must be an integer label array"):
        merge_scribbles(np.zeros((3, 3), bool))


# --- mutation-testing additions: defaults, edges and exact messages -------------------------


def test_points_default_radius_is_three():
    out = points_to_scribbles([[10, 10]], 2, (21, 21))
    # lattice points with x^2 + y^2 <= 9: 7 + 2 * 5 + 2 * 5 + 2 * 1
    assert (out == 2).sum() == 29
    assert out[10, 13] == 2 and out[10, 14] == 0 and out[12, 12] == 2 and out[12, 13] == 0


def test_points_on_the_last_row_and_column_are_clipped_not_rejected():
    out = points_to_scribbles([[9, 9]], 2, (10, 10), radius=1)
    assert (out == 2).sum() == 3  # the centre and its neighbours above and to the left
    assert out[9, 9] == 2 and out[8, 9] == 2 and out[9, 8] == 2


def test_points_just_past_the_last_pixel_are_outside():
    with pytest.raises(ValueError, match=r"points\[0\] = \[10\.0, 0\.0\] lies outside"):
        points_to_scribbles([[10, 0]], 2, (10, 10))


def test_points_with_one_coordinate_for_a_2d_image_are_rejected():
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\).*got \(1, 1\)"):
        points_to_scribbles([[5.0]], 2, (10, 10))


def test_points_errors_for_non_finite_coordinates_and_bad_radius():
    with pytest.raises(ValueError, match=r"^points must have finite coordinates$"):
        points_to_scribbles([[np.nan, 1.0]], 2, (10, 10))
    with pytest.raises(ValueError, match=r"^radius must be an integer >= 0, got -1$"):
        points_to_scribbles([[1, 1]], 2, (10, 10), radius=-1)
    with pytest.raises(ValueError, match=r"^radius must be an integer >= 0, got 1\.5$"):
        points_to_scribbles([[1, 1]], 2, (10, 10), radius=1.5)


def test_box_default_ring_is_three_pixels():
    out = boxes_to_scribbles([[[10, 10], [20, 20]]], 2, (40, 40))
    assert (out == 1).sum() == 17 * 17 - 11 * 11  # 7..23 minus the box 10..20
    assert out[7, 15] == 1 and out[6, 15] == 0
    assert out.dtype == np.int32


def test_box_reaching_the_last_row_and_column_fills_them():
    out = boxes_to_scribbles([[[5, 5], [9, 9]]], 2, (10, 10), ring=0, core_fraction=1.0)
    assert (out == 2).sum() == 25  # 5..9 x 5..9 inclusive, the image's last pixels included
    assert out[9, 9] == 2


def test_box_touching_the_image_at_its_first_pixel_is_inside():
    out = boxes_to_scribbles([[[-5, -5], [0, 0]]], 2, (10, 10), ring=0, core_fraction=1.0)
    assert out[0, 0] == 2 and (out > 0).sum() == 1


def test_box_starting_just_past_the_last_pixel_is_outside():
    with pytest.raises(ValueError, match=r"boxes\[0\] with corners .* lies outside"):
        boxes_to_scribbles([[[10, 10], [15, 15]]], 2, (10, 10))


def test_box_corner_array_errors():
    with pytest.raises(ValueError, match=r"boxes\[0\] must be corner coordinates.*got \(1, 2\)"):
        boxes_to_scribbles([[[1, 2]]], 2, (10, 10))
    with pytest.raises(ValueError, match=r"boxes\[0\] must be corner coordinates.*got \(2,\)"):
        boxes_to_scribbles([[1, 2]], 2, (10, 10))
    with pytest.raises(ValueError, match=r"^boxes\[0\] must have finite coordinates$"):
        boxes_to_scribbles([[[0, 0], [np.inf, 3]]], 2, (10, 10))
    with pytest.raises(
        ValueError, match=r"classes must be one scribble value or one per box \(1\)"
    ):
        boxes_to_scribbles([[[0, 0], [3, 3]]], [2, 3], (10, 10))


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_box_core_fraction_outside_zero_one_is_rejected(fraction):
    with pytest.raises(ValueError, match=r"^core_fraction must be in \(0, 1\], got "):
        boxes_to_scribbles([[[0, 0], [4, 4]]], 2, (10, 10), core_fraction=fraction)


def test_box_core_fraction_one_is_the_whole_box():
    out = boxes_to_scribbles([[[2, 2], [6, 6]]], 2, (10, 10), ring=0, core_fraction=1.0)
    assert (out == 2).sum() == 25


def test_merge_never_writes_into_an_int32_input():
    first = np.array([[1, 0], [0, 0]], dtype=np.int32)
    merge_scribbles(first, np.array([[0, 2], [0, 0]], dtype=np.int32))
    np.testing.assert_array_equal(first, [[1, 0], [0, 0]])


def test_merge_accepts_whole_floats_after_the_first_array():
    out = merge_scribbles(np.zeros((2, 2), np.int32), np.array([[0.0, 3.0], [1.0, 0.0]]))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 3], [1, 0]])


def test_merge_without_arrays_names_the_function():
    with pytest.raises(ValueError, match=r"^merge_scribbles needs at least one scribble array$"):
        merge_scribbles()


def test_validate_returns_a_copy_of_an_int32_input():
    scribbles = np.zeros((3, 3), np.int32)
    out = validate_scribbles(scribbles, (3, 3), 2)
    assert not np.shares_memory(out, scribbles)


def test_validate_n_classes_must_be_a_whole_number_of_at_least_one():
    one = validate_scribbles(np.ones((2, 2), int), (2, 2), n_classes=1)  # background only
    np.testing.assert_array_equal(one, 1)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=rf"^n_classes must be an integer >= 1, got {bad}$"):
            validate_scribbles(np.zeros((2, 2), int), (2, 2), n_classes=bad)


def test_validate_empty_array_of_size_zero():
    out = validate_scribbles(np.zeros((0, 4), int), (0, 4), 2)
    assert out.shape == (0, 4) and out.dtype == np.int32


def test_validate_error_hints_are_complete():
    scribbles = np.zeros((3, 3), int)
    scribbles[0, 0] = 4
    with pytest.raises(ValueError, match=r"; to add a class, allow a new class \(value 4\)$"):
        validate_scribbles(scribbles, (3, 3), n_classes=3)
    scribbles[0, 0] = 5
    with pytest.raises(ValueError, match=r"; at most one new class can be added at a time$"):
        validate_scribbles(scribbles, (3, 3), n_classes=3, allow_new_class=True)


def test_validate_error_messages_for_bool_and_fractional_values():
    with pytest.raises(
        TypeError,
        match=r"^scribbles must be an integer label array, got a boolean mask; convert it "
        r"explicitly \(1 = background, c \+ 1 = class c\), e\.g\. mask\.astype\(int\) \* "
        r"\(c \+ 1\)$",
    ):
        validate_scribbles(np.ones((3, 3), bool), (3, 3), 2)
    scribbles = np.zeros((3, 3))
    scribbles[2, 1] = 1.5
    with pytest.raises(
        ValueError,
        match=r"^scribbles must hold whole numbers \(integer labels\), got value "
        r"np\.float64\(1\.5\) in a float64 array$|^scribbles must hold whole numbers "
        r"\(integer labels\), got value 1\.5 in a float64 array$",
    ):
        validate_scribbles(scribbles, (3, 3), 3)


def test_point_and_box_class_errors_name_the_classes_argument():
    with pytest.raises(ValueError, match=r"^classes must be >= 0 "):
        points_to_scribbles([[1, 1]], -1, (10, 10))
    with pytest.raises(ValueError, match=r"^classes must be scribble values >= 1 \(1 = back"):
        points_to_scribbles([[1, 1]], 0, (10, 10))


def test_spatial_shape_must_be_2d_or_3d_with_at_least_one_pixel():
    out = points_to_scribbles([[0, 2]], 2, (1, 5), radius=1)  # a single row is an image
    np.testing.assert_array_equal(out, [[0, 2, 2, 2, 0]])
    for bad, text in (
        ((10,), r"\(10,\)"),
        ((0, 5), r"\(0, 5\)"),
        ((2, 2, 2, 2), r"\(2, 2, 2, 2\)"),
    ):
        with pytest.raises(
            ValueError, match=rf"^spatial_shape must be \(Y, X\) or \(Z, Y, X\), got {text}$"
        ):
            points_to_scribbles(np.zeros((0, len(bad))), 2, bad)
