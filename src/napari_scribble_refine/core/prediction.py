"""Running the head over a whole image in bounded pieces, and reading class maps."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .models.base import Features, SegmentationModel
from .tiling import crop_features, head_windows


def head_pieces(
    model: SegmentationModel,
    features: Features,
    index: int,
    *,
    chunk_pixels: int,
    tile_size: int,
    tile_halo: int,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Run the head over one image (slice) of cached features, piece by piece.

    Point-wise heads run on bands of whole rows, spatial heads on squares grown by their
    halo, opaque models on the whole image (or on trunk-sized tiles with the trunk's halo
    when the image is larger than ``tile_size``).

    Parameters
    ----------
    model : SegmentationModel
        The adapter.
    features : Features
        Cached [N, F, Y, X] tensors.
    index : int
        Image (slice) index.
    chunk_pixels : int
        Pixels per piece for cached trunks.
    tile_size, tile_halo : int
        Piece size and context for opaque models on large images.

    Yields
    ------
    tuple
        ``(y0, x0, logits)``: where the piece goes and its logits [C, h, w] (inference mode).
    """
    height, width = next(iter(features.values())).shape[-2:]
    if model.trunk_is_cached and model.head_is_pointwise:
        rows, cols, halo = max(1, chunk_pixels // width), width, 0
    elif model.trunk_is_cached:
        side = int(chunk_pixels**0.5)
        rows, cols, halo = side, side, int(model.head_halo)
    elif height <= tile_size and width <= tile_size:
        rows, cols, halo = height, width, 0  # opaque: the whole image at once
    else:
        rows, cols, halo = tile_size, tile_size, tile_halo
    with torch.inference_mode():
        for ys, xs, keep_y, keep_x in head_windows(height, width, rows=rows, cols=cols, halo=halo):
            logits = model.head(crop_features(features, index, ys, xs))
            yield ys.start + keep_y.start, xs.start + keep_x.start, logits[0, :, keep_y, keep_x]


def class_map_of(model: SegmentationModel, logits: torch.Tensor) -> np.ndarray:
    """Decide the classes of [C, Y, X] logits by the model's rule, as int32 (Y, X).

    Parameters
    ----------
    model : SegmentationModel
        The adapter (its :meth:`~SegmentationModel.class_map` rule).
    logits : torch.Tensor
        [C, Y, X] on the CPU.

    Returns
    -------
    numpy.ndarray
        int32 (Y, X).
    """
    return model.class_map(logits[None])[0].numpy().astype(np.int32)
