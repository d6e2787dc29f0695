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


def write_prediction(
    session: SlideSession,
    path: str | os.PathLike,
    *,
    margin: int = 64,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Write a slide session's class map of the whole image to a zarr array, tile by tile.

    Each tile is predicted with ``margin`` pixels of context (in Y and X) and written as it
    is done; called again with the same head, settings and path, it skips the finished
    tiles. The scribbles of the last refinement are applied where they are.

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
    keys = session.features.keys(session.image.whole())
    for n, key in enumerate(keys, start=1):
        if key not in done:
            core = session.features.box(key)
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
