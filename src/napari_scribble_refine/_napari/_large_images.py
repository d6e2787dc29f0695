"""Large images in the widget: work on the region in view, never on the whole image.

An image with more than :data:`LARGE_PIXELS` pixels per slice (or a multiscale one) is
opened as a :class:`~napari_scribble_refine.core.slide.SlideSession`, which reads the
layer's data lazily (dask, zarr or numpy) and runs the network only on the tiles a region
needs. Predict works on the region on screen (at most :data:`REGION_SIDE` a side, around
the centre of the view); the prediction, instances and new scribble layers cover that
region, placed over the image; Refine and Undo act on it; Predict on another view moves
there, keeping the head as tuned so far.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._layers import spatial_shape

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

LARGE_PIXELS = 2048 * 2048
"""Images with more pixels per slice than this are worked on region by region."""

REGION_SIDE = 2048
"""Largest side of the region Predict works on."""


def is_large(layer: Image) -> bool:
    """Whether an image layer is worked on region by region.

    Parameters
    ----------
    layer : napari.layers.Image
        The layer.

    Returns
    -------
    bool
        True for multiscale layers and slices of more than :data:`LARGE_PIXELS` pixels.
    """
    height, width = spatial_shape(layer)[-2:]
    return bool(layer.multiscale) or height * width > LARGE_PIXELS


def visible_region(viewer: napari.viewer.Viewer, layer: Image) -> tuple[slice, ...]:
    """Return the region of a layer on screen, at most :data:`REGION_SIDE` a side.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (its current slice, for a stack).
    layer : napari.layers.Image
        The image layer.

    Returns
    -------
    tuple of slice
        ``(ys, xs)``, or ``(zs, ys, xs)`` with the slice in view, in full-resolution
        pixels; the centre of the view when it is larger than :data:`REGION_SIDE`.
    """
    shape = spatial_shape(layer)
    corners = np.asarray(layer.corner_pixels, dtype=float)[:, -2:]
    if layer.multiscale:
        corners = corners * np.asarray(layer.downsample_factors[layer.data_level])[-2:]
    box = []
    for axis in (0, 1):
        size = shape[-2 + axis]
        lo, hi = int(corners[0, axis]), int(np.ceil(corners[1, axis])) + 1
        if hi - lo < 2:  # not drawn yet: the middle of the image
            lo, hi = 0, size
        centre = (lo + hi) // 2
        side = min(hi - lo, REGION_SIDE, size)
        start = int(np.clip(centre - side // 2, 0, size - side))
        box.append(slice(start, start + side))
    if len(shape) == 3:
        z = int(np.clip(round(layer.world_to_data(viewer.dims.point)[0]), 0, shape[0] - 1))
        return (slice(z, z + 1), *box)
    return tuple(box)


def region_text(region: tuple[slice, ...]) -> str:
    """Describe a region as a person reads it: ``rows 0-2048, columns 4096-6144``."""
    ys, xs = region[-2:]
    text = f"rows {ys.start}-{ys.stop}, columns {xs.start}-{xs.stop}"
    return f"slice {region[0].start}, {text}" if len(region) == 3 else text


def start_slide(model: Any, data: Any, rgb: bool, config: Any) -> Any:
    """Open a slide session on a layer's data (in a worker: it reads a sample).

    Parameters
    ----------
    model : SegmentationModel
        The model.
    data : array-like
        The layer's full-resolution data.
    rgb : bool
        Whether its last axis is colour.
    config : RefineConfig
        Refinement settings.

    Returns
    -------
    SlideSession
        The session.
    """
    from ..core.slide import SlideSession

    return SlideSession(model, data, config, rgb=rgb)
