import numpy as np
import pytest
from skimage.draw import disk, ellipse

from napari_scribble_refine.core.postprocess import class_map_to_instances, instance_types


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


def test_errors():
    with pytest.raises(TypeError, match="class_map must be an integer array"):
        class_map_to_instances(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="class_map must be 2D or 3D"):
        class_map_to_instances(np.zeros((2, 2, 2, 2), int))
    with pytest.raises(ValueError, match="h must be a number > 0"):
        class_map_to_instances(np.zeros((5, 5), int), h=0)
