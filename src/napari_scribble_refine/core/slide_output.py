"""A slide session's result for the whole image, written to zarr tile by tile, resumably.

Each tile of the session's feature grid is predicted with some context around it and
written as soon as it is done; the zarr array's attributes record the finished tiles and a
fingerprint of the head and settings that made them, so a run that stopped (an error,
Ctrl+C, a closed laptop) resumes where it stopped, and a result of another head is never
extended by mistake.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import RefineConfig
from .models.base import SegmentationModel

if TYPE_CHECKING:
    from .slide import SlideSession

__all__ = ["head_fingerprint", "write_prediction"]


def head_fingerprint(model: SegmentationModel, settings: RefineConfig | None) -> str:
    """Return a digest of a model's head weights and the settings of its last refinement.

    Parameters
    ----------
    model : SegmentationModel
        The model.
    settings : RefineConfig or None
        What the head was tuned with (None: not tuned).

    Returns
    -------
    str
        A SHA-1 hex digest.
    """
    digest = hashlib.sha1()
    weights = model.head_state()["weights"]
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].float().cpu().numpy().tobytes())
    digest.update(repr(settings).encode())
    return digest.hexdigest()


def _open_target(
    session: SlideSession, path: str | os.PathLike, fingerprint: str, overwrite: bool
) -> Any:
    import zarr

    shape = session.spatial_shape
    if os.path.exists(path) and not overwrite:
        target = zarr.open_array(str(path), mode="r+")
        meta = dict(target.attrs).get("scribble_refine", {})
        if meta.get("head") != fingerprint or tuple(target.shape) != shape:
            raise ValueError(
                f"{path} holds a result of another head or image; pass overwrite=True "
                "(command line: --overwrite) to replace it, or write to another path"
            )
        return target
    tile = session.features.tile
    chunks = ((1,) if session.image.info.is_3d else ()) + (tile, tile)
    dtype = np.uint8 if session.n_classes < 255 else np.int32
    target = zarr.open_array(
        str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0
    )
    target.attrs["scribble_refine"] = {
        "head": fingerprint,
        "class_names": session.class_names,
        "done": [],
    }
    return target


def _chunks(shape: tuple[int, ...], tile: int) -> list[tuple[int, int, int]]:
    """List the output's chunks ``(slice, row, column)``: the tile grid from 0, per slice."""
    depth = shape[0] if len(shape) == 3 else 1
    rows, cols = (range(-(-n // tile)) for n in shape[-2:])
    return [(z, i, j) for z in range(depth) for i in rows for j in cols]


def _chunk_box(key: tuple[int, int, int], shape: tuple[int, ...], tile: int) -> tuple[slice, ...]:
    """Return the region of one output chunk."""
    z, i, j = key
    box = (
        slice(i * tile, min(shape[-2], (i + 1) * tile)),
        slice(j * tile, min(shape[-1], (j + 1) * tile)),
    )
    return ((slice(z, z + 1),) + box) if len(shape) == 3 else box


def write_prediction(
    session: SlideSession,
    path: str | os.PathLike,
    *,
    margin: int = 64,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Write a slide session's class map of the whole image to a zarr array, tile by tile.

    The output's chunks are the tiles of a grid from the image's corner. Each is predicted
    with ``margin`` pixels of context (in Y and X) and written as it is done; called again
    with the same head, settings and path, it skips the finished chunks. The scribbles of
    the last refinement are applied where they are. (In a session that predicted regions
    before, the feature tiles lie on the first region's grid, and pixels near tile borders
    can differ slightly from a fresh session's result.)

    Parameters
    ----------
    session : SlideSession
        The session.
    path : str or os.PathLike
        Zarr folder to write.
    margin : int
        Context around each tile.
    overwrite : bool
        Start again even if ``path`` holds a result of another head.
    progress : callable, optional
        ``progress(done, total)`` after each tile (finished tiles count as done).

    Returns
    -------
    zarr.Array
        The result (uint8 class indices; int32 above 254 classes).

    Raises
    ------
    ValueError
        If ``path`` holds a result of another head or shape and ``overwrite`` is False.
    """
    shape = session.spatial_shape
    target = _open_target(
        session, path, head_fingerprint(session.model, session.settings), overwrite
    )
    meta = dict(target.attrs["scribble_refine"])
    done = {tuple(k) for k in meta["done"]}
    session.features.anchor(session.image.whole())  # a fresh session: the grid from 0
    keys = _chunks(shape, session.features.tile)
    for n, key in enumerate(keys, start=1):
        if key not in done:
            core = _chunk_box(key, shape, session.features.tile)
            context = tuple(
                s
                if len(core) == 3 and axis == 0
                else slice(max(0, s.start - margin), min(size, s.stop + margin))
                for axis, (s, size) in enumerate(zip(core, shape, strict=True))
            )
            classes = session.predict_tile(context)
            inner = tuple(
                slice(c.start - x.start, c.stop - x.start)
                for c, x in zip(core, context, strict=True)
            )
            target[core] = classes[inner].astype(target.dtype)
            done.add(key)
            meta["done"] = sorted(done)
            target.attrs["scribble_refine"] = meta
        if progress is not None:
            progress(n, len(keys))
    return target
