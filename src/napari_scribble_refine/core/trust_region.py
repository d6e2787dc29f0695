"""Which of the tuned head's changes a refinement keeps: local corrections and look-alikes.

A head tuned on a few strokes changes pixels everywhere: the strokes' own error regions (the
point of the stroke), regions that look like them (the paper's promise: the correction
spreads to similar, unscribbled errors), and regions that merely sat near the decision
boundary (damage: one stroke flipped a whole brightfield image). The trust region keeps the
first two and reverts the third, by connected regions of change:

* **local**: a region of pixels that change to class c and touch a stroke of class c is
  kept within the stroke's reach (``reach`` times the stroke's extent, at least
  ``min_reach`` px): the stroke fixes the error it was drawn in; with ``local_similar``
  only at the pixels whose features are closer to the pixels the stroke corrected than to
  their old class's, so a true nucleus beside a corrected error stays;
* **look-alike** (``spread``): a region that touches no stroke of its new class is kept
  only when its mean feature vector (the features the head reads, standardised per
  channel) is closer to the features of the pixels that class c's strokes *corrected*
  than to those of its old class (that class's strokes, or else its pixels), by a
  ``margin``, and the tuned head is confident there (mean probability of c at least
  ``confidence``);
* everything else keeps the pre-trained head's class.

Everything here is 2D; stacks are handled slice by slice by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Describe", "accepted_changes", "like_corrected", "region_means"]

Describe = Callable[[np.ndarray], np.ndarray]
"""Maps a (Y, X) bool mask to the (F, k) standardised features of its k pixels."""

_EIGHT = np.ones((3, 3), dtype=bool)


def _stroke_reach(strokes: np.ndarray, reach: float, min_reach: float) -> np.ndarray:
    """Distance (px) each pixel may lie from its nearest stroke to count as local."""
    lab, n = ndi.label(strokes, structure=_EIGHT)
    extent = np.zeros(n + 1)
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        extent[i] = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
    dist, (iy, ix) = ndi.distance_transform_edt(~strokes, return_indices=True)
    allowed = np.maximum(reach * extent[lab[iy, ix]], min_reach)
    return dist <= allowed


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """Return the smallest window holding every True pixel of a 2D mask."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _nearer_correction(
    values: np.ndarray,
    old: np.ndarray,
    proto_new: np.ndarray,
    scribbles: np.ndarray,
    describe: Describe,
    class_means: Mapping[int, np.ndarray],
    margin: float,
    unknown: bool,
) -> np.ndarray:
    """Which feature vectors lie nearer the corrected pixels' mean than their old class's.

    Parameters
    ----------
    values : numpy.ndarray
        (k, F) feature vectors (pixels or region means).
    old : numpy.ndarray
        (k,) the class each one leaves.
    proto_new : numpy.ndarray
        (F,) mean feature of the pixels the strokes corrected.
    scribbles, describe, class_means
        As for :func:`accepted_changes`: an old class's reference is the mean feature of
        its strokes, else its entry in ``class_means``.
    margin : float
        Nearer means ``d_new < margin * d_old``.
    unknown : bool
        The answer for an old class without a reference.

    Returns
    -------
    numpy.ndarray
        bool (k,).
    """
    keep = np.full(old.size, unknown, dtype=bool)
    for b in np.unique(old):
        own = scribbles == b + 1
        if own.any():
            proto_old = describe(own).mean(1)
        elif int(b) in class_means:
            proto_old = class_means[int(b)]
        else:
            continue
        rows = old == b
        d_new = np.linalg.norm(values[rows] - proto_new, axis=1)
        d_old = np.linalg.norm(values[rows] - proto_old, axis=1)
        keep[rows] = d_new < margin * d_old
    return keep


def like_corrected(
    mask: np.ndarray,
    c: int,
    before: np.ndarray,
    scribbles: np.ndarray,
    describe: Describe,
    class_means: Mapping[int, np.ndarray],
) -> np.ndarray:
    """Which pixels of a mask look more like what class c's strokes corrected than their old class.

    Parameters
    ----------
    mask : numpy.ndarray
        (Y, X) bool: the pixels asked about.
    c : int
        The class they would take.
    before : numpy.ndarray
        (Y, X) the pre-trained classes.
    scribbles, describe, class_means
        As for :func:`accepted_changes`; the corrected pixels are those of class c's
        strokes where ``before`` is not c.

    Returns
    -------
    numpy.ndarray
        bool (k,) for the mask's k pixels in row-major order; all True when c's strokes
        corrected nothing (there is no reference to test against).
    """
    corrected = (scribbles == c + 1) & (before != c)
    if not corrected.any():
        return np.ones(int(np.count_nonzero(mask)), dtype=bool)
    return _nearer_correction(
        describe(mask).T, before[mask], describe(corrected).mean(1),
        scribbles, describe, class_means, margin=1.0, unknown=True,
    )  # fmt: skip


