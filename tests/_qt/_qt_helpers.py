"""Helpers shared by the widget tests."""

from __future__ import annotations

import numpy as np


def truth_scribbles(types: np.ndarray, every: int = 6) -> np.ndarray:
    """Scribbles that follow the ground truth on every ``every``-th row (value = class + 1)."""
    scribbles = np.zeros(types.shape, np.uint8)
    rows = np.zeros(types.shape, bool)
    rows[..., ::every, :] = True
    scribbles[rows] = types[rows] + 1
    return scribbles
