"""Reading the user's TIFF files, with refusals that name the file and the fix.

Shared by the command line (``predict``, ``refine``) and batch prediction
(:func:`napari_scribble_refine.batch.apply_model`), so a bad file is refused in the same
words wherever it is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from .core.memory import TooLargeError, available_memory

__all__ = ["read_image"]


def read_image(path: str | os.PathLike, name: str) -> np.ndarray:
    """Read a TIFF, refusing files that are missing, unreadable or larger than the memory left.

    Parameters
    ----------
    path : str or os.PathLike
        The TIFF file.
    name : str
        What the file is to the user (``"image"``, ``"--apply-to"``, ...): the start of
        every refusal.

    Returns
    -------
    numpy.ndarray
        The first series of the file.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    TooLargeError
        (a ``ValueError``) When the image needs more memory than is available.
    ValueError
        When the file cannot be read as a TIFF (the reader's reason, on one line).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name}: no such file {file}; give the path of a TIFF file")
    try:
        with tifffile.TiffFile(file) as tif:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            needed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            room = available_memory()
            if room is not None and needed > room:
                raise TooLargeError(
                    f"{name}: {file} holds an image of shape {shape} ({dtype}) that needs "
                    f"{needed / 2**30:.1f} GB in memory, but {room / 2**30:.1f} GB is "
                    "available; `scribble-refine slide` reads it tile by tile, or crop it to "
                    "the region to correct first"
                )
            return series.asarray()
    except (TooLargeError, MemoryError) as err:
        if isinstance(err, MemoryError):
            raise TooLargeError(f"{name}: {file} does not fit in memory") from None
        raise
    except Exception as err:  # tifffile raises assorted types for damaged files
        raise ValueError(
            f"{name}: cannot read {file} as a TIFF ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'damaged file'})"
        ) from None