def region_means(describe: Describe, lab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean feature vector of each region ``ids`` of ``lab``: (len(ids), F)."""
    mask = np.isin(lab, ids)
    values = describe(mask)
    index = np.searchsorted(ids, lab[mask])
    counts = np.maximum(np.bincount(index, minlength=ids.size), 1)
    out = np.empty((ids.size, values.shape[0]), np.float64)
    for f in range(values.shape[0]):
        out[:, f] = np.bincount(index, weights=values[f], minlength=ids.size) / counts
    return out


def accepted_changes(
    before: np.ndarray,
    after: np.ndarray,
    scribbles: np.ndarray,
    describe: Describe | None = None,
    class_means: Mapping[int, np.ndarray] | None = None,
    after_prob: np.ndarray | None = None,
    *,
    reach: float = 1.0,
    min_reach: float = 8.0,
    confidence: float = 0.7,
    margin: float = 1.0,
    spread: bool = True,
    local_similar: bool = False,
) -> np.ndarray:
    """Return where the tuned head's class replaces the pre-trained one (see module doc).

    Parameters
    ----------
    before, after : numpy.ndarray
        (Y, X) integer class maps of the pre-trained and the tuned head.
    scribbles : numpy.ndarray
        (Y, X) scribbles the head was tuned on (0 none, c + 1 class c; grown ones included).
    describe : callable, optional
        Standardised features of the pixels of a mask (:data:`Describe`) for the
        look-alike test; None keeps local changes only.
    class_means : mapping of int to numpy.ndarray, optional
        Mean standardised feature of each class of ``before``: an old class's reference
        where no stroke of it exists.
    after_prob : numpy.ndarray, optional
        (Y, X) the tuned head's probability of its own class at each pixel; None skips the
        confidence test.
    reach : float
        Local changes count up to this many stroke extents from a stroke.
    min_reach : float
        ... and at least this many pixels.
    confidence : float
        Least mean probability of a look-alike region's new class.
    margin : float
        A look-alike's distance to the corrected pixels' mean feature must be below this
        fraction of its distance to its old class's (1: merely closer).
    spread : bool
        Keep look-alike regions at all.
    local_similar : bool
        Keep a local change only at pixels whose features are closer to the corrected
        pixels' than to their old class's (strokes that only confirm change nothing).

    Returns
    -------
    numpy.ndarray
        bool (Y, X): True where the tuned class is kept.
    """
    before = np.asarray(before)
    after = np.asarray(after)
    changed = before != after
    accept = np.zeros(before.shape, dtype=bool)
    if not changed.any():
        return accept
    scribbles = np.asarray(scribbles)
    class_means = class_means or {}
    for c in np.unique(after[changed]):
        target = changed & (after == c)
        strokes = scribbles == c + 1
        lab, n = ndi.label(target, structure=_EIGHT)
        touching = np.zeros(1, lab.dtype)
        corrected = strokes & (before != c)
        if strokes.any():
            touching = np.unique(lab[ndi.binary_dilation(strokes, _EIGHT, iterations=2)])
            local = np.isin(lab, touching[touching > 0])
            if local.any():  # the reach is needed only where local changes are
                box = _bounding_box(local | strokes)
                local[box] &= _stroke_reach(strokes[box], reach, min_reach)
            if local_similar and local.any() and describe is not None:
                local[local] = like_corrected(local, c, before, scribbles, describe, class_means)
            accept |= local
        if not spread or describe is None or not corrected.any():
            continue
        far = np.setdiff1d(np.arange(1, n + 1), touching)
        if far.size == 0:
            continue
        old_class = np.asarray(ndi.median(before, lab, far), dtype=np.int64)
        keep = _nearer_correction(
            region_means(describe, lab, far), old_class, describe(corrected).mean(1),
            scribbles, describe, class_means, margin=margin, unknown=False,
        )  # fmt: skip
        if after_prob is not None and keep.any():
            conf = np.asarray(ndi.mean(after_prob, lab, far))
            keep &= conf >= confidence
        if keep.any():
            accept |= np.isin(lab, far[keep])
    return accept
