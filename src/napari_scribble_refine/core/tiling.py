"""Running networks over large images piece by piece, with a halo of context per piece.

The trunk of a large 2D image runs tile by tile (each tile grown by a halo so its centre
sees the context it would see in the whole image), stacks run in batches of slices, and
the head runs over the cached features in bands, so memory stays bounded by the tile size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .models.base import Features, SegmentationModel


def tile_ranges(length: int, tile: int) -> list[tuple[int, int]]:
    """Split ``range(length)`` into consecutive pieces of at most ``tile``.

    Parameters
    ----------
    length : int
        Length of the axis.
    tile : int
        Largest piece.

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` pairs covering the axis.
    """
    tile = max(1, int(tile))
    return [(s, min(s + tile, length)) for s in range(0, length, tile)]


def _aligned(size: int, multiple: int, up: bool) -> int:
    if multiple <= 1:
        return size
    return (math.ceil if up else math.floor)(size / multiple) * multiple


def _prepared_images(
    model: SegmentationModel, image: np.ndarray
) -> tuple[np.ndarray, Callable[..., Features], Callable[..., Features] | None]:
    """Normalise the whole image once when the adapter allows it; pick the calls to use."""
    normalise = getattr(model, "normalise_image", None)
    batch = getattr(model, "features_batch", None)
    if normalise is not None:
        prepared = normalise(image)

        def single(img: np.ndarray) -> Features:
            return model.features(img, normalised=True)  # type: ignore[call-arg]

        many = None if batch is None else (lambda imgs: batch(imgs, normalised=True))
        return prepared, single, many
    return image, model.features, batch


def compute_features(
    model: SegmentationModel,
    image: np.ndarray,
    *,
    is_3d: bool,
    tile_size: int = 1024,
    halo: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Features:
    """Run the frozen trunk over a whole image or stack, tile by tile when it is large.

    Parameters
    ----------
    model : SegmentationModel
        The adapter.
    image : numpy.ndarray
        (Y, X), (Y, X, C) or (Z, Y, X); not modified.
    is_3d : bool
        True for a (Z, Y, X) stack (each slice runs through the 2D trunk).
    tile_size : int
        Largest tile side; images with a longer side are processed in tiles.
    halo : int
        Context added around each tile (rounded up to the model's ``size_multiple``).
    progress : callable, optional
        Called as ``progress(done, total)`` after each piece (a tile or a batch of slices).

    Returns
    -------
    Features
        Tensors [N, F, Y, X] with N = 1 (2D) or Z (stack), on the model's device.
    """
    prepared, single, many = _prepared_images(model, image)
    slices = [prepared[z] for z in range(prepared.shape[0])] if is_3d else [prepared]
    height, width = slices[0].shape[:2]
    multiple = int(model.size_multiple)
    tile = max(multiple, _aligned(tile_size, multiple, up=False))
    halo = _aligned(max(0, halo), multiple, up=True)

    report = progress if progress is not None else (lambda done, total: None)
    with torch.inference_mode():
        if height <= tile and width <= tile:
            per_batch = max(1, (tile * tile) // (height * width))
            parts: list[Features] = []
            starts = range(0, len(slices), per_batch)
            for done, start in enumerate(starts, start=1):
                chunk = slices[start : start + per_batch]
                if many is not None and len(chunk) > 1:
                    parts.append(many(chunk))
                else:
                    parts.extend(single(img) for img in chunk)
                report(done, len(starts))
            if len(parts) == 1:
                return parts[0]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        n_tiles = len(tile_ranges(height, tile)) * len(tile_ranges(width, tile))
        total = n_tiles * len(slices)
        tiled = [
            _tiled_features(
                single,
                img,
                tile=tile,
                halo=halo,
                progress=lambda done, z=z: report(z * n_tiles + done, total),
            )
            for z, img in enumerate(slices)
        ]
        if len(tiled) == 1:
            return tiled[0]
        return {k: torch.cat([t[k] for t in tiled]) for k in tiled[0]}


def _tiled_features(
    single: Callable[[np.ndarray], Features],
    image: np.ndarray,
    *,
    tile: int,
    halo: int,
    progress: Callable[[int], None],
) -> Features:
    height, width = image.shape[:2]
    out: Features = {}
    done = 0
    for y0, y1 in tile_ranges(height, tile):
        for x0, x1 in tile_ranges(width, tile):
            ya, yb = max(0, y0 - halo), min(height, y1 + halo)
            xa, xb = max(0, x0 - halo), min(width, x1 + halo)
            feats = single(image[ya:yb, xa:xb])
            for key, value in feats.items():
                if key not in out:
                    # keep the trunk's memory layout: a 1x1 head on channels-last features
                    # is several times faster than on NCHW ones on the CPU
                    nhwc = value.is_contiguous(memory_format=torch.channels_last)
                    out[key] = torch.empty(
                        (1, value.shape[1], height, width),
                        dtype=value.dtype,
                        device=value.device,
                        memory_format=torch.channels_last if nhwc else torch.contiguous_format,
                    )
                out[key][..., y0:y1, x0:x1] = value[..., y0 - ya : y1 - ya, x0 - xa : x1 - xa]
            done += 1
            progress(done)
    return out


def crop_features(features: Features, index: int, ys: slice, xs: slice) -> Features:
    """One image's features cropped to a window, as a batch of one.

    Parameters
    ----------
    features : Features
        Cached [N, F, Y, X] tensors.
    index : int
        Image (slice) index.
    ys, xs : slice
        Window.

    Returns
    -------
    Features
        Views [1, F, h, w].
    """
    return {k: v[index : index + 1, :, ys, xs] for k, v in features.items()}


def head_windows(
    height: int, width: int, *, rows: int, cols: int, halo: int
) -> Iterator[tuple[slice, slice, slice, slice]]:
    """Windows to run a head over an image piece by piece.

    Parameters
    ----------
    height, width : int
        Image size.
    rows, cols : int
        Size of each piece without its halo.
    halo : int
        Context each piece needs on every side.

    Yields
    ------
    tuple of slice
        ``(ys_in, xs_in, ys_keep, xs_keep)``: the window to run, and the part of its output
        to keep, relative to the window.
    """
    for y0, y1 in tile_ranges(height, rows):
        for x0, x1 in tile_ranges(width, cols):
            ya, yb = max(0, y0 - halo), min(height, y1 + halo)
            xa, xb = max(0, x0 - halo), min(width, x1 + halo)
            yield (
                slice(ya, yb),
                slice(xa, xb),
                slice(y0 - ya, y1 - ya),
                slice(x0 - xa, x1 - xa),
            )
