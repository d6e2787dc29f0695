"""Scribbles: checking them, and turning points and boxes into them.

A scribble array has the image's spatial shape, ``(Y, X)`` or ``(Z, Y, X)``, and holds
integer labels: 0 = no constraint, 1 = background, ``c + 1`` = class ``c`` (the convention of
ilastik, APOC and napari Labels layers). Every function here returns a new int32 array and
never writes into its inputs.

Region growing lives in :mod:`.region_growing` and is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .region_growing import LABEL_MAX, _is_number, _is_whole, _whole_number, grow_scribbles

__all__ = [
    "boxes_to_scribbles",
    "grow_scribbles",
    "merge_scribbles",
    "points_to_scribbles",
    "scribbled_classes",
    "validate_scribbles",
]

BACKGROUND = 1
"""Scribble value of the background class."""


def _label_array(labels: ArrayLike, name: str) -> np.ndarray:
    """Check that an array holds non-negative whole numbers and return it (not copied).

    Integer dtypes pass. Floating-point arrays pass when every value is a whole number (TIFF
    and dask pipelines sometimes hand labels over as floats). Boolean arrays are rejected:
    ``True`` would silently mean "background" (1), which is rarely what a mask intends.
    """
    array = _as_array(labels, name)
    dtype = array.dtype
    if dtype.kind == "b":
        raise TypeError(
            f"{name} must be an integer label array, got a boolean mask; convert it "
            "explicitly (1 = background, c + 1 = class c), e.g. mask.astype(int) * (c + 1)"
        )
    if dtype.kind not in "iuf":
        raise TypeError(f"{name} must be an integer label array, got dtype {dtype}")
    if dtype.kind == "f":
        fractional = ~np.isfinite(array) | (array != np.round(array))
        if fractional.any():
            bad = array[fractional].flat[0]
            raise ValueError(
                f"{name} must hold whole numbers (integer labels), got value {bad!r} "
                f"in a {dtype} array"
            )
    if array.size and array.min() < 0:
        raise ValueError(
            f"{name} must be >= 0 (0 = no constraint, 1 = background, c + 1 = class c), "
            f"got minimum {array.min().item()!r}"
        )
    if array.size and array.max() > LABEL_MAX:
        raise ValueError(
            f"{name} must be <= {LABEL_MAX} (labels are int32), got {array.max().item()!r}"
        )
    return array


def _as_array(values: ArrayLike, name: str) -> np.ndarray:
    """``np.asarray(values)``, raising a ValueError naming ``name`` for ragged input."""
    try:
        return np.asarray(values)
    except (ValueError, TypeError) as err:  # ragged nested sequences
        raise ValueError(f"{name} must be a rectangular array: {err}") from err


def _real_array(values: ArrayLike, name: str) -> np.ndarray:
    """Coordinates as float64, or raise naming ``name`` when they are not real numbers."""
    array = _as_array(values, name)
    if array.dtype.kind not in "biufO":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    try:
        return array.astype(np.float64)
    except (ValueError, TypeError) as err:  # an object array holding None or text
        raise TypeError(f"{name} must hold real numbers: {err}") from err


def _spatial_tuple(spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """Return the axis lengths of ``spatial_shape`` as ints (ValueError naming it otherwise)."""
    try:
        sides = list(spatial_shape)
    except TypeError:
        sides = [None]
    for side in sides:
        if not _is_whole(side):
            raise ValueError(f"spatial_shape must be a sequence of ints, got {spatial_shape!r}")
    return tuple(int(s) for s in sides)


def validate_scribbles(
    scribbles: ArrayLike,
    spatial_shape: Sequence[int],
    n_classes: int,
    *,
    allow_new_class: bool = False,
    name: str = "scribbles",
) -> np.ndarray:
    """Check scribbles against an image and a model, and return a clean int32 copy.

    Empty scribbles (all 0) are valid; use :func:`scribbled_classes` to find out whether
    there is anything to do.

    Parameters
    ----------
    scribbles : array_like
        Labels with the image's spatial shape: 0 = no constraint, 1 = background,
        ``c + 1`` = class ``c``. Integer dtype, or floating point holding whole numbers
        only. Boolean masks are rejected (see Raises). Never modified.
    spatial_shape : sequence of int
        The image's spatial shape, ``(Y, X)`` or ``(Z, Y, X)``.
    n_classes : int
        Number of the model's classes, background included; the largest valid value is
        ``n_classes`` (class ``n_classes - 1``).
    allow_new_class : bool
        Also accept the value ``n_classes + 1``: scribbles of one class the model does not
        have yet.
    name : str
        Name of the argument, used in error messages.

    Returns
    -------
    numpy.ndarray
        A new int32 array of shape ``spatial_shape``.

    Raises
    ------
    TypeError
        If the array is boolean or its dtype is not numeric.
    ValueError
        If the number of dimensions or the shape differs from ``spatial_shape``, a value is
        not a whole number, negative, or beyond the model's classes.
    """
    spatial_shape = _spatial_tuple(spatial_shape)
    n_classes = _whole_number(n_classes, "n_classes", minimum=1)
    array = _as_array(scribbles, name)
    if array.ndim != len(spatial_shape):
        raise ValueError(
            f"{name} must have {len(spatial_shape)} dimensions like the image's spatial shape "
            f"{spatial_shape}, got {array.ndim} dimension(s) with shape {array.shape}"
        )
    if array.shape != spatial_shape:
        raise ValueError(
            f"{name} must have the image's spatial shape {spatial_shape}, got {array.shape}"
        )
    array = _label_array(array, name)

    largest = int(n_classes) + (1 if allow_new_class else 0)
    highest = array.max().item() if array.size else 0
    if highest > largest:
        hint = (
            "at most one new class can be added at a time"
            if allow_new_class
            else f"to add a class, allow a new class (value {n_classes + 1})"
        )
        raise ValueError(
            f"{name} has value {highest:g} (class {highest - 1:g}), but the model has "
            f"{n_classes} classes, so values must be 0..{largest} "
            f"(0 = no constraint, 1 = background, c + 1 = class c); {hint}"
        )
    return np.array(array, dtype=np.int32, copy=True)


def scribbled_classes(scribbles: ArrayLike) -> tuple[int, ...]:
    """Classes that have at least one scribbled pixel.

    Parameters
    ----------
    scribbles : array_like
        Valid scribble labels (see :func:`validate_scribbles`).

    Returns
    -------
    tuple of int
        Sorted class indices (scribble value minus 1, so 0 = background); empty when
        nothing is scribbled.
    """
    values = np.asarray(scribbles)
    present = np.unique(values[values > 0])
    return tuple(int(v) - 1 for v in present)


def _per_item_classes(classes: int | ArrayLike, n_items: int, what: str) -> np.ndarray:
    """Broadcast ``classes`` to one scribble value (>= 1) per point or box."""
    values = _as_array(classes, "classes")
    if values.ndim == 0:
        values = np.full(n_items, values)
    if values.shape != (n_items,):
        raise ValueError(
            f"classes must be one scribble value or one per {what} ({n_items}), "
            f"got shape {values.shape}"
        )
    values = _label_array(values, "classes")
    if values.size and values.min() < BACKGROUND:
        raise ValueError(
            "classes must be scribble values >= 1 (1 = background, c + 1 = class c), "
            f"got {values.min().item()!r}"
        )
    return values.astype(np.int32)


def _spatial_shape(spatial_shape: Sequence[int]) -> tuple[int, ...]:
    shape = _spatial_tuple(spatial_shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"spatial_shape must be (Y, X) or (Z, Y, X), got {shape}")
    return shape


def _round(coordinates: np.ndarray) -> np.ndarray:
    """Nearest pixel (halves round up), napari's pixel-centre convention."""
    return np.floor(coordinates + 0.5).astype(np.intp)


