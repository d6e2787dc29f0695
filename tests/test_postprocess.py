import numpy as np
import pytest
from skimage.draw import disk, ellipse

from napari_scribble_refine.core.postprocess import (
    class_map_to_instances,
    instance_types,
    majority_classes,
    type_by_instance,
)


def _disks(centres, radius, shape=(80, 120), value=1):
    class_map = np.zeros(shape, dtype=np.uint8)
    for centre in centres:
        class_map[disk(centre, radius, shape=shape)] = value
    return class_map


def _balls(centres, radius, shape=(30, 40, 60)):
    grid = np.indices(shape)
    class_map = np.zeros(shape, dtype=np.int32)
    for centre in centres:
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
        class_map[inside] = 1
    return class_map


@pytest.mark.parametrize(
    ("centres", "radius", "expected"),
    [
        ([(40, 60)], 10, 1),
        ([(40, 60)], 25, 1),
        ([(40, 50), (40, 70)], 10, 2),  # just touching
        ([(40, 50), (40, 65)], 10, 2),  # overlapping by a quarter
        ([(40, 40), (40, 56), (54, 48)], 8, 3),
    ],
)
def test_touching_disks_split_single_disk_whole(centres, radius, expected):
    class_map = _disks(centres, radius)
    instances = class_map_to_instances(class_map)
    assert instances.max() == expected
    assert instances.dtype == np.int32
    np.testing.assert_array_equal(instances > 0, class_map > 0)


def test_elongated_nucleus_stays_whole():
    class_map = np.zeros((80, 120), dtype=np.int32)
    class_map[ellipse(40, 60, 8, 30, shape=class_map.shape)] = 1
    assert class_map_to_instances(class_map).max() == 1


def test_two_touching_disks_each_get_their_own_centre():
    instances = class_map_to_instances(_disks([(40, 50), (40, 70)], 10))
    assert instances[40, 50] != instances[40, 70]
    assert {instances[40, 45], instances[40, 75]} == {instances[40, 50], instances[40, 70]}


def test_3d_touching_balls_split():
    assert class_map_to_instances(_balls([(15, 20, 30)], 8)).max() == 1
    assert class_map_to_instances(_balls([(15, 20, 22), (15, 20, 38)], 8)).max() == 2


def test_classes_split_separately_and_ids_consecutive():
    class_map = _disks([(20, 20)], 8) + _disks([(20, 36)], 8, value=2)  # touching, two classes
    class_map[60:62, 100:102] = 1  # 4 px: removed by min_size
    class_map[50, 50] = 3
    class_map.setflags(write=False)
    instances = class_map_to_instances(class_map, min_size=10)
    assert np.unique(instances).tolist() == [0, 1, 2]
    assert instances[20, 20] != instances[20, 36]
    assert instances[60, 100] == 0 and instances[50, 50] == 0
    assert instance_types(instances, class_map) == {
        int(instances[20, 20]): 1,
        int(instances[20, 36]): 2,
    }
    assert class_map_to_instances(class_map, min_size=0).max() == 4


def test_empty_class_map():
    instances = class_map_to_instances(np.zeros((10, 10), np.int64))
    assert instances.shape == (10, 10) and not instances.any()
    assert instance_types(instances, np.zeros((10, 10), int)) == {}


def test_instance_types_majority_vote():
    instances = np.array([[1, 1, 1, 2], [1, 0, 2, 2]])
    classes = np.array([[2, 2, 1, 0], [0, 1, 0, 0]])
    assert instance_types(instances, classes) == {1: 2, 2: 0}


def test_majority_classes_ties_go_to_the_lower_class_and_bad_input_is_named():
    instances = np.array([[3, 3, 3, 3, 5, 5]])
    classes = np.array([[2, 1, 2, 1, 0, 0]])  # 3: a tie of 1 and 2; 5: background only
    ids, kinds = majority_classes(instances, classes)
    assert ids.tolist() == [3, 5] and kinds.tolist() == [1, 0]
    with pytest.raises(ValueError, match="types must match inst's shape"):
        majority_classes(instances, classes[:, :5])
    with pytest.raises(ValueError, match="types must be non-negative"):
        majority_classes(instances, -classes)


