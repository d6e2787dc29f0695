"""A type stroke retypes the nuclei that look like the nuclei it was drawn on.

A type stroke on one nucleus says what that kind of nucleus is; a model trained on other
tissue often has every nucleus of that kind wrong. Here every nucleus is described by the
mean of the head's standardised features over its pixels, and an unscribbled nucleus of
class ``a`` takes a scribbled class ``t`` when its description is nearer the scribbled
nuclei of ``t`` than the reference of ``a`` (the nuclei scribbled ``a``, else every
unscribbled nucleus the model calls ``a``), by a ``margin``. Only the type changes:
background stays background and a nucleus stays a nucleus. Everything is 2D; stacks are
handled slice by slice by the caller.
"""

from __future__ import annotations

import numpy as np

from .trust_region import Describe, region_means

__all__ = ["spread_types"]


def _majority(keys: np.ndarray, values: np.ndarray, n_keys: int, n_values: int) -> np.ndarray:
    """Most frequent value per key (-1 where a key has none; ties: the smaller value)."""
    votes = np.bincount(keys * n_values + values, minlength=n_keys * n_values)
    votes = votes.reshape(n_keys, n_values)
    out = votes.argmax(1)
    out[votes.sum(1) == 0] = -1
    return out


def spread_types(
    instances: np.ndarray,
    class_map: np.ndarray,
    scribbles: np.ndarray,
    describe: Describe,
    margin: float = 1.0,
) -> np.ndarray:
    """Retype unscribbled nuclei that look like the nuclei a type stroke was drawn on.

    Parameters
    ----------
    instances : numpy.ndarray
        (Y, X) integer instance labels, 0 = background.
    class_map : numpy.ndarray
        (Y, X) integer classes, 0 = background, one foreground class per instance (as
        :func:`~napari_scribble_refine.core.postprocess.type_by_instance` leaves them).
    scribbles : numpy.ndarray
        (Y, X) scribbles (0 none, c + 1 class c); only foreground classes (c >= 1) count.
    describe : callable
        Standardised features (F, k) of the k pixels of a (Y, X) bool mask.
    margin : float
        A nucleus changes when its distance to the scribbled class is below ``margin``
        times its distance to its own class's reference.

    Returns
    -------
    numpy.ndarray
        A new class map (``class_map``'s dtype); unchanged where no nucleus moves.
    """
    instances = np.asarray(instances)
    class_map = np.asarray(class_map)
    scribbles = np.asarray(scribbles)
    out = class_map.copy()
    inside = (instances > 0) & (class_map > 0)
    if not (inside & (scribbles > 1)).any():
        return out
    ids, lab = np.unique(instances[inside], return_inverse=True)
    n_cls = max(int(class_map.max()), int(scribbles.max()) - 1) + 1
    own = _majority(lab, class_map[inside].astype(np.int64), ids.size, n_cls)
    typed = scribbles[inside].astype(np.int64) - 1
    marked = typed >= 1
    scribbled = _majority(lab[marked], typed[marked], ids.size, n_cls)
    ref_ids = np.zeros_like(instances)
    ref_ids[inside] = lab + 1
    means = region_means(describe, ref_ids, np.arange(1, ids.size + 1))
    free = scribbled < 0
    classes = np.unique(scribbled[~free])
    protos = np.stack([means[scribbled == t].mean(0) for t in classes])
    d_new = np.linalg.norm(means[:, None, :] - protos[None], axis=2)  # (n, len(classes))
    reference = {}
    for a in np.unique(own):
        pool = scribbled == a if (scribbled == a).any() else free & (own == a)
        if pool.any():
            reference[int(a)] = means[pool].mean(0)
    d_old = np.array(
        [np.linalg.norm(means[i] - reference.get(int(own[i]), np.inf)) for i in range(ids.size)]
    )
    d_new[classes[None, :] == own[:, None]] = np.inf  # moving to its own class is no move
    best = d_new.argmin(1)
    move = free & (d_new[np.arange(ids.size), best] < margin * d_old)
    if move.any():
        moved = np.where(move[lab], classes[best][lab], class_map[inside])
        out[inside] = moved.astype(out.dtype)
    return out
