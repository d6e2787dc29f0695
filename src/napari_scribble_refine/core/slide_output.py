"""A slide session's result for the whole image, written to zarr tile by tile, resumably.

Each tile of the session's feature grid is predicted with some context around it and
written as soon as it is done; the zarr array's attributes record the finished tiles and a
fingerprint of the head and settings that made them, so a run that stopped (an error,
Ctrl+C, a closed laptop) resumes where it stopped, and a result of another head is never
extended by mistake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import RefineConfig
from .lazy_image import Region
from .models.base import SegmentationModel
from .models.saving import check_target, tuning_notes
from .regions import BlankRegion, region_shape
from .tiling import tile_ranges

if TYPE_CHECKING:
    from .slide import SlideSession

__all__ = ["SlideOutput", "head_fingerprint"]


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
    if settings is not None:  # where it ran does not change what it predicts
        settings = dataclasses.replace(settings, device="auto")
    digest.update(repr(settings).encode())
    return digest.hexdigest()


def _identity(session: SlideSession, margin: int) -> dict[str, Any]:
    """Describe what a result depends on besides the head: the image and how it is cut."""
    sample = session.image.sample(4 * 256 * 256)
    return {
        "shape": list(session.spatial_shape),
        "dtype": str(session.image.array.dtype),
        "sample": hashlib.sha1(np.ascontiguousarray(sample).tobytes()).hexdigest(),
        "tile": session.features.tile,
        "margin": margin,
    }


def _open_target(
    session: SlideSession,
    path: str | os.PathLike,
    fingerprint: str,
    identity: dict[str, Any],
    overwrite: bool,
) -> Any:
    import zarr

    shape = session.spatial_shape
    tile = session.features.tile
    chunks = ((1,) if session.image.info.is_3d else ()) + (tile, tile)
    if os.path.exists(path) and not overwrite:
        target = zarr.open_array(str(path), mode="r+")
        meta = dict(target.attrs).get("scribble_refine", {})
        old = meta.get("image", {})
        differs = [k for k in identity if old.get(k) != identity[k]]
        if meta.get("head") != fingerprint:
            differs.insert(0, "the model's head or the refinement's settings")
        if tuple(target.chunks) != chunks:
            differs.append("chunks")
        if differs:
            raise ValueError(
                f"{path} holds another result (it differs in: {', '.join(differs)}); pass "
                "overwrite=True (command line: --overwrite) to replace it, or write to "
                "another path"
            )
        return target
    dtype = np.uint8 if session.n_classes < 255 else np.int32
    target = zarr.open_array(
        str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0
    )
    target.attrs["scribble_refine"] = {
        "head": fingerprint,
        "image": identity,
        "class_names": session.class_names,
        "done": [],
    }
    return target


def _chunks(shape: tuple[int, ...], tile: int) -> dict[tuple[int, int, int], Region]:
    """Map the output's chunks ``(slice, row, column)`` (the tile grid from 0) to their boxes."""
    depth = shape[0] if len(shape) == 3 else 1
    rows, cols = (tile_ranges(n, tile) for n in shape[-2:])
    return {
        (z, i, j): ((slice(z, z + 1),) if len(shape) == 3 else ()) + (slice(*r), slice(*c))
        for z in range(depth)
        for i, r in enumerate(rows)
        for j, c in enumerate(cols)
    }


def _write_prediction(
    session: SlideSession,
    path: str | os.PathLike,
    *,
    margin: int = 64,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Write the whole image's class map (:meth:`SlideOutput.write_prediction`'s work)."""
    shape = session.spatial_shape
    fingerprint = head_fingerprint(session.model, session.settings)
    target = _open_target(session, path, fingerprint, _identity(session, margin), overwrite)
    meta = dict(target.attrs["scribble_refine"])
    done = {tuple(k) for k in meta["done"]}
    chunks = _chunks(shape, session.features.tile)
    for n, (key, core) in enumerate(chunks.items(), start=1):
        if key not in done:
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
            progress(n, len(chunks))
    return target


class SlideOutput:
    """What leaves a slide session: the tuned model and the whole image's result.

    Mixed into :class:`~.slide.SlideSession`, whose ``model``, ``spatial_shape``,
    ``features``, ``_work``, ``_open_view`` and ``_check_open`` it uses.
    """

    def save_model(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the network with its head as tuned now (see :meth:`RefineSession.save_model`).

        Parameters
        ----------
        path : str or os.PathLike
            Output file, with a suffix the model's format takes.
        overwrite : bool
            Replace an existing file.

        Returns
        -------
        Path
            The file written.
        """
        self._check_open()
        if self._work is not None:
            return self._work.save_model(path, overwrite=overwrite)
        target = check_target(self.model, path, overwrite)
        self.model.save(target, {"adapted": tuning_notes(self.model.name, self.spatial_shape, [])})
        return target

    def write_prediction(
        self,
        path: str | os.PathLike,
        *,
        margin: int = 64,
        overwrite: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Write a slide session's class map of the whole image to a zarr array, tile by tile.

        The output's chunks are the tiles of a grid from the image's corner. Each is predicted
        with ``margin`` pixels of context (in Y and X; the trunk runs once on the chunk and its
        context) and written as it is done; called again with the same head, settings, image
        and path, it skips the finished chunks. The scribbles of the last refinement are
        applied where they are; blank chunks are background.

        Parameters
        ----------
        path : str or os.PathLike
            Zarr folder to write.
        margin : int
            Context around each tile.
        overwrite : bool
            Start again even if ``path`` holds another result (another head, image,
            tile size or margin).
        progress : callable, optional
            ``progress(done, total)`` after each tile (finished tiles count as done).

        Returns
        -------
        zarr.Array
            The result (uint8 class indices; int32 above 254 classes).

        Raises
        ------
        ValueError
            If ``path`` holds another result and ``overwrite`` is False (the message names
            what differs).
        """
        self._check_open()
        return _write_prediction(self, path, margin=margin, overwrite=overwrite, progress=progress)

    def predict_tile(self, context: Region) -> np.ndarray:
        """Return the class map of a region for a writer: one trunk run, nothing kept.

        Parameters
        ----------
        context : Region
            A region inside the image (a chunk and its context).

        Returns
        -------
        numpy.ndarray
            int32 class map of the region (background where the region is blank).
        """
        try:
            session = self._open_view(context, self.features.compute_box(context))
        except BlankRegion:
            return np.zeros(region_shape(context), np.int32)
        try:
            return session.predict()
        finally:
            session.close()