def points_to_scribbles(
    points: ArrayLike,
    classes: int | ArrayLike,
    spatial_shape: Sequence[int],
    radius: int = 3,
    *,
    per_slice: bool = True,
) -> np.ndarray:
    """Paint a disk of a scribble value around each point.

    Parameters
    ----------
    points : array_like
        ``(N, ndim)`` pixel coordinates in the order of ``spatial_shape`` (napari Points
        layer data in data coordinates); rounded to the nearest pixel.
    classes : int or array_like
        Scribble value of every point (1 = background, ``c + 1`` = class ``c``), or one
        value per point.
    spatial_shape : sequence of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    radius : int
        Disk radius in pixels; 0 paints single pixels.
    per_slice : bool
        For 3D shapes: True paints a disk in each point's own Z slice (what a user clicking
        in napari's 2D view sees); False paints a ball.

    Returns
    -------
    numpy.ndarray
        New int32 scribble array; where disks overlap, later points win. Disks are clipped
        at the image border.

    Raises
    ------
    ValueError
        If ``points`` is not ``(N, ndim)``, a point's centre lies outside the image, or a
        class value is below 1.
    """
    shape = _spatial_shape(spatial_shape)
    coordinates = _real_array(points, "points")
    if coordinates.size == 0:
        coordinates = coordinates.reshape(0, len(shape))
    if coordinates.ndim != 2 or coordinates.shape[1] != len(shape):
        raise ValueError(
            f"points must have shape (N, {len(shape)}) for spatial shape {shape}, "
            f"got {coordinates.shape}"
        )
    if not np.isfinite(coordinates).all():
        raise ValueError("points must have finite coordinates")
    radius = _whole_number(radius, "radius")
    values = _per_item_classes(classes, len(coordinates), "point")
    centres = _round(coordinates)
    outside = np.any((centres < 0) | (centres >= np.array(shape)), axis=1)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"points[{index}] = {coordinates[index].tolist()} lies outside the image of "
            f"spatial shape {shape}"
        )

    # A disk wider than the image's diagonal paints what the diagonal does (disks are
    # clipped): no (2 r + 1)**ndim offset grid for a huge radius.
    radius = min(radius, math.ceil(math.hypot(*shape)))
    disk_axes = len(shape) if (len(shape) == 2 or not per_slice) else 2
    grid = np.indices((2 * radius + 1,) * disk_axes).reshape(disk_axes, -1).T - radius
    offsets = grid[(grid**2).sum(axis=1) <= radius**2]
    offsets = np.pad(offsets, ((0, 0), (len(shape) - disk_axes, 0)))

    out = np.zeros(shape, dtype=np.int32)
    for centre, value in zip(centres, values, strict=True):
        pixels = centre + offsets
        pixels = pixels[np.all((pixels >= 0) & (pixels < np.array(shape)), axis=1)]
        out[tuple(pixels.T)] = value
    return out


