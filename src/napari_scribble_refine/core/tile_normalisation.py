"""Scaling the tiles of a large image as the adapter would scale the whole image.

An adapter's ``normalise_image`` takes its statistics (percentiles, minimum and maximum,
mean and deviation) over the whole array, so tiles normalised one by one would each be
scaled differently. :func:`tile_normaliser` measures the adapter's scaling once, on the
whole image when it is small and on :meth:`~.lazy_image.LazyImage.sample` otherwise, and
applies it to every tile: for a small image the whole normalised image is kept (tiles are
its crops, bit for bit what the in-memory session computes); for a large one the scaling is
fitted as the per-channel affine map it is (``out = a * in + b``) and checked on the sample.
A scaling that is not affine (a user's callable) is applied per tile, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from .lazy_image import LazyImage, Region
from .models.base import SegmentationModel

__all__ = ["EXACT_MAX_PIXELS", "SAMPLE_PIXELS", "TileNormaliser", "tile_normaliser"]

EXACT_MAX_PIXELS = 2048 * 2048
"""Images up to this many pixels (all slices) are normalised whole, once."""

SAMPLE_PIXELS = 1024 * 1024
"""Pixels of a large image's sample the scaling is measured on."""

TileNormaliser = Callable[[np.ndarray, Region], np.ndarray]
"""``normalise(pixels, region)``: the pixels read at ``region``, scaled for the network."""


def _affine_fit(source: np.ndarray, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel ``a``, ``b`` with ``scaled ≈ a * source + b``, or None if not affine."""

    def columns(array: np.ndarray) -> np.ndarray:  # a 2D mosaic: (H, W) or (H, W, C)
        array = np.asarray(array, np.float64)
        return array.reshape(-1, array.shape[-1]) if array.ndim == 3 else array.reshape(-1, 1)

    src, out = columns(source), columns(scaled)
    if len(src) != len(out) or src.shape[1] not in (1, out.shape[1]):
        return None
    a = np.ones(out.shape[1])
    b = np.zeros(out.shape[1])
    for c in range(out.shape[1]):
        x = src[:, c if src.shape[1] > 1 else 0]
        y = out[:, c]
        lo, hi = int(np.argmin(x)), int(np.argmax(x))
        if x[hi] > x[lo]:
            a[c] = (y[hi] - y[lo]) / (x[hi] - x[lo])
        b[c] = y[lo] - a[c] * x[lo]
        tolerance = 1e-4 * max(1.0, float(np.abs(y).max()))
        if np.abs(a[c] * x + b[c] - y).max() > tolerance:
            return None
    return a, b


def tile_normaliser(model: SegmentationModel, image: LazyImage) -> TileNormaliser | None:
    """Return how to scale the tiles of ``image`` for ``model``.

    Parameters
    ----------
    model : SegmentationModel
        The adapter; without ``normalise_image`` it scales each tile itself.
    image : LazyImage
        The image.

    Returns
    -------
    callable or None
        ``normalise(pixels, region)`` giving float32 pixels for ``model.features(...,
        normalised=True)``, or None when the adapter has no ``normalise_image``.

    Warns
    -----
    UserWarning
        When the adapter's scaling of a large image is not affine: each tile is then scaled
        on its own statistics.
    """
    normalise = getattr(model, "normalise_image", None)
    if normalise is None:
        return None
    if image.n_pixels <= EXACT_MAX_PIXELS:
        prepared = normalise(image.read(image.whole()))

        def crop(pixels: np.ndarray, region: Region) -> np.ndarray:
            return prepared[tuple(region)]

        return crop
    sample = image.sample(SAMPLE_PIXELS)
    constant = sample.min() == sample.max()  # e.g. only background: nothing to measure on
    fit = None if constant else _affine_fit(sample, normalise(sample))
    if fit is None:
        why = (
            "its sample of the image is one value"
            if constant
            else ("its image scaling is not a fixed affine map")
        )
        warnings.warn(
            f"{model.name}: {why}, so each tile of this "
            f"{'x'.join(map(str, image.spatial_shape))} image is scaled on its own statistics",
            UserWarning,
            stacklevel=3,
        )

        def per_tile(pixels: np.ndarray, region: Region) -> np.ndarray:
            return normalise(pixels)

        return per_tile
    scale, offset = fit
    grey_to_colour = not image.info.is_rgb and scale.size > 1

    def affine(pixels: np.ndarray, region: Region) -> np.ndarray:
        data = np.asarray(pixels, np.float64)
        if grey_to_colour:
            data = data[..., None]
        if scale.size == 1:
            return (data * scale[0] + offset[0]).astype(np.float32)
        return (data * scale + offset).astype(np.float32)

    return affine
