"""Segmentation metrics: Dice, IoU, AJI, PQ, per-class Dice and per-type F1.

Conventions follow the rest of the package: class maps have 0 = background and c = class c;
instance maps have 0 = background and any positive integers as labels (they need not be
consecutive); scribbles have 0 = no constraint and c + 1 = class c.

Instance metrics are vectorised through a sparse contingency table of overlapping pixels
(one ``numpy.unique`` over the pixels where both maps are non-zero), never through Python
loops over instance pairs, so images with thousands of nuclei cost about as much as a few
passes over their pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.postprocess import majority_classes

__all__ = [
    "aggregated_jaccard_index",
    "dice",
    "instance_types",
    "iou",
    "number_of_interactions",
    "panoptic_quality",
    "per_class_dice",
    "per_type_f1",
    "scribble_agreement",
]


def _foreground_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    p = pred != 0
    g = gt != 0
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of the foregrounds (non-zero pixels) of two maps.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Label, class or boolean maps of the same shape; every non-zero pixel is foreground.

    Returns
    -------
    float
        ``2 |P ∩ G| / (|P| + |G|)``; 1.0 when both foregrounds are empty.
    """
    inter, n_pred, n_gt = _foreground_counts(pred, gt)
    total = n_pred + n_gt
    return 1.0 if total == 0 else 2.0 * inter / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union (Jaccard index) of the foregrounds of two maps.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Label, class or boolean maps of the same shape; every non-zero pixel is foreground.

    Returns
    -------
    float
        ``|P ∩ G| / |P ∪ G|``; 1.0 when both foregrounds are empty.
    """
    inter, n_pred, n_gt = _foreground_counts(pred, gt)
    union = n_pred + n_gt - inter
    return 1.0 if union == 0 else inter / union


def per_class_dice(pred_cls: np.ndarray, gt_cls: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice of every class of two class maps, from one confusion matrix.

    Parameters
    ----------
    pred_cls, gt_cls : numpy.ndarray
        Class maps of the same shape with values in ``[0, n_classes)``.
    n_classes : int
        Number of classes, background (0) included.

    Returns
    -------
    numpy.ndarray
        Shape (n_classes,), float: entry c is the Dice of class c (entry 0 is background).
        NaN where class c is absent from both maps, so ``numpy.nanmean(d[1:])`` is the mean
        Dice over the foreground classes that occur.

    Raises
    ------
    ValueError
        On shape mismatch or values outside ``[0, n_classes)``.
    """
    pred = np.asarray(pred_cls)
    gt = np.asarray(gt_cls)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    for name, arr in (("pred_cls", pred), ("gt_cls", gt)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"{name} has values outside [0, {n_classes})")
    flat = gt.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    confusion = np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(confusion).astype(np.float64)
    total = confusion.sum(axis=0) + confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * tp / total, np.nan)


@dataclass(frozen=True)
class _Overlaps:
    """Sparse contingency table of two instance maps.

    ``gt_ids`` and ``pred_ids`` list the labels present (sorted, 0 excluded) with their areas;
    ``pair_gt`` / ``pair_pred`` index into them for every overlapping pair, ``inter`` holds
    the pair's overlap in pixels and ``union`` its union.
    """

    gt_ids: np.ndarray
    gt_area: np.ndarray
    pred_ids: np.ndarray
    pred_area: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    inter: np.ndarray
    union: np.ndarray

    @property
    def pair_iou(self) -> np.ndarray:
        return self.inter / self.union


