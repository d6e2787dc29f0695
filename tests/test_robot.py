import numpy as np
import pytest
from skimage.draw import disk, ellipse

from napari_scribble_refine.evaluation.robot import RobotUser, sample_seed


def _scene(seed=0):
    """Three classes: round and elongated nuclei of classes 1 and 2 on background."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((160, 200), np.uint8)
    for _ in range(12):
        r, c = rng.integers(15, 145), rng.integers(15, 185)
        if rng.random() < 0.5:
            gt[disk((r, c), rng.uniform(3, 12), shape=gt.shape)] = rng.integers(1, 3)
        else:
            rr, cc = ellipse(r, c, rng.uniform(3, 6), rng.uniform(10, 40), gt.shape, rng.random())
            gt[rr, cc] = rng.integers(1, 3)
    # A prediction with misses, false positives and swapped classes.
    pred = gt.copy()
    pred[gt == 1] = 2
    pred[:, :60] = 0
    pred[120:150, 120:190] = 1
    return gt, pred


def test_robot_is_deterministic():
    gt, pred = _scene()
    runs = []
    for _ in range(2):
        robot = RobotUser(gt, 3, seed=7)
        scr = np.zeros_like(gt)
        strokes = []
        for k in range(1, 6):
            scr, st = robot.interact(pred, scr, k)
            strokes.extend((s.cls, s.width, s.path.tobytes()) for s in st)
        runs.append((scr, strokes))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert sample_seed("abc", 1) == sample_seed("abc", 1) != sample_seed("abd", 1)


@pytest.mark.parametrize("seed", range(5))
def test_robot_never_paints_a_wrong_class_nor_overwrites(seed):
    gt, pred = _scene(seed)
    robot = RobotUser(gt, 3, seed=seed)
    scr = np.zeros_like(gt)
    for k in range(1, 11):
        before = scr.copy()
        given = scr
        scr, strokes = robot.interact(pred, given, k)
        marked = scr > 0
        np.testing.assert_array_equal(scr[marked] - 1, gt[marked])
        np.testing.assert_array_equal(scr[before > 0], before[before > 0])
        np.testing.assert_array_equal(given, before)  # the caller's array is untouched
        for s in strokes:
            assert s.n_painted > 0
            assert 3 <= s.width <= 5


@pytest.mark.parametrize("seed", range(5))
def test_stroke_lengths_in_range_and_follow_area(seed):
    gt, pred = _scene(seed)
    robot = RobotUser(gt, 3, seed=seed)
    scr = np.zeros_like(gt)
    lengths = []
    for k in range(1, 11):
        scr, strokes = robot.interact(pred, scr, k)
        for s in strokes:
            assert s.target_length == pytest.approx(np.clip(0.9 * np.sqrt(s.region_area), 5, 60))
            assert s.length <= s.target_length + 1e-6
            assert 5 - 1e-6 <= s.target_length <= 60 + 1e-6
            lengths.append(s.length / s.target_length)
    assert lengths
    # strokes reach their target length unless the region is too thin or small
    assert np.median(lengths) > 0.95


def test_round_nucleus_gets_a_stroke_not_a_dot():
    gt = np.zeros((80, 80), np.uint8)
    gt[disk((40, 40), 10)] = 1  # skeleton of a disk is a point
    scr, strokes = RobotUser(gt, 2).interact(np.zeros_like(gt), np.zeros_like(gt), 1)
    (s,) = strokes
    assert s.cls == 1
    assert s.length == pytest.approx(0.9 * np.sqrt(s.region_area), abs=0.01)
    assert np.all(scr[scr > 0] == 2)


def test_small_regions_are_ignored_and_long_ones_clipped():
    gt = np.zeros((100, 300), np.uint8)
    gt[10:15, 10:15] = 1  # 25 px < 30: ignored
    pred = np.zeros_like(gt)
    scr, strokes = RobotUser(gt, 2).interact(pred, np.zeros_like(gt), 1)
    assert strokes == [] and not scr.any()
    gt[50:90, 10:290] = 1  # 11200 px: 0.9 * sqrt = 95 -> 60
    scr, strokes = RobotUser(gt, 2).interact(pred, np.zeros_like(gt), 1)
    (s,) = strokes
    assert s.target_length == 60.0
    assert s.length == pytest.approx(60.0)


def test_correct_prediction_gets_no_strokes():
    gt, _ = _scene()
    scr, strokes = RobotUser(gt, 3).interact(gt, np.zeros_like(gt), 1)
    assert strokes == [] and not scr.any()
