"""Large images read region by region: numpy, dask and zarr arrays, OME-Zarr and TIFF files.

A :class:`LazyImage` never reads its source whole: :meth:`LazyImage.read` reads one region
(only the chunks it touches, for dask and zarr), and :meth:`LazyImage.sample` reads a grid
of small patches spread over the image, enough for intensity statistics. A TIFF is opened
through ``tifffile``'s zarr interface and a zarr folder with ``zarr``; an OME-Zarr image
gives its full-resolution level, its singleton axes dropped and its channels last.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .images import ImageInfo, image_layout

__all__ = ["LazyImage", "Region", "open_array"]

Region = tuple[slice, ...]
"""A box over an image's spatial axes: ``(ys, xs)`` or ``(zs, ys, xs)``, steps of 1."""

SAMPLE_PATCH = 256
"""Side of each patch :meth:`LazyImage.sample` reads."""


def _ome_level0(group: Any) -> tuple[Any, list[str] | None]:
    """Return the full-resolution array of an OME-Zarr multiscale group and its axis names."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        keys = sorted(group.array_keys())
        if not keys:
            raise ValueError("image: the zarr group holds no array and no OME-Zarr multiscales")
        return group[keys[0]], None
    scale = multiscales[0]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in scale.get("axes", [])]
    return group[scale["datasets"][0]["path"]], axes or None


def _from_path(path: Path) -> tuple[Any, list[str] | None]:
    import zarr

    if not path.exists():
        raise FileNotFoundError(f"image: no such file or folder {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            store = tifffile.imread(path, aszarr=True)
        except Exception as err:  # tifffile raises assorted types for damaged files
            raise ValueError(f"image: cannot read {path} as a TIFF ({err})") from None
        opened = zarr.open(store, mode="r")
    else:
        try:
            opened = zarr.open(str(path), mode="r")
        except Exception as err:
            raise ValueError(
                f"image: cannot open {path} as zarr ({err}); give a zarr or OME-Zarr folder, "
                "a TIFF file or an array"
            ) from None
    if hasattr(opened, "array_keys"):
        return _ome_level0(opened)
    return opened, None


def open_array(source: Any) -> Any:
    """Return an array-like over ``source`` that reads only the regions asked for.

    Parameters
    ----------
    source : array_like, str or os.PathLike
        A numpy, dask or zarr array, or the path of a TIFF file or a zarr / OME-Zarr folder.

    Returns
    -------
    array-like
        A numpy array as given, else a dask array (lazy: slicing reads only the chunks it
        touches), its leading singleton axes dropped and OME-Zarr channels moved last.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    ValueError
        If a file cannot be opened as an image.
    """
    if isinstance(source, np.ndarray):
        return source
    import dask.array as da

    axes = None
    if isinstance(source, (str, os.PathLike)):
        source, axes = _from_path(Path(source))
    array = source if isinstance(source, da.Array) else da.from_array(source, asarray=False)
    if axes is not None and len(axes) == array.ndim:
        names = [a.lower() for a in axes]
        if "c" in names and array.shape[names.index("c")] in (3, 4):
            array = da.moveaxis(array, names.index("c"), -1)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return array


class LazyImage:
    """An image read region by region, never whole.

    Parameters
    ----------
    source : array_like, str or os.PathLike
        See :func:`open_array`.
    rgb : bool, optional
        Whether the last axis is colour; None guesses (:func:`~.images.guess_rgb`).
    name : str
        Name for messages.

    Attributes
    ----------
    array : array-like
        What regions are read from.
    info : ImageInfo
        Layout (from the shape and dtype only).
    reads : int
        Regions read so far.
    """

    def __init__(self, source: Any, *, rgb: bool | None = None, name: str = "image") -> None:
        self.array = open_array(source)
        self.name = name
        self.info: ImageInfo = image_layout(
            tuple(self.array.shape), self.array.dtype, rgb=rgb, name=name
        )
        self.reads = 0

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(Y, X) or (Z, Y, X)."""
        return self.info.spatial_shape

    @property
    def n_pixels(self) -> int:
        """Pixels over all slices."""
        return math.prod(self.spatial_shape)

    @property
    def nbytes(self) -> int:
        """Bytes the whole image would take in memory."""
        return self.n_pixels * self.info.n_channels * np.dtype(self.array.dtype).itemsize

    def whole(self) -> Region:
        """Return the region covering the whole image."""
        return tuple(slice(0, n) for n in self.spatial_shape)

    def read(self, region: Region) -> np.ndarray:
        """Read one region (RGBA loses its alpha), checking its values.

        Parameters
        ----------
        region : Region
            A box over the spatial axes.

        Returns
        -------
        numpy.ndarray
            The pixels, a colour axis last for colour images.

        Raises
        ------
        ValueError
            If the region holds NaN or infinite values.
        """
        index = tuple(region) + ((slice(0, 3),) if self.info.is_rgb else ())
        block = np.asarray(self.array[index])
        self.reads += 1
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            box = ", ".join(f"{s.start}:{s.stop}" for s in region)
            raise ValueError(
                f"{self.name} holds NaN or infinite values in region [{box}]; replace them "
                "before segmenting"
            )
        return block

    def _on_chunks(self, starts: np.ndarray, axis: int, patch: int) -> np.ndarray:
        """Move patch starts to the start of their chunk (one chunk read per patch)."""
        chunks = getattr(self.array, "chunks", None)
        spatial = len(self.spatial_shape)
        if not isinstance(chunks, tuple) or not chunks or not isinstance(chunks[0], tuple):
            return starts
        sizes = np.asarray(chunks[spatial + axis])
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        index = np.searchsorted(bounds, starts, side="right") - 1
        snapped = bounds[index]
        fits = sizes[index] >= patch
        return np.unique(np.where(fits, snapped, starts))

    def sample(self, max_pixels: int) -> np.ndarray:
        """Read a grid of patches spread over the image, as one 2D mosaic.

        The whole image when it has at most ``max_pixels`` pixels (a stack: every slice,
        stacked along Y), else about ``max_pixels`` pixels in patches of
        :data:`SAMPLE_PATCH`² on an even grid (over the slices of a stack too).

        Parameters
        ----------
        max_pixels : int
            Most pixels to read.

        Returns
        -------
        numpy.ndarray
            (H, W) or (H, W, C): the patches stacked along Y.
        """
        shape = self.spatial_shape
        if self.n_pixels <= max_pixels:
            block = self.read(self.whole())
            keep = 2 if self.info.is_rgb else 1  # X (and colour) stay; Z and Y merge
            return block.reshape((-1,) + block.shape[-keep:])
        height, width = shape[-2:]
        ph, pw = min(SAMPLE_PATCH, height), min(SAMPLE_PATCH, width)
        n_patches = max(1, max_pixels // (ph * pw))
        depth = shape[0] if self.info.is_3d else 1
        side = max(1, math.ceil(math.sqrt(n_patches)))
        ys = self._on_chunks(np.linspace(0, height - ph, side).astype(int), -2, ph)
        xs = self._on_chunks(np.linspace(0, width - pw, side).astype(int), -1, pw)
        spots = [(z, y, x) for z in range(depth) for y in ys for x in xs]
        if len(spots) > n_patches:  # an even spread over slices, rows and columns
            pick = np.random.default_rng(0).choice(len(spots), n_patches, replace=False)
            spots = [spots[i] for i in sorted(pick)]
        patches = []
        for z, y, x in spots:
            box = (slice(int(y), int(y) + ph), slice(int(x), int(x) + pw))
            region = ((slice(int(z), int(z) + 1),) + box) if self.info.is_3d else box
            patch = self.read(region)
            patches.append(patch[0] if self.info.is_3d else patch)
        return np.concatenate(patches, axis=0)