def _overlaps(pred_inst: np.ndarray, gt_inst: np.ndarray) -> _Overlaps:
    pred = np.asarray(pred_inst)
    gt = np.asarray(gt_inst)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred_inst and gt_inst must have the same shape, got {pred.shape} and {gt.shape}"
        )
    if (pred.size and pred.min() < 0) or (gt.size and gt.min() < 0):
        raise ValueError("instance labels must be non-negative")
    gt_all, gt_idx, gt_counts = np.unique(gt.ravel(), return_inverse=True, return_counts=True)
    pred_all, pred_idx, pred_counts = np.unique(
        pred.ravel(), return_inverse=True, return_counts=True
    )
    # Index 0 of each `unique` is background when present; shift so labels index from 0.
    gt_has_bg = gt_all.size > 0 and gt_all[0] == 0
    pred_has_bg = pred_all.size > 0 and pred_all[0] == 0
    gt_idx = gt_idx.ravel() - int(gt_has_bg)
    pred_idx = pred_idx.ravel() - int(pred_has_bg)
    gt_ids, gt_area = gt_all[int(gt_has_bg) :], gt_counts[int(gt_has_bg) :]
    pred_ids, pred_area = pred_all[int(pred_has_bg) :], pred_counts[int(pred_has_bg) :]

    both = (gt_idx >= 0) & (pred_idx >= 0)
    n_pred = max(len(pred_ids), 1)
    pair_code, inter = np.unique(
        gt_idx[both].astype(np.int64) * n_pred + pred_idx[both], return_counts=True
    )
    pair_gt = pair_code // n_pred
    pair_pred = pair_code % n_pred
    union = gt_area[pair_gt] + pred_area[pair_pred] - inter
    return _Overlaps(
        gt_ids=gt_ids,
        gt_area=gt_area.astype(np.int64),
        pred_ids=pred_ids,
        pred_area=pred_area.astype(np.int64),
        pair_gt=pair_gt,
        pair_pred=pair_pred,
        inter=inter.astype(np.int64),
        union=union.astype(np.int64),
    )


def aggregated_jaccard_index(pred_inst: np.ndarray, gt_inst: np.ndarray) -> float:
    """Compute the Aggregated Jaccard Index (Kumar et al., TMI 2017), as HoVer-Net does.

    The pairing of HoVer-Net's ``get_fast_aji``: every ground-truth nucleus is paired with
    the predicted nucleus of highest IoU among those it overlaps (ties go to the lower
    predicted label; a prediction may serve several nuclei); the intersections and unions
    of the pairs are summed, and the areas of unpaired ground-truth and predicted nuclei
    are added to the union.

    Parameters
    ----------
    pred_inst, gt_inst : numpy.ndarray
        Instance maps of the same shape (0 = background).

    Returns
    -------
    float
        AJI in [0, 1]; 1.0 when both maps are empty, 0.0 when only one is.
    """
    ov = _overlaps(pred_inst, gt_inst)
    n_gt, n_pred = len(ov.gt_ids), len(ov.pred_ids)
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if ov.inter.size == 0:
        return 0.0
    # Best pair per gt: sort by gt, then IoU descending, then pred label ascending.
    order = np.lexsort((ov.pair_pred, -ov.pair_iou, ov.pair_gt))
    first = np.ones(order.size, dtype=bool)
    first[1:] = ov.pair_gt[order][1:] != ov.pair_gt[order][:-1]
    best = order[first]
    overall_inter = int(ov.inter[best].sum())
    overall_union = int(ov.union[best].sum())
    gt_paired = np.zeros(n_gt, dtype=bool)
    gt_paired[ov.pair_gt[best]] = True
    pred_paired = np.zeros(n_pred, dtype=bool)
    pred_paired[ov.pair_pred[best]] = True
    overall_union += int(ov.gt_area[~gt_paired].sum()) + int(ov.pred_area[~pred_paired].sum())
    return overall_inter / overall_union


def _matches(ov: _Overlaps, threshold: float = 0.5) -> np.ndarray:
    """Return the indices of the pairs whose IoU is above ``threshold`` (unique matches).

    With ``threshold >= 0.5`` each nucleus has at most one partner above it (two pixels sets
    cannot both overlap a third by more than half of their unions), so no assignment is needed.
    """
    return np.flatnonzero(ov.pair_iou > threshold)


