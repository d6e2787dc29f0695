"""What every method in the benchmark receives: one image and the model's first prediction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Problem:
    """One image to correct.

    Attributes
    ----------
    name : str
        ``<source>/<sample>``.
    image : numpy.ndarray
        (Y, X) greyscale or (Y, X, 3) RGB, uint8.
    rgb : bool
        Whether the last axis is colour.
    probabilities : numpy.ndarray
        (C, Y, X) float32 class probabilities of the built-in model, in the evaluation's
        class space (C = ``n_classes``).
    initial : numpy.ndarray
        (Y, X) class map every method starts from (argmax of ``probabilities``).
    n_classes : int
        Classes, background included.
    """

    name: str
    image: np.ndarray
    rgb: bool
    probabilities: np.ndarray
    initial: np.ndarray
    n_classes: int

    @property
    def grey(self) -> np.ndarray:
        """Float image in [0, 1], (Y, X) (RGB averaged)."""
        img = self.image.astype(np.float32) / 255.0
        return img.mean(axis=-1) if self.rgb else img

    @property
    def channels(self) -> np.ndarray:
        """Float image in [0, 1], (Y, X, C) with C = 1 or 3."""
        img = self.image.astype(np.float32) / 255.0
        return img if self.rgb else img[..., None]


class Method(Protocol):
    """A correction method bound to one image; built once, called once per interaction."""

    def __call__(self, scribbles: np.ndarray) -> np.ndarray:
        """Return the class map given all scribbles so far (0 none, c + 1 class c)."""


def paint(class_map: np.ndarray, scribbles: np.ndarray) -> np.ndarray:
    """Return a copy of ``class_map`` with scribbled pixels set to their scribbled class.

    Parameters
    ----------
    class_map : numpy.ndarray
        (Y, X) class map.
    scribbles : numpy.ndarray
        Scribbles of the same shape.

    Returns
    -------
    numpy.ndarray
        The painted class map (uint8).
    """
    out = np.asarray(class_map, dtype=np.uint8).copy()
    marked = scribbles > 0
    out[marked] = scribbles[marked] - 1
    return out