def test_errors():
    with pytest.raises(TypeError, match="class_map must be an integer array"):
        class_map_to_instances(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="class_map must be 2D or 3D"):
        class_map_to_instances(np.zeros((2, 2, 2, 2), int))
    with pytest.raises(ValueError, match="h must be a number > 0"):
        class_map_to_instances(np.zeros((5, 5), int), h=0)


# --- type_by_instance ---------------------------------------------------------------------


def test_type_by_instance_gives_each_instance_its_foreground_majority():
    instances = np.array([[1, 1, 1, 0], [2, 2, 0, 3], [0, 0, 0, 3]])
    class_map = np.array([[1, 2, 2, 0], [1, 0, 1, 2], [0, 0, 0, 1]], dtype=np.uint8)
    before = class_map.copy()
    out = type_by_instance(instances, class_map)
    expected = np.array([[2, 2, 2, 0], [1, 0, 1, 1], [0, 0, 0, 1]])
    # 1: classes 1, 2, 2 -> 2; 2: only one foreground pixel (1), its background pixel stays 0;
    # 3: a tie of 2 and 1 -> the smaller class; pixels outside instances are left alone
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(class_map, before)


def test_type_by_instance_scribbles_outvote_the_majority():
    instances = np.array([[1, 1, 1, 1], [2, 2, 2, 0]])
    class_map = np.array([[2, 2, 2, 1], [1, 1, 1, 0]])
    scribbles = np.zeros_like(class_map)
    scribbles[0, 3] = 2  # one class-1 scribble against three class-2 pixels
    scribbles[1, 0] = 1  # a background scribble does not vote
    out = type_by_instance(instances, class_map, scribbles)
    np.testing.assert_array_equal(out, [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(type_by_instance(instances, class_map), [[2] * 4, [1, 1, 1, 0]])


def test_type_by_instance_scribbled_class_beyond_the_class_map():
    instances = np.array([[1, 1], [0, 0]])
    class_map = np.array([[1, 1], [0, 0]])
    scribbles = np.array([[4, 0], [0, 0]])  # class 3, which the class map never predicts
    np.testing.assert_array_equal(
        type_by_instance(instances, class_map, scribbles), [[3, 3], [0, 0]]
    )


def test_type_by_instance_without_foreground_inside_instances_is_a_copy():
    instances = np.array([[1, 0], [0, 0]])
    class_map = np.array([[0, 1], [0, 0]])
    out = type_by_instance(instances, class_map)
    np.testing.assert_array_equal(out, class_map)
    assert out is not class_map


# --- class_map_to_instances: sizes, edges, spacing, parameters (mutation-testing additions) ---


def test_default_min_size_is_ten_pixels():
    class_map = np.zeros((20, 40), np.uint8)
    class_map[2, 2:12] = 1  # 10 px: kept
    class_map[10, 2:11] = 1  # 9 px: removed
    class_map[15, 20:30] = 2  # 10 px of another class, numbered after class 1
    instances = class_map_to_instances(class_map)
    assert (instances[2, 2:12] == 1).all()
    assert not instances[10].any()
    assert (instances[15, 20:30] == 2).all()
    assert instances.max() == 2


def test_the_first_instance_is_removed_when_small_too():
    class_map = np.zeros((20, 20), np.uint8)
    class_map[1, 1:3] = 1  # 2 px, instance 1 in raster order
    class_map[10:14, 10:14] = 1  # 16 px
    instances = class_map_to_instances(class_map, min_size=3)
    assert not instances[1].any()
    assert (instances[10:14, 10:14] == 1).all() and instances.max() == 1


def test_min_size_two_removes_single_pixels():
    class_map = np.zeros((10, 10), np.uint8)
    class_map[1, 1] = 1
    class_map[5, 5:7] = 1
    instances = class_map_to_instances(class_map, min_size=2, sigma=0)
    assert instances[1, 1] == 0 and (instances[5, 5:7] == 1).all()
    assert instances.max() == 1


def test_objects_touching_the_image_corner_are_labelled_to_the_edge():
    class_map = np.zeros((30, 30), np.uint8)
    class_map[:6, :6] = 1
    class_map[24:, 24:] = 2
    instances = class_map_to_instances(class_map)
    np.testing.assert_array_equal(instances > 0, class_map > 0)
    assert (instances[:6, :6] == 1).all() and (instances[24:, 24:] == 2).all()


def test_spacing_makes_anisotropic_touching_nuclei_round_and_split():
    # two nuclei of radius 11 in physical units, stacked along axis 0 with half-resolution
    # pixels there: ellipses of 5.5 x 11 pixels, 7 pixels (14 units) apart
    class_map = np.zeros((60, 60), np.uint8)
    for centre in (20, 27):
        class_map[ellipse(centre, 30, 5.5, 11, shape=class_map.shape)] = 1
    assert class_map_to_instances(class_map).max() == 1  # in pixel units: one blob
    split = class_map_to_instances(class_map, spacing=(2.0, 1.0))
    assert split.max() == 2
    assert split[20, 30] != split[27, 30]


def test_touching_disks_split_along_the_line_between_them():
    class_map = _disks([(40, 50), (40, 70)], 10)
    instances = class_map_to_instances(class_map)
    columns = np.indices(class_map.shape)[1]
    left = instances[(class_map > 0) & (columns < 60)]
    right = instances[(class_map > 0) & (columns > 60)]
    assert set(left.tolist()) == {1} and set(right.tolist()) == {2}


def test_sigma_zero_is_allowed_and_fractional_sigma_too():
    class_map = _disks([(40, 50), (40, 70)], 10)
    assert class_map_to_instances(class_map, sigma=0).max() == 2
    assert class_map_to_instances(class_map, sigma=0.5).max() == 2


def test_parameter_errors_name_the_parameter_and_value():
    ok = np.zeros((5, 5), int)
    with pytest.raises(ValueError, match=r"^class_map must be >= 0, got minimum -2$"):
        class_map_to_instances(np.full((5, 5), -2))
    with pytest.raises(ValueError, match=r"^class_map must be 2D or 3D, got shape \(5,\)$"):
        class_map_to_instances(np.zeros(5, int))
    with pytest.raises(TypeError, match=r"^class_map must be an integer array, got dtype float64$"):
        class_map_to_instances(np.zeros((5, 5)))
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match=rf"^min_size must be an integer >= 0, got {bad}$"):
            class_map_to_instances(ok, min_size=bad)
    with pytest.raises(ValueError, match=r"^h must be a number > 0, got -1$"):
        class_map_to_instances(ok, h=-1)
    with pytest.raises(ValueError, match=r"^sigma must be a number >= 0, got -0\.5$"):
        class_map_to_instances(ok, sigma=-0.5)


def test_type_by_instance_counts_each_instance_s_own_votes():
    instances = np.array([[1, 1, 1, 0, 2, 2, 2], [0, 0, 0, 0, 0, 0, 0]])
    class_map = np.array([[1, 1, 1, 0, 2, 2, 2], [2, 2, 1, 0, 0, 0, 0]])
    out = type_by_instance(instances, class_map)
    # the instances keep their own class; pixels outside instances are not voted on
    np.testing.assert_array_equal(out, class_map)


def test_type_by_instance_instances_without_scribbles_keep_their_majority():
    instances = np.array([[1, 1, 1, 2, 2, 2]])
    class_map = np.array([[1, 1, 1, 2, 2, 1]])
    scribbles = np.array([[3, 0, 0, 0, 0, 0]])  # a class-2 scribble on instance 1 only
    out = type_by_instance(instances, class_map, scribbles)
    np.testing.assert_array_equal(out, [[2, 2, 2, 2, 2, 2]])


def test_default_h_and_sigma_are_one_pixel():
    # r = 6 disks 9.8 px apart: the dip between the smoothed peaks is between 1 and 2 px
    close = _disks([(40, 40), (40, 49.8)], 6)
    assert class_map_to_instances(close).max() == 2
    assert class_map_to_instances(close, h=2).max() == 1
    assert class_map_to_instances(close, sigma=2).max() == 1
    # r = 8 disks 8.4 px apart: two peaks without smoothing, one after sigma = 1
    closer = _disks([(40, 40), (40, 48.4)], 8)
    assert class_map_to_instances(closer, sigma=0).max() == 2
    assert class_map_to_instances(closer).max() == 1
    assert class_map_to_instances(closer, sigma=1).max() == 1