def panoptic_quality(
    pred_inst: np.ndarray, gt_inst: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Panoptic quality (Kirillov et al. 2019) of instance maps, matching at IoU > 0.5.

    Parameters
    ----------
    pred_inst, gt_inst : numpy.ndarray
        Instance maps of the same shape (0 = background).
    iou_threshold : float
        Pairs with IoU strictly above it are true positives; must be >= 0.5 so that
        matches are unique.

    Returns
    -------
    dict
        ``{"pq", "dq", "sq", "tp", "fp", "fn"}``: detection quality
        ``TP / (TP + FP/2 + FN/2)``, segmentation quality (mean IoU of the matches, 0 without
        matches) and their product. When both maps are empty, pq = dq = sq = 1.

    Raises
    ------
    ValueError
        If ``iou_threshold < 0.5``.
    """
    if iou_threshold < 0.5:
        raise ValueError("iou_threshold must be >= 0.5 for unique matching")
    ov = _overlaps(pred_inst, gt_inst)
    n_gt, n_pred = len(ov.gt_ids), len(ov.pred_ids)
    matched = _matches(ov, iou_threshold)
    tp = int(matched.size)
    fp = n_pred - tp
    fn = n_gt - tp
    if n_gt == 0 and n_pred == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0, "tp": 0, "fp": 0, "fn": 0}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(ov.pair_iou[matched].mean()) if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq, "tp": tp, "fp": fp, "fn": fn}


def instance_types(
    inst: np.ndarray, types: np.ndarray | Mapping[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Find the class of every instance: a majority vote over its pixels, or a given mapping.

    Parameters
    ----------
    inst : numpy.ndarray
        Instance map (0 = background).
    types : numpy.ndarray or mapping
        A per-pixel class map of the same shape (each instance takes the most frequent
        non-zero class among its pixels, 0 if it has none; ties go to the lower class), or
        a mapping ``{label: class}`` (labels missing from it get class 0).

    Returns
    -------
    ids : numpy.ndarray
        The instance labels present, sorted.
    classes : numpy.ndarray
        Their classes.
    """
    if isinstance(types, Mapping):
        ids = np.unique(np.asarray(inst))
        labels = ids[int(ids.size > 0 and ids[0] == 0) :]
        return labels, np.array([int(types.get(int(i), 0)) for i in labels], dtype=np.int64)
    return majority_classes(np.asarray(inst), np.asarray(types))


def per_type_f1(
    pred_inst: np.ndarray,
    pred_types: np.ndarray | Mapping[int, int],
    gt_inst: np.ndarray,
    gt_types: np.ndarray | Mapping[int, int],
    type_ids: Sequence[int] | None = None,
    iou_threshold: float = 0.5,
) -> dict[str, object]:
    """Compute detection F1, type accuracy and per-type F1 (HoVer-Net / PanNuke convention).

    Nuclei are paired at IoU > ``iou_threshold`` (unique). For a type t the score is
    HoVer-Net's (Graham et al. 2019, eq. 7; ``compute_stats.run_nuclei_type_stat``)::

        F1_t = 2 TP_t / (2 TP_t + 2 FP_t + 2 FN_t + FP_d,t + FN_d,t)

    where, among paired nuclei, TP_t have both types t, FP_t are predicted t but truly
    another type and FN_t truly t but predicted another; FP_d,t are unpaired predictions of
    type t and FN_d,t unpaired true nuclei of type t. (HoVer-Net pairs by centroid distance
    within 12 px; IoU > 0.5 pairing, as in PanNuke's PQ, needs no assignment step.)

    Parameters
    ----------
    pred_inst, gt_inst : numpy.ndarray
        Instance maps of the same shape (0 = background).
    pred_types, gt_types : numpy.ndarray or mapping
        Per-pixel class maps or ``{label: class}`` mappings (see :func:`instance_types`).
    type_ids : sequence of int, optional
        The types to score; by default every non-zero type present in either map.
    iou_threshold : float
        Pairing threshold, >= 0.5.

    Returns
    -------
    dict
        ``{"f1_detection", "type_accuracy", "f1": {type: F1}, "tp", "fp", "fn"}``. F1 values
        are NaN where their denominator is 0 (type absent everywhere); the type accuracy is
        NaN without pairs.
    """
    if iou_threshold < 0.5:
        raise ValueError("iou_threshold must be >= 0.5 for unique matching")
    ov = _overlaps(pred_inst, gt_inst)
    _, gt_cls = instance_types(gt_inst, gt_types)
    _, pred_cls = instance_types(pred_inst, pred_types)
    matched = _matches(ov, iou_threshold)
    pg, pp = ov.pair_gt[matched], ov.pair_pred[matched]
    t_true, t_pred = gt_cls[pg], pred_cls[pp]
    gt_unpaired = np.ones(len(ov.gt_ids), dtype=bool)
    gt_unpaired[pg] = False
    pred_unpaired = np.ones(len(ov.pred_ids), dtype=bool)
    pred_unpaired[pp] = False
    u_true, u_pred = gt_cls[gt_unpaired], pred_cls[pred_unpaired]

    tp_d, fp_d, fn_d = int(matched.size), int(pred_unpaired.sum()), int(gt_unpaired.sum())
    denom_d = 2 * tp_d + fp_d + fn_d
    f1_d = 2 * tp_d / denom_d if denom_d else float("nan")
    acc = float(np.mean(t_true == t_pred)) if tp_d else float("nan")

    if type_ids is None:
        present = np.union1d(gt_cls, pred_cls)
        type_ids = [int(t) for t in present if t != 0]
    f1: dict[int, float] = {}
    for t in type_ids:  # loop over a handful of types, not over instances
        tp_t = int(np.sum((t_true == t) & (t_pred == t)))
        fp_t = int(np.sum((t_true != t) & (t_pred == t)))
        fn_t = int(np.sum((t_true == t) & (t_pred != t)))
        fpd_t = int(np.sum(u_pred == t))
        fnd_t = int(np.sum(u_true == t))
        denom = 2 * tp_t + 2 * fp_t + 2 * fn_t + fpd_t + fnd_t
        f1[int(t)] = 2 * tp_t / denom if denom else float("nan")
    return {
        "f1_detection": f1_d,
        "type_accuracy": acc,
        "f1": f1,
        "tp": tp_d,
        "fp": fp_d,
        "fn": fn_d,
    }


def scribble_agreement(pred_cls: np.ndarray, scribbles: np.ndarray) -> float:
    """Fraction of scribbled pixels whose predicted class is the scribbled class.

    Parameters
    ----------
    pred_cls : numpy.ndarray
        Class map (0 = background, c = class c).
    scribbles : numpy.ndarray
        Scribbles of the same shape (0 = none, 1 = background, c + 1 = class c).

    Returns
    -------
    float
        In [0, 1]; NaN when nothing is scribbled.
    """
    pred_cls = np.asarray(pred_cls)
    scribbles = np.asarray(scribbles)
    if pred_cls.shape != scribbles.shape:
        raise ValueError(
            f"pred_cls and scribbles must have the same shape, got {pred_cls.shape} "
            f"and {scribbles.shape}"
        )
    marked = scribbles > 0
    n = int(np.count_nonzero(marked))
    if n == 0:
        return float("nan")
    return float(np.count_nonzero(pred_cls[marked] == scribbles[marked].astype(np.int64) - 1) / n)


def number_of_interactions(scores: Sequence[float], threshold: float, cap: int = 20) -> int | None:
    """NoC@threshold: the first interaction index k whose score reaches ``threshold``.

    Parameters
    ----------
    scores : sequence of float
        Score after k = 0, 1, 2, ... interactions (k = 0 is the untouched prediction).
    threshold : float
        Target score (e.g. Dice 0.90).
    cap : int
        Largest k considered.

    Returns
    -------
    int or None
        The smallest k <= cap with ``scores[k] >= threshold``; None if never reached (report
        such images separately, or count them as ``cap``).
    """
    for k, s in enumerate(scores[: cap + 1]):
        if s >= threshold:
            return k
    return None
