"""How an image becomes a HoVer-Net's input: the normalisation settings and the scaling.

Official models take RGB in 0-255 (``"uint8"``); the built-in models take images scaled by
their percentiles (``"percentile"``). Statistics are taken over the whole image or stack, so
tiles and slices are scaled alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np

from ._prepare import PERCENTILES, working_float

__all__ = ["check_normalisation", "prepare_image"]

_NORMALISATION_KINDS = ("none", "uint8", "percentile", "minmax")


def check_normalisation(normalisation: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a normalisation setting and fill in its defaults.

    Parameters
    ----------
    normalisation : mapping or None
        See :func:`prepare_image` (None: ``{"kind": "none"}``).

    Returns
    -------
    dict
        A copy with ``kind`` (and for ``"percentile"`` ``low`` and ``high``) set.

    Raises
    ------
    ValueError
        For an unknown kind or percentiles outside ``0 <= low < high <= 100``.
    """
    norm = dict(normalisation or {"kind": "none"})
    kind = norm.setdefault("kind", "none")
    if kind not in _NORMALISATION_KINDS:
        raise ValueError(
            f"unknown normalisation kind {kind!r}; expected one of {_NORMALISATION_KINDS}"
        )
    if kind == "percentile":
        norm.setdefault("low", PERCENTILES[0])
        norm.setdefault("high", PERCENTILES[1])
        low, high = norm["low"], norm["high"]
        numbers = all(isinstance(v, Real) and not isinstance(v, bool) for v in (low, high))
        if not (numbers and 0 <= low < high <= 100):
            raise ValueError(
                "percentile normalisation needs 0 <= low < high <= 100, got "
                f"low={low!r}, high={high!r}"
            )
    return norm


def prepare_image(image: np.ndarray, normalisation: Mapping[str, Any] | None) -> np.ndarray:
    """Scale an image (or stack) to a HoVer-Net's input range, as float32.

    Statistics are taken over the whole array, so tiles and slices are scaled alike.

    Parameters
    ----------
    image : numpy.ndarray
        Any real dtype and shape; not modified.
    normalisation : mapping or None
        ``{"kind": "none"}``: cast only. ``{"kind": "uint8"}`` (official models, which take
        RGB 0-255): uint8 images as they are, float images with values in [0, 1] times 255,
        anything else percentile-scaled (1, 99.8) to 0-255. ``{"kind": "percentile", "low":
        1.0, "high": 99.8}``: those percentiles map to 0 and 1. ``{"kind": "minmax"}``: the
        minimum and maximum map to 0 and 1.

    Returns
    -------
    numpy.ndarray
        float32 array of the image's shape.
    """
    norm = check_normalisation(normalisation)
    kind = norm["kind"]
    data = np.asarray(image)
    if kind == "none":
        return np.array(data, dtype=np.float32, copy=True)
    if kind == "uint8" and data.dtype == np.uint8:
        return data.astype(np.float32)
    as_float = working_float(data)  # float64 stays float64 until scaled
    if kind == "uint8":
        if (
            np.issubdtype(data.dtype, np.floating)
            and as_float.size
            and as_float.min() >= 0
            and as_float.max() <= 1
        ):
            return (as_float * 255).astype(np.float32, copy=False)
        return _scale(as_float, *np.percentile(as_float, PERCENTILES)) * np.float32(255)
    if kind == "percentile":
        low, high = np.percentile(as_float, (float(norm["low"]), float(norm["high"])))
    else:
        low, high = float(as_float.min()), float(as_float.max())
    return _scale(as_float, low, high)


def _scale(data: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        low, high = float(data.min()), float(data.max())
    scale = 1.0 / (high - low) if high > low else 1.0
    kind = data.dtype.type  # float32, or float64 for float64 images
    return ((data - kind(low)) * kind(scale)).astype(np.float32, copy=False)