def _box_bounds(box: ArrayLike, index: int, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Inclusive pixel bounds ``(low, high)`` of box ``index`` and its axes with extent."""
    corners = _real_array(box, f"boxes[{index}]")
    if corners.ndim != 2 or corners.shape[0] < 2 or corners.shape[1] != len(shape):
        raise ValueError(
            f"boxes[{index}] must be corner coordinates of shape (2, {len(shape)}) or "
            f"(4, {len(shape)}), got {corners.shape}"
        )
    if not np.isfinite(corners).all():
        raise ValueError(f"boxes[{index}] must have finite coordinates")
    low, high = _round(corners.min(axis=0)), _round(corners.max(axis=0))
    extent = high > low
    if not extent.any():
        raise ValueError(f"boxes[{index}] has no extent: corners {corners.tolist()}")
    if np.any((high < 0) | (low >= np.array(shape))):
        raise ValueError(
            f"boxes[{index}] with corners {corners.tolist()} lies outside the image of "
            f"spatial shape {shape}"
        )
    return low, high, extent


def _slices(low: np.ndarray, high: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices for the inclusive range ``low..high`` clipped to ``shape``."""
    return tuple(
        slice(max(int(lo), 0), min(int(hi), size - 1) + 1)
        for lo, hi, size in zip(low, high, shape, strict=True)
    )


def boxes_to_scribbles(
    boxes: Sequence[ArrayLike] | ArrayLike,
    classes: int | ArrayLike,
    spatial_shape: Sequence[int],
    ring: int = 3,
    *,
    core_fraction: float = 0.5,
) -> np.ndarray:
    """Turn boxes drawn around objects into scribbles: a class core and a background ring.

    Each box's corners are rounded to the nearest pixel; the box covers those pixels
    inclusive. Axes along which the corners differ are the box's extent; an axis where they
    agree (the slice of a napari rectangle drawn on a 3D stack) stays that one slice.

    * Core: the central ``core_fraction`` of the box along each extent axis (at least the
      centre pixel) gets the box's class. A fraction rather than a fixed margin because the
      corners of a box around a round nucleus are background: with the default 0.5 the core
      lies inside the ellipse inscribed in the box. Between the core and the box edge, where
      the object's boundary is, nothing is constrained.
    * Ring: ``ring`` pixels just outside the box along its extent axes get background (1),
      except where they fall inside another box.

    Cores win over rings. Where cores overlap, later boxes win.

    Parameters
    ----------
    boxes : sequence of array_like
        One corner array per box, shape ``(2, ndim)`` (opposite corners) or ``(4, ndim)``
        (napari Shapes rectangle data), in the order of ``spatial_shape``.
    classes : int or array_like
        Scribble value of every box (``c + 1`` = class ``c``), or one value per box.
    spatial_shape : sequence of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    ring : int
        Width of the background ring in pixels; 0 paints no ring.
    core_fraction : float
        Fraction of the box's extent, per axis, that the core spans; in (0, 1].

    Returns
    -------
    numpy.ndarray
        New int32 scribble array.

    Raises
    ------
    ValueError
        If a box has the wrong shape, no extent, or lies wholly outside the image (boxes
        partly outside are clipped), or a parameter is out of range.
    """
    shape = _spatial_shape(spatial_shape)
    ring = min(_whole_number(ring, "ring"), max(shape))  # rings are clipped at the border
    if not (_is_number(core_fraction) and 0 < core_fraction <= 1):
        raise ValueError(f"core_fraction must be in (0, 1], got {core_fraction!r}")
    try:
        boxes = list(boxes)
    except TypeError as err:
        raise TypeError(
            f"boxes must be a sequence of corner arrays, got {type(boxes).__name__}"
        ) from err
    values = _per_item_classes(classes, len(boxes), "box")
    bounds = [_box_bounds(box, i, shape) for i, box in enumerate(boxes)]

    background = np.zeros(shape, dtype=bool)
    if ring:
        for low, high, extent in bounds:
            background[_slices(low - ring * extent, high + ring * extent, shape)] = True
        for low, high, _ in bounds:
            background[_slices(low, high, shape)] = False

    out = np.zeros(shape, dtype=np.int32)
    out[background] = BACKGROUND
    for (low, high, extent), value in zip(bounds, values, strict=True):
        centre = (low + high) / 2
        half = (high - low) / 2 * core_fraction
        core_low = np.where(extent, np.ceil(centre - half), low).astype(np.intp)
        core_high = np.where(extent, np.floor(centre + half), high).astype(np.intp)
        core_high = np.maximum(core_high, core_low)
        out[_slices(core_low, core_high, shape)] = value
    return out


def merge_scribbles(*scribbles: ArrayLike) -> np.ndarray:
    """Combine scribble arrays; where several are non-zero, the later one wins.

    Parameters
    ----------
    *scribbles : array_like
        Label arrays of one shape (e.g. painted strokes, points, boxes). Never modified.

    Returns
    -------
    numpy.ndarray
        New int32 scribble array.

    Raises
    ------
    ValueError
        If no array is given, shapes differ, or a value is negative or not whole.
    TypeError
        If an array is boolean or not numeric.
    """
    if not scribbles:
        raise ValueError("merge_scribbles needs at least one scribble array")
    arrays = [_label_array(s, f"scribbles[{i}]") for i, s in enumerate(scribbles)]
    for i, array in enumerate(arrays[1:], start=1):
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"scribbles[{i}] has shape {array.shape}, but scribbles[0] has "
                f"{arrays[0].shape}; all must share the image's spatial shape"
            )
    merged = np.array(arrays[0], dtype=np.int32, copy=True)
    for array in arrays[1:]:
        np.copyto(merged, array, where=array != 0, casting="unsafe")
    return merged
