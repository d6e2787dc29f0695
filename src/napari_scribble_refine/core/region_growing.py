"""Region growing of scribbles (Sambaturu et al., MICCAI 2021): strokes spread to similar pixels.

Each scribbled pixel (value >= 1) spreads, one step at a time, to neighbouring pixels whose
intensity differs from the pixel it grows from by less than a threshold T. Intensities are
measured on a [0, 1] scale set by the image's own robust range, so one T suits uint8, uint16
and float images alike.

The growth is a breadth-first search over the frontier only: each step gathers the frontier's
neighbours with numpy fancy indexing, so the cost follows the number of grown pixels, not the
image size. A 1024 x 1024 image with a few strokes takes a few milliseconds.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

ROBUST_PERCENTILES = (0.5, 99.5)
"""Percentiles of the image's values that map to 0 and 1 for the growth threshold."""

RANGE_MAX_SAMPLES = 2**16
"""At most about this many pixels (a regular grid) estimate the robust range."""

LABEL_MAX = int(np.iinfo(np.int32).max)
"""The largest scribble label: results are int32."""


def _is_number(value: object) -> bool:
    """Whether ``value`` is a real number (Python or numpy; bool counts as 0 or 1)."""
    return isinstance(value, Real)


def _as_float(value: object) -> float:
    """``float(value)`` for a real number; NaN for anything else or an int beyond float."""
    if not _is_number(value):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def _is_whole(value: object) -> bool:
    """Whether ``value`` is a whole real number (``3``, ``3.0``, ``np.int64(3)``; not inf)."""
    return isinstance(value, Integral) or (
        _is_number(value) and math.isfinite(value) and value == math.floor(value)
    )


