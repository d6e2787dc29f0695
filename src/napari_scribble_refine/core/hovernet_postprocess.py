"""HoVer-Net's instance post-processing: NP probability + HV maps -> nuclei.

A numpy / scipy.ndimage / scikit-image re-implementation of the official OpenCV pipeline
(``reference/hovernet.md`` d.3, with the equivalences of d.6), which gives label maps
identical pixel for pixel, and the official per-instance type rule (d.4).
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

__all__ = ["hv_instances", "instance_info", "instance_type"]

NP_THRESHOLD = 0.5
MIN_OBJECT_SIZE = 10
SOBEL_SIZE = 21
EDGE_THRESHOLD = 0.4

_OPEN_FOOTPRINT = np.array(
    [
        [0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0],
    ],
    dtype=bool,
)
"""OpenCV's 5x5 elliptical structuring element."""


def _sobel_taps(size: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's Sobel derivative and smoothing taps for an odd kernel size."""
    n = size - 1
    smooth = np.array([comb(n, i) for i in range(size)], dtype=np.float64)

    def c(i: int) -> int:
        return comb(n - 1, i) if 0 <= i <= n - 1 else 0

    deriv = np.array([c(i - 1) - c(i) for i in range(size)], dtype=np.float64)
    return deriv, smooth


def _minmax(a: np.ndarray) -> np.ndarray:
    """OpenCV ``normalize(NORM_MINMAX)`` to [0, 1] as float32 (zeros for a constant map)."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = a.min(), a.max()
    if hi == lo:
        return np.zeros_like(a)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the labelled components with fewer than ``min_size`` pixels."""
    if labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


def _sobel(img: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Unscaled Sobel derivative along ``axis`` (1 = x / columns, 0 = y / rows), float64."""
    deriv, smooth = _sobel_taps(size)
    out = ndi.correlate1d(img.astype(np.float64), deriv, axis=axis, mode="mirror")
    return ndi.correlate1d(out, smooth, axis=1 - axis, mode="mirror")


def hv_instances(
    np_prob: np.ndarray,
    hv: np.ndarray,
    *,
    threshold: float = NP_THRESHOLD,
    min_size: int = MIN_OBJECT_SIZE,
    sobel_size: int = SOBEL_SIZE,
    edge_threshold: float = EDGE_THRESHOLD,
    keep_unmarked: bool = False,
) -> np.ndarray:
    """Split the nucleus pixels into instances with the HV maps (official HoVer-Net rule).

    Parameters
    ----------
    np_prob : numpy.ndarray
        (Y, X) nucleus probability.
    hv : numpy.ndarray
        (2, Y, X): channel 0 the horizontal (x) map, channel 1 the vertical (y) map.
    threshold : float
        Nucleus probability threshold (0.5).
    min_size : int
        Components and markers with fewer pixels are removed (10).
    sobel_size : int
        Sobel kernel size (21).
    edge_threshold : float
        Edge-map threshold separating markers (0.4).
    keep_unmarked : bool
        The official rule drops every nucleus component in which no marker survives (weak
        HV maps lose whole nuclei that way). True keeps each such component as one more
        instance, numbered after the marker-based ones; False reproduces the official output.

    Returns
    -------
    numpy.ndarray
        int32 (Y, X) instance labels, 0 = background, ids from the markers in raster order
        (not necessarily contiguous).
    """
    prob = np.asarray(np_prob, dtype=np.float32)
    hv = np.asarray(hv, dtype=np.float32)
    if prob.ndim != 2 or hv.shape != (2, *prob.shape):
        raise ValueError(
            f"expected np_prob (Y, X) and hv (2, Y, X), got {prob.shape} and {hv.shape}"
        )
    blb = ndi.label(prob >= threshold)[0]
    blb = (_remove_small(blb, min_size) > 0).astype(np.int32)

    h_dir = _minmax(hv[0])
    v_dir = _minmax(hv[1])
    sobel_h = 1 - _minmax(_sobel(h_dir, axis=1, size=sobel_size))
    sobel_v = 1 - _minmax(_sobel(v_dir, axis=0, size=sobel_size))

    overall = np.maximum(sobel_h, sobel_v) - (1 - blb)  # float64, as in the official code
    overall[overall < 0] = 0
    dist = (1.0 - overall) * blb
    gauss = np.array([0.25, 0.5, 0.25])
    dist = ndi.correlate1d(dist, gauss, axis=0, mode="mirror")
    dist = -ndi.correlate1d(dist, gauss, axis=1, mode="mirror")

    edges = (overall >= edge_threshold).astype(np.int32)
    marker = blb - edges
    marker[marker < 0] = 0
    marker = ndi.binary_fill_holes(marker)
    marker = ndi.binary_erosion(marker, _OPEN_FOOTPRINT, border_value=1)
    marker = ndi.binary_dilation(marker, _OPEN_FOOTPRINT, border_value=0)
    marker = _remove_small(ndi.label(marker)[0], min_size)
    labels = watershed(dist, markers=marker, mask=blb.astype(bool)).astype(np.int32)
    if keep_unmarked:
        orphans = (blb > 0) & (labels == 0)
        components, n = ndi.label(orphans)
        if n:
            labels[orphans] = components[orphans] + labels.max()
    return labels


def instance_type(types: np.ndarray) -> tuple[int, float]:
    """Choose an instance's type by the official rule (reference d.4).

    The most frequent type id wins; when that is 0 (background) and another id occurs, the
    second most frequent is taken. Ties go to the smaller id.

    Parameters
    ----------
    types : numpy.ndarray
        Per-pixel type ids of one instance (any shape).

    Returns
    -------
    type : int
        The chosen type id.
    type_prob : float
        Its pixel count / (instance pixel count + 1e-6).
    """
    ids, counts = np.unique(np.asarray(types).ravel(), return_counts=True)
    order = sorted(
        zip(ids.tolist(), counts.tolist(), strict=True), key=lambda t: t[1], reverse=True
    )
    chosen = order[0][0]
    if chosen == 0 and len(order) > 1:
        chosen = order[1][0]
    count = dict(order)[chosen]
    return int(chosen), float(count / (types.size + 1.0e-6))


def instance_info(
    labels: np.ndarray, type_map: np.ndarray | None = None
) -> dict[int, dict[str, Any]]:
    """Per-instance box, centroid, area and (with a type map) type, as in the official code.

    Parameters
    ----------
    labels : numpy.ndarray
        (Y, X) instance labels, 0 = background.
    type_map : numpy.ndarray, optional
        (Y, X) per-pixel type ids (0 = background / no label).

    Returns
    -------
    dict of int to dict
        For each instance id, in ascending order: ``bbox`` ``((rmin, cmin), (rmax, cmax))``
        with exclusive maxima, ``centroid`` ``(y, x)`` (float; note the official JSON stores
        (x, y)), ``area`` (pixels) and, with ``type_map``, ``type`` and ``type_prob``.
        Contours (OpenCV) are not computed, so no instance is skipped for a degenerate one.
    """
    labels = np.asarray(labels)
    if type_map is not None and np.shape(type_map) != labels.shape:
        raise ValueError(
            f"type_map shape {np.shape(type_map)} differs from labels shape {labels.shape}"
        )
    info: dict[int, dict[str, Any]] = {}
    for index, window in enumerate(ndi.find_objects(labels.astype(np.int64)), start=1):
        if window is None:
            continue
        mask = labels[window] == index
        ys, xs = np.nonzero(mask)
        entry: dict[str, Any] = {
            "bbox": ((window[0].start, window[1].start), (window[0].stop, window[1].stop)),
            "centroid": (float(ys.mean() + window[0].start), float(xs.mean() + window[1].start)),
            "area": int(mask.sum()),
        }
        if type_map is not None:
            entry["type"], entry["type_prob"] = instance_type(np.asarray(type_map)[window][mask])
        info[index] = entry
    return info
