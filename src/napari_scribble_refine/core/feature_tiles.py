"""The trunk's features of a large image, computed tile by tile on demand, within a budget.

:class:`TileFeatures` splits each slice into the tiles :func:`~.tiling.compute_features`
uses (the same sides and halo, so a tile's features equal that function's crop of them),
runs the trunk on a tile only when a region needs it, and keeps the computed tiles in
memory up to a budget, dropping the least recently used ones (a dropped tile is computed
again, identically, when it is next needed).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from .lazy_image import LazyImage, Region
from .models.base import Features, SegmentationModel
from .tile_normalisation import TileNormaliser
from .tiling import _aligned, tile_ranges

__all__ = ["TileFeatures", "TileKey"]

TileKey = tuple[int, int, int]
"""``(slice, tile row, tile column)``."""


def _offset_ranges(length: int, tile: int, start: int) -> list[tuple[int, int]]:
    """Tiles of an axis with a corner at ``start`` (one tile when the axis fits in one)."""
    offset = start % tile if length > tile else 0
    first = [(0, offset)] if offset else []
    return first + [(a + offset, b + offset) for a, b in tile_ranges(length - offset, tile)]


def _nbytes(features: Features) -> int:
    return sum(v.element_size() * v.numel() for v in features.values())


class TileFeatures:
    """Trunk features of a lazily read image, per tile, least recently used dropped first.

    Parameters
    ----------
    model : SegmentationModel
        The adapter whose trunk runs (on its device).
    image : LazyImage
        The image; only the tiles (and their halos) a region needs are read.
    normaliser : callable or None
        :func:`~.tile_normalisation.tile_normaliser`'s scaling (None: the adapter scales
        each tile).
    tile_size : int
        Largest tile side (rounded down to the model's ``size_multiple``).
    halo : int
        Context read around each tile (rounded up to the ``size_multiple``).
    budget_bytes : int
        Most bytes of features kept; beyond it the least recently used tiles are dropped
        (the tile in use is always kept).

    Attributes
    ----------
    computed : int
        Trunk runs so far (one per tile computed, recomputations included).
    dropped : int
        Tiles dropped to stay within the budget.
    """

    def __init__(
        self,
        model: SegmentationModel,
        image: LazyImage,
        normaliser: TileNormaliser | None,
        *,
        tile_size: int,
        halo: int,
        budget_bytes: int,
    ) -> None:
        multiple = int(model.size_multiple)
        self.model = model
        self.image = image
        self.normaliser = normaliser
        self.tile = max(multiple, _aligned(int(tile_size), multiple, up=False))
        self.halo = _aligned(max(0, int(halo)), multiple, up=True)
        self.budget_bytes = int(budget_bytes)
        height, width = image.spatial_shape[-2:]
        self._rows = tile_ranges(height, self.tile)
        self._cols = tile_ranges(width, self.tile)
        self._cache: OrderedDict[TileKey, Features] = OrderedDict()
        self.nbytes = 0
        self.computed = 0
        self.dropped = 0

    def anchor(self, region: Region) -> None:
        """Lay the tile grid so that ``region`` starts on a tile corner, before any tile runs.

        A 2048² region off a 1024² grid touches nine tiles, on it four; the first region a
        user asks for (the first view of a slide) is the one worth aligning. Axes no longer
        than a tile keep one tile. Nothing changes once a tile has been computed (the
        cached tiles keep their grid), so recomputed tiles stay identical.

        Parameters
        ----------
        region : Region
            A box over the image's spatial axes.
        """
        if self.computed:
            return
        height, width = self.image.spatial_shape[-2:]
        self._rows = _offset_ranges(height, self.tile, region[-2].start)
        self._cols = _offset_ranges(width, self.tile, region[-1].start)

    def _slices(self, region: Region) -> range:
        if self.image.info.is_3d:
            return range(region[0].start, region[0].stop)
        return range(1)

    def keys(self, region: Region) -> list[TileKey]:
        """Return the tiles overlapping a region.

        Parameters
        ----------
        region : Region
            A box over the image's spatial axes.

        Returns
        -------
        list of TileKey
            In reading order.
        """
        ys, xs = region[-2:]
        rows = [i for i, (a, b) in enumerate(self._rows) if a < ys.stop and b > ys.start]
        cols = [j for j, (a, b) in enumerate(self._cols) if a < xs.stop and b > xs.start]
        return [(z, i, j) for z in self._slices(region) for i in rows for j in cols]

    def cached(self, key: TileKey) -> bool:
        """Whether a tile's features are in memory now."""
        return key in self._cache

    def get(self, key: TileKey) -> Features:
        """Features [1, F, h, w] of one tile (without its halo), computed if not cached.

        Parameters
        ----------
        key : TileKey
            ``(slice, row, column)``.

        Returns
        -------
        Features
            On the model's device.
        """
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        features = self._compute(key)
        self._cache[key] = features
        self.nbytes += _nbytes(features)
        while self.nbytes > self.budget_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self.nbytes -= _nbytes(old)
            self.dropped += 1
        return features

    def _compute(self, key: TileKey) -> Features:
        z, i, j = key
        self.computed += 1
        return self._run(z, self._rows[i], self._cols[j])

    def _run(self, z: int, rows: tuple[int, int], cols: tuple[int, int]) -> Features:
        """Run the trunk on a box of one slice with its halo; the box's features [1, F, h, w]."""
        height, width = self.image.spatial_shape[-2:]
        (y0, y1), (x0, x1) = rows, cols
        ya, yb = max(0, y0 - self.halo), min(height, y1 + self.halo)
        xa, xb = max(0, x0 - self.halo), min(width, x1 + self.halo)
        box: Region = (slice(ya, yb), slice(xa, xb))
        if self.image.info.is_3d:
            box = (slice(z, z + 1),) + box
        pixels = self.image.read(box)
        with torch.inference_mode():
            if self.normaliser is None:
                raw = self.model.features(pixels[0] if self.image.info.is_3d else pixels)
            else:
                scaled = self.normaliser(pixels, box)
                scaled = scaled[0] if self.image.info.is_3d else scaled
                raw = self.model.features(scaled, normalised=True)  # type: ignore[call-arg]
        return {
            k: v[..., y0 - ya : y1 - ya, x0 - xa : x1 - xa].clone(
                memory_format=torch.channels_last
                if v.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format
            )
            for k, v in raw.items()
        }

    def compute_box(self, region: Region) -> Features:
        """Features [N, F, h, w] of a region from one trunk run per slice, not cached.

        A whole-image writer predicts each chunk with context around it; running the trunk
        on the chunk and its context at once costs far less than the several cached tiles
        the context would touch (the cache would drop them before the next row of chunks).

        Parameters
        ----------
        region : Region
            A box over the image's spatial axes.

        Returns
        -------
        Features
            On the model's device.
        """
        ys, xs = region[-2:]
        parts = [
            self._run(z, (ys.start, ys.stop), (xs.start, xs.stop)) for z in self._slices(region)
        ]
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def region(
        self, region: Region, progress: Callable[[int, int], None] | None = None
    ) -> Features:
        """Features [N, F, h, w] of a region (N: its slices; 1 for a 2D image), a new copy.

        Parameters
        ----------
        region : Region
            A box over the image's spatial axes.
        progress : callable, optional
            ``progress(done, total)`` over the tiles the region needs.

        Returns
        -------
        Features
            On the model's device, in the trunk's memory layout.
        """
        ys, xs = region[-2:]
        keys = self.keys(region)
        z0 = region[0].start if self.image.info.is_3d else 0
        out: Features = {}
        for done, key in enumerate(keys, start=1):
            z, i, j = key
            (y0, y1), (x0, x1) = self._rows[i], self._cols[j]
            features = self.get(key)
            ty0, ty1 = max(y0, ys.start), min(y1, ys.stop)
            tx0, tx1 = max(x0, xs.start), min(x1, xs.stop)
            for k, value in features.items():
                if k not in out:
                    nhwc = value.is_contiguous(memory_format=torch.channels_last)
                    out[k] = torch.empty(
                        (
                            len(self._slices(region)),
                            value.shape[1],
                            ys.stop - ys.start,
                            xs.stop - xs.start,
                        ),
                        dtype=value.dtype,
                        device=value.device,
                        memory_format=torch.channels_last if nhwc else torch.contiguous_format,
                    )
                out[k][
                    z - z0, :, ty0 - ys.start : ty1 - ys.start, tx0 - xs.start : tx1 - xs.start
                ] = value[0, :, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
            if progress is not None:
                progress(done, len(keys))
        return out

    def clear(self) -> None:
        """Drop every cached tile."""
        self._cache.clear()
        self.nbytes = 0