def _whole_number(value: object, name: str, minimum: int = 0) -> int:
    """Return ``value`` as an int, or raise a ValueError naming ``name``.

    Parameters
    ----------
    value : object
        A whole real number such as ``3``, ``3.0`` or ``np.int64(3)``.
    name : str
        The argument's name, for the message.
    minimum : int
        The smallest valid value.

    Returns
    -------
    int
        The value.

    Raises
    ------
    ValueError
        If ``value`` is not a number, not finite, not whole or below ``minimum``.
    """
    if not _is_whole(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def robust_intensity_range(
    image: ArrayLike, *, channel_axis: int | None = None
) -> tuple[float, float]:
    """Return the 0.5th and 99.5th percentiles of an image's values, all channels pooled.

    Large images are subsampled on a regular grid of at most about
    :data:`RANGE_MAX_SAMPLES` pixels (every k-th pixel along each spatial axis), which moves
    the percentiles by far less than a grey level yet keeps the cost near 1 ms. Channels are
    pooled so that colour distances keep their proportions. When the two percentiles are
    equal (an image that is nearly all one value) the minimum and maximum are used instead;
    for a constant image the range is ``(value, value + 1)``.

    Parameters
    ----------
    image : array_like
        Greyscale or multichannel image, any real dtype.
    channel_axis : int or None
        Axis holding colour channels (it is not subsampled), or None.

    Returns
    -------
    tuple of float
        ``(low, high)`` with ``high > low``; intensities are scaled as
        ``(value - low) / (high - low)``.
    """
    array = np.asarray(image)
    spatial_ndim = array.ndim - (channel_axis is not None)
    n_pixels = array.size // (array.shape[channel_axis] if channel_axis is not None else 1)
    step = max(1, math.ceil((n_pixels / RANGE_MAX_SAMPLES) ** (1 / max(spatial_ndim, 1))))
    index = [slice(None, None, step)] * array.ndim
    if channel_axis is not None:
        index[channel_axis] = slice(None)
    sample = array[tuple(index)]
    low, high = (float(v) for v in np.percentile(sample, ROBUST_PERCENTILES))
    if high <= low:
        low, high = float(array.min()), float(array.max())
    if high <= low:
        high = low + 1.0
    return low, high


def neighbour_offsets(ndim: int, connectivity: int) -> np.ndarray:
    """Offsets to the neighbours of a pixel, as in :func:`scipy.ndimage.generate_binary_structure`.

    Parameters
    ----------
    ndim : int
        Number of spatial dimensions.
    connectivity : int
        1 for face neighbours (4 in 2D, 6 in 3D) up to ``ndim`` for all (8 in 2D, 26 in 3D).

    Returns
    -------
    numpy.ndarray
        ``(n_neighbours, ndim)`` integer offsets, the centre excluded.
    """
    structure = ndimage.generate_binary_structure(ndim, connectivity)
    offsets = np.argwhere(structure) - 1
    return offsets[np.any(offsets != 0, axis=1)]


def grow_scribbles(
    image: ArrayLike,
    scribbles: ArrayLike,
    *,
    threshold: float = 0.05,
    max_distance: int = 10,
    connectivity: int = 1,
    intensity_range: tuple[float, float] | None = None,
    max_grown_ratio: float | None = None,
) -> np.ndarray:
    """Grow each scribble into neighbouring pixels of similar intensity.

    At every step, each pixel that joined a scribble in the previous step (at the first step,
    every scribbled pixel) offers its label to its unlabelled neighbours whose scaled intensity
    differs from its own by less than ``threshold`` (Euclidean distance over the colour
    channels for multichannel images; an alpha channel is ignored). A neighbour offered one
    label takes it; a neighbour offered two different labels in the same step is a tie: it
    stays 0 and is never claimed later, so it marks the border between the two classes.
    Scribbled pixels are never relabelled and pixels with value 0 never spread. After
    ``max_distance`` steps growth stops, so no grown pixel is more than ``max_distance`` steps
    (a geodesic distance through the grown region) from its original stroke, and a stroke on
    flat background cannot flood the image.

    With ``max_grown_ratio`` each stroke (a fully connected component of one label) may
    add at most ``floor(max_grown_ratio * its size)`` pixels; in a step that would exceed
    it, the candidates most similar to the pixel they grow from are taken first, and the
    stroke stops growing once its budget is spent (others may still claim those pixels).

    Intensities are scaled to [0, 1] by ``(value - low) / (high - low)`` where ``low, high``
    are the 0.5th and 99.5th percentiles of the whole image (see
    :func:`robust_intensity_range`); values outside the range are not clipped.

    Parameters
    ----------
    image : array_like
        ``(Y, X)`` or ``(Z, Y, X)`` greyscale, or the same with a trailing channel axis
        (``(Y, X, 3)`` RGB, ``(Y, X, 4)`` RGBA). Never modified.
    scribbles : array_like
        Integer labels with the image's spatial shape: 0 = no constraint, 1 = background,
        ``c + 1`` = class ``c`` (see
        :func:`~napari_scribble_refine.core.scribbles.validate_scribbles`). Never modified.
    threshold : float
        T, the largest scaled intensity difference (exclusive) between a pixel and the pixel
        it grows from. 0 disables growth.
    max_distance : int
        Number of growth steps, i.e. the farthest a grown pixel can be from its stroke.
    connectivity : int
        1: 4-connected in 2D, 6-connected in 3D. ``ndim``: 8-connected in 2D, 26 in 3D.
    intensity_range : tuple of float, optional
        ``(low, high)`` to use instead of :func:`robust_intensity_range` (callers that grow
        repeatedly on one image can compute it once).
    max_grown_ratio : float, optional
        Cap on the pixels each stroke may add, as a multiple of the stroke's own pixel
        count; None (default) or 0 means no cap.

    Returns
    -------
    numpy.ndarray
        New int32 label array with the spatial shape: the scribbles plus grown pixels.

    Raises
    ------
    TypeError
        If ``scribbles`` is not an integer array.
    ValueError
        If the shapes disagree, a label is negative, or a parameter is out of range.
    """
    labels = np.asarray(scribbles)
    pixels = np.asarray(image)
    if labels.dtype.kind not in "iu":
        raise TypeError(
            "scribbles must be an integer label array (see validate_scribbles), "
            f"got dtype {labels.dtype}"
        )
    if pixels.dtype.kind not in "iuf":
        raise TypeError(
            f"image must hold real numbers (an integer or floating-point dtype), got dtype "
            f"{pixels.dtype}"
        )
    if labels.ndim not in (2, 3):
        raise ValueError(f"scribbles must be 2D or 3D, got shape {labels.shape}")
    if pixels.shape == labels.shape:
        n_channels = 0
    elif pixels.ndim == labels.ndim + 1 and pixels.shape[:-1] == labels.shape:
        n_channels = pixels.shape[-1]
    else:
        raise ValueError(
            f"scribbles must have the image's spatial shape: image shape {pixels.shape}, "
            f"scribbles shape {labels.shape}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"scribbles must be >= 0, got minimum {labels.min()}")
    if labels.size and labels.max() > LABEL_MAX:
        raise ValueError(f"scribbles must be <= {LABEL_MAX} (int32), got {labels.max()}")
    if not _as_float(threshold) >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    max_distance = _whole_number(max_distance, "max_distance")
    if max_grown_ratio is not None and not _as_float(max_grown_ratio) >= 0:
        raise ValueError(f"max_grown_ratio must be None or a number >= 0, got {max_grown_ratio!r}")
    if intensity_range is not None:
        sequence = isinstance(intensity_range, tuple | list) or np.ndim(intensity_range) == 1
        bounds = [_as_float(v) for v in intensity_range] if sequence else []
        if not (len(bounds) == 2 and all(map(math.isfinite, bounds)) and bounds[0] < bounds[1]):
            raise ValueError(
                "intensity_range must be None or (low, high) with finite low < high, "
                f"got {intensity_range!r}"
            )
    if connectivity not in range(1, labels.ndim + 1):
        raise ValueError(
            f"connectivity must be between 1 and {labels.ndim} for {labels.ndim}D scribbles, "
            f"got {connectivity!r}"
        )

    grown = labels.astype(np.int32, order="C", copy=True)  # flat views below need C order
    if max_distance == 0 or threshold == 0 or not grown.any():  # (an empty image too)
        return grown

    if intensity_range is None:
        intensity_range = robust_intensity_range(pixels, channel_axis=-1 if n_channels else None)
    low, high = intensity_range
    # Compare raw differences with T rescaled to the image's units: no full-image conversion.
    limit = float(threshold) * (float(high) - float(low))
    if n_channels:
        values = pixels[..., : min(n_channels, 3)].reshape(-1, min(n_channels, 3))
    else:
        values = pixels.reshape(-1)

    shape = labels.shape
    flat = grown.reshape(-1)
    blocked = np.zeros(flat.size, dtype=bool)
    offsets = neighbour_offsets(labels.ndim, connectivity)
    flat_offsets = offsets @ np.array(
        [math.prod(shape[axis + 1 :]) for axis in range(len(shape))], dtype=np.intp
    )

    frontier = np.flatnonzero(flat)
    capped = bool(max_grown_ratio)
    if capped:
        owner, budget = _stroke_budgets(labels, float(max_grown_ratio))
        flat_owner = owner.reshape(-1)
    for _ in range(int(max_distance)):
        if frontier.size == 0:
            break
        coords = np.unravel_index(frontier, shape)
        source_values = values[frontier].astype(np.float64)
        source_labels = flat[frontier]
        claimed_at, claimed_by, claimed_owner, claimed_diff = [], [], [], []
        for offset, flat_offset in zip(offsets, flat_offsets, strict=True):
            inside = np.ones(frontier.size, dtype=bool)
            for axis, step in enumerate(offset):
                if step:
                    moved = coords[axis] + step
                    inside &= (moved >= 0) & (moved < shape[axis])
            source = np.flatnonzero(inside)
            target = frontier[source] + flat_offset
            free = (flat[target] == 0) & ~blocked[target]
            source, target = source[free], target[free]
            difference = values[target] - source_values[source]
            if n_channels:
                squared = np.einsum("ij,ij->i", difference, difference)
            else:
                squared = difference * difference
            similar = squared < limit * limit
            claimed_at.append(target[similar])
            claimed_by.append(source_labels[source[similar]])
            if capped:
                claimed_owner.append(flat_owner[frontier[source[similar]]])
                claimed_diff.append(squared[similar])

        targets = np.concatenate(claimed_at)
        if targets.size == 0:
            break
        offered = np.concatenate(claimed_by)
        order = np.argsort(targets, kind="stable")
        targets, offered = targets[order], offered[order]
        starts = np.flatnonzero(np.r_[True, targets[1:] != targets[:-1]])
        lowest = np.minimum.reduceat(offered, starts)
        highest = np.maximum.reduceat(offered, starts)
        unique_targets = targets[starts]
        agreed = lowest == highest
        blocked[unique_targets[~agreed]] = True
        accepted = unique_targets[agreed]
        if capped:
            owners = np.minimum.reduceat(np.concatenate(claimed_owner)[order], starts)[agreed]
            closest = np.minimum.reduceat(np.concatenate(claimed_diff)[order], starts)[agreed]
            keep = _within_budget(owners, closest, budget)
            accepted, owners = accepted[keep], owners[keep]
            flat_owner[accepted] = owners
        flat[accepted] = lowest[agreed][keep] if capped else lowest[agreed]
        frontier = accepted
    return grown


def _stroke_budgets(labels: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Label every stroke (fully connected component of one label) and give it a budget.

    Returns the int64 component map (0 = unlabelled; 1.. strokes) and the budget of each
    component id (index 0 unused), ``floor(ratio * size)``.
    """
    owner = np.zeros(labels.shape, dtype=np.int64)
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    offset = 0
    for value in np.unique(labels[labels > 0]):
        components, n = ndimage.label(labels == value, structure=structure)
        owner[components > 0] = components[components > 0] + offset
        offset += n
    sizes = np.bincount(owner.reshape(-1), minlength=offset + 1)
    budget = np.floor(ratio * sizes).astype(np.int64)
    budget[0] = 0
    return owner, budget


def _within_budget(owners: np.ndarray, closeness: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Choose the candidates each stroke may take this step (most similar first)."""
    order = np.lexsort((closeness, owners))
    sorted_owners = owners[order]
    starts = np.flatnonzero(np.r_[True, sorted_owners[1:] != sorted_owners[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, sorted_owners.size]))
    rank = np.arange(sorted_owners.size) - group_start
    keep_sorted = rank < budget[sorted_owners]
    keep = np.zeros(owners.size, dtype=bool)
    keep[order[keep_sorted]] = True
    np.subtract.at(budget, owners[keep], 1)
    return keep
