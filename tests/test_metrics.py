import math

import numpy as np
import pytest

from napari_scribble_refine.evaluation.metrics import (
    aggregated_jaccard_index,
    dice,
    instance_types,
    iou,
    number_of_interactions,
    panoptic_quality,
    per_class_dice,
    per_type_f1,
    scribble_agreement,
)


def test_dice_and_iou_hand_computed():
    # pred has 4 px, gt has 6 px, overlap 3 px.
    pred = np.zeros((4, 4), int)
    gt = np.zeros((4, 4), int)
    pred[0, 0:4] = 1
    gt[0, 1:4] = 2  # labels other than 1 still count as foreground
    gt[1, 0:3] = 5
    assert dice(pred, gt) == pytest.approx(2 * 3 / (4 + 6))
    assert iou(pred, gt) == pytest.approx(3 / 7)


def test_dice_iou_empty_and_disjoint():
    z = np.zeros((3, 3), int)
    assert dice(z, z) == 1.0
    assert iou(z, z) == 1.0
    a = z.copy()
    a[0, 0] = 1
    b = z.copy()
    b[2, 2] = 1
    assert dice(a, b) == 0.0
    assert iou(a, b) == 0.0
    assert dice(a, z) == 0.0
    with pytest.raises(ValueError, match=r"same shape, got \(3, 3\) and \(2, 2\)"):
        dice(a, np.zeros((2, 2)))


def test_per_class_dice_hand_computed():
    gt = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    d = per_class_dice(pred, gt, n_classes=4)
    # class 0: gt {0,1,7}, pred {0,6,7}: overlap 2 -> 4/6
    assert d[0] == pytest.approx(4 / 6)
    # class 1: gt {2,3}, pred {1,2,3}: overlap 2 -> 4/5
    assert d[1] == pytest.approx(4 / 5)
    # class 2: gt {4,5,6}, pred {4,5}: overlap 2 -> 4/5
    assert d[2] == pytest.approx(4 / 5)
    assert math.isnan(d[3])
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        per_class_dice(pred, gt, n_classes=2)


def _two_by_two():
    """Gt: two 2x2 nuclei; pred 7 = gt 1, pred 9 covers half of gt 2 plus 2 px."""
    gt = np.zeros((4, 6), int)
    gt[0:2, 0:2] = 1
    gt[0:2, 3:5] = 2
    pred = np.zeros((4, 6), int)
    pred[0:2, 0:2] = 7
    pred[0:2, 4:6] = 9  # overlaps gt 2 in 2 px; union 6
    return pred, gt


def test_aji_hand_computed():
    pred, gt = _two_by_two()
    # gt1-pred7: inter 4 union 4; gt2-pred9: inter 2 union 6.
    assert aggregated_jaccard_index(pred, gt) == pytest.approx((4 + 2) / (4 + 6))
    # An extra, unmatched prediction adds its area to the union.
    pred2 = pred.copy()
    pred2[3, 0:3] = 3
    assert aggregated_jaccard_index(pred2, gt) == pytest.approx(6 / 13)
    # An unmatched gt nucleus adds its area to the union.
    gt2 = gt.copy()
    gt2[3, 4:6] = 4
    assert aggregated_jaccard_index(pred, gt2) == pytest.approx(6 / 12)


def test_aji_merged_prediction_is_used_twice():
    gt = np.zeros((2, 4), int)
    gt[:, 0:2] = 1
    gt[:, 2:4] = 2
    pred = (gt > 0).astype(int)  # one merged nucleus of 8 px
    # each gt pairs with it: inter 4 + 4, union 8 + 8
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(8 / 16)


def test_aji_picks_highest_iou_and_edge_cases():
    gt = np.zeros((1, 10), int)
    gt[0, 0:6] = 1
    pred = np.zeros((1, 10), int)
    pred[0, 0:2] = 1  # iou 2/6
    pred[0, 2:7] = 2  # inter 4, union 7 -> iou 4/7 (best)
    # inter 4 / (union 7 + unpaired pred 1 area 2)
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(4 / 9)
    z = np.zeros_like(gt)
    assert aggregated_jaccard_index(z, z) == 1.0
    assert aggregated_jaccard_index(pred, z) == 0.0
    assert aggregated_jaccard_index(z, gt) == 0.0


def test_panoptic_quality_hand_computed():
    pred, gt = _two_by_two()
    # gt1-pred7 IoU 1 -> TP; gt2-pred9 IoU 1/3 -> FP + FN
    pq = panoptic_quality(pred, gt)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (1, 1, 1)
    assert pq["dq"] == pytest.approx(1 / (1 + 0.5 + 0.5))
    assert pq["sq"] == pytest.approx(1.0)
    assert pq["pq"] == pytest.approx(0.5)


