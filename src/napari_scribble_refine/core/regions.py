"""Boxes over an image's spatial axes (regions), and the box that holds the scribbles."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .lazy_image import Region

__all__ = [
    "BlankRegion",
    "box_text",
    "clip_region",
    "contains",
    "count_marked",
    "hull",
    "n_pixels",
    "region_shape",
    "scribble_box",
    "working_region",
]


class BlankRegion(ValueError):
    """A region whose pixels all have one value: nothing to segment (its prediction: none)."""


def box_text(region: Region) -> str:
    """Write a region as ``[y0:y1, x0:x1]``."""
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in region) + "]"


def region_shape(region: Region) -> tuple[int, ...]:
    """Return the shape of an array cut to a region."""
    return tuple(s.stop - s.start for s in region)


def n_pixels(region: Region) -> int:
    """Count a region's pixels."""
    return math.prod(region_shape(region))


def contains(outer: Region, inner: Region) -> bool:
    """Whether ``outer`` holds all of ``inner``."""
    return all(o.start <= i.start and i.stop <= o.stop for o, i in zip(outer, inner, strict=True))


def hull(a: Region, b: Region) -> Region:
    """Return the smallest region holding both."""
    return tuple(
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


def scribble_box(scribbles: Any) -> Region | None:
    """Return the smallest box holding every scribbled pixel, or None when nothing is scribbled.

    Each axis narrows the box before the next is measured, so only the first pass reads
    the whole array (a dask or zarr array chunk by chunk).

    Parameters
    ----------
    scribbles : array_like
        A numpy, dask or zarr array.

    Returns
    -------
    Region or None
        A box over the array's axes.
    """
    if not isinstance(scribbles, np.ndarray):
        import dask.array as da

        scribbles = da.asarray(scribbles)
    box: list[slice] = [slice(0, n) for n in scribbles.shape]
    for axis in range(scribbles.ndim):
        others = tuple(a for a in range(scribbles.ndim) if a != axis)
        projection = scribbles[tuple(box)].any(axis=others)
        hits = np.flatnonzero(np.asarray(projection))
        if hits.size == 0:
            return None
        start = box[axis].start
        box[axis] = slice(start + int(hits[0]), start + int(hits[-1]) + 1)
    return tuple(box)


def clip_region(region: tuple[slice, ...], shape: tuple[int, ...], max_pixels: int) -> Region:
    """Clip a region to an image and refuse an empty or too large one.

    Parameters
    ----------
    region : tuple of slice
        A box over the spatial axes.
    shape : tuple of int
        The image's spatial shape.
    max_pixels : int
        The most pixels a region may have.

    Returns
    -------
    Region
        With integer starts and stops inside the image.

    Raises
    ------
    ValueError
        If the region has the wrong number of axes, is empty, or has more than
        ``max_pixels`` pixels.
    """
    if len(region) != len(shape) or not all(isinstance(s, slice) for s in region):
        raise ValueError(
            f"region: give {len(shape)} slices over the axes of shape {shape}, got {region!r}"
        )
    clipped = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, shape, strict=True))
    if any(s.stop <= s.start for s in clipped):
        raise ValueError(f"region: {box_text(clipped)} is empty inside the image {shape}")
    if n_pixels(clipped) > max_pixels:
        raise ValueError(
            f"region: {box_text(clipped)} has {n_pixels(clipped):,} pixels, more than "
            f"max_region_pixels ({max_pixels:,}); zoom in, scribble within a smaller area, "
            "or raise max_region_pixels if memory allows"
        )
    return clipped


def count_marked(scribbles: Any) -> int:
    """Count the scribbled (non-zero) pixels, chunk by chunk for dask and zarr arrays."""
    if isinstance(scribbles, np.ndarray):
        return int(np.count_nonzero(scribbles))
    import dask.array as da

    return int(da.count_nonzero(da.asarray(scribbles)).compute())


def working_region(
    box: Region | None,
    view: Region | None,
    current: Region | None,
    shape: tuple[int, ...],
    context: int,
    max_pixels: int,
) -> Region | None:
    """Choose the region a refinement trains on.

    Parameters
    ----------
    box : Region or None
        The scribbles' box (None: nothing scribbled).
    view : Region or None
        What the user looks at (already clipped to the image).
    current : Region or None
        The current working region.
    shape : tuple of int
        The image's spatial shape.
    context : int
        Pixels of context around the box when there is no view.
    max_pixels : int
        The largest region.

    Returns
    -------
    Region or None
        ``current`` when it holds the box and the view; else the box joined with the view
        (the view alone when that would exceed ``max_pixels``: scribbles outside it are
        not used); else the box grown by ``context`` in Y and X; None when nothing is
        scribbled and there is no view.

    Raises
    ------
    ValueError
        When, without a view, the scribbles and their context exceed ``max_pixels``.
    """
    if box is None:
        return view
    wanted = box if view is None else hull(box, view)
    if current is not None and contains(current, wanted):
        return current
    if view is not None:  # too far apart: the view alone (the rest is not used)
        return wanted if n_pixels(wanted) <= max_pixels else view
    grown = list(box)
    for axis in (-2, -1):
        s, n = box[axis], shape[axis]
        grown[axis] = slice(max(0, s.start - context), min(n, s.stop + context))
    if n_pixels(tuple(grown)) > max_pixels:
        raise ValueError(
            f"scribbles: they span {box_text(box)}, more than max_region_pixels "
            f"({max_pixels:,}) with their context; give the region you look at (region=; "
            "--region on the command line) to refine on the scribbles there"
        )
    return tuple(grown)