def test_panoptic_quality_sq_and_edge_cases():
    gt = np.zeros((1, 10), int)
    gt[0, 0:4] = 1
    pred = np.zeros((1, 10), int)
    pred[0, 0:3] = 5  # IoU 3/4 > 0.5
    pq = panoptic_quality(pred, gt)
    assert pq["sq"] == pytest.approx(0.75)
    assert pq["dq"] == pytest.approx(1.0)
    assert pq["pq"] == pytest.approx(0.75)
    # exactly 0.5 is not a match
    pred2 = np.zeros((1, 10), int)
    pred2[0, 0:2] = 5
    assert panoptic_quality(pred2, gt)["tp"] == 0
    assert panoptic_quality(pred2, gt)["pq"] == 0.0
    z = np.zeros_like(gt)
    assert panoptic_quality(z, z)["pq"] == 1.0
    with pytest.raises(ValueError, match="iou_threshold must be >= 0.5"):
        panoptic_quality(pred, gt, iou_threshold=0.3)


def test_instance_types_majority_and_mapping():
    inst = np.array([[1, 1, 1, 0, 4, 4]])
    types = np.array([[2, 1, 2, 0, 0, 0]])
    ids, cls = instance_types(inst, types)
    assert ids.tolist() == [1, 4]
    assert cls.tolist() == [2, 0]
    ids, cls = instance_types(inst, {1: 1, 4: 2})
    assert cls.tolist() == [1, 2]


def test_per_type_f1_hand_computed():
    # Four gt nuclei on a line, each 3 px: types 1, 1, 2, 2.
    gt = np.zeros((1, 20), int)
    gt_types = {}
    for i, t in enumerate([1, 1, 2, 2]):
        gt[0, i * 4 : i * 4 + 3] = i + 1
        gt_types[i + 1] = t
    pred = np.zeros_like(gt)
    pred[0, 0:3] = 1  # pairs gt1, type 1 (correct)
    pred[0, 4:7] = 2  # pairs gt2, type 2 (wrong)
    pred[0, 8:11] = 3  # pairs gt3, type 2 (correct)
    pred[0, 16:19] = 4  # unpaired, type 1
    # gt4 unpaired (type 2)
    pred_types = {1: 1, 2: 2, 3: 2, 4: 1}
    r = per_type_f1(pred, pred_types, gt, gt_types)
    assert (r["tp"], r["fp"], r["fn"]) == (3, 1, 1)
    assert r["f1_detection"] == pytest.approx(6 / (6 + 1 + 1))
    assert r["type_accuracy"] == pytest.approx(2 / 3)
    # type 1: TP 1, FP 0, FN 1 (gt2), FP_d 1 (pred4), FN_d 0 -> 2 / (2 + 2 + 1)
    assert r["f1"][1] == pytest.approx(2 / 5)
    # type 2: TP 1, FP 1 (pred2), FN 0, FP_d 0, FN_d 1 (gt4) -> 2 / (2 + 2 + 1)
    assert r["f1"][2] == pytest.approx(2 / 5)


def test_per_type_f1_with_pixel_type_maps():
    gt = np.zeros((3, 3), int)
    gt[0, :] = 1
    types_gt = (gt > 0).astype(int) * 2
    pred = gt * 3
    r = per_type_f1(pred, types_gt, gt, types_gt)
    assert r["f1"] == {2: 1.0}
    assert r["f1_detection"] == 1.0


def test_scribble_agreement():
    pred = np.array([[0, 1, 2, 2]])
    scr = np.array([[1, 2, 2, 0]])  # bg ok, class1 ok, class1 wrong, unscribbled
    assert scribble_agreement(pred, scr) == pytest.approx(2 / 3)
    assert math.isnan(scribble_agreement(pred, np.zeros_like(scr)))


def test_number_of_interactions():
    assert number_of_interactions([0.95, 0.5], 0.9) == 0
    assert number_of_interactions([0.5, 0.8, 0.91, 0.7], 0.9) == 2
    assert number_of_interactions([0.5, 0.8], 0.9) is None
    assert number_of_interactions([0.5] * 30 + [0.99], 0.9, cap=20) is None


def test_instance_metrics_scale_without_pair_loops():
    rng = np.random.default_rng(0)
    # 4000 square nuclei on a grid; the prediction shifts each by one pixel.
    gt = np.zeros((640, 1008), np.int32)
    k = 0
    for y in range(0, 640, 10):
        for x in range(0, 1000, 16):
            k += 1
            gt[y + 1 : y + 8, x + 1 : x + 8] = k
    pred = np.roll(gt, 1, axis=1)
    perm = np.concatenate([[0], rng.permutation(k) + 1])
    pred = perm[pred]
    # 7x7 shifted by 1: inter 42, union 56
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(42 / 56)
    assert panoptic_quality(pred, gt)["sq"] == pytest.approx(42 / 56)
