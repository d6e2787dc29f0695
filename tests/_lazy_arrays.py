"""A large image made on read, which counts what is read (tests of lazy reading)."""

from __future__ import annotations

import numpy as np


class CountingArray:
    """A large greyscale image tiled from one scene, generated on read; counts each read."""

    def __init__(self, scene: np.ndarray, shape: tuple[int, int]) -> None:
        self.scene = scene
        self.shape = shape
        self.dtype = scene.dtype
        self.ndim = 2
        self.read_pixels = 0
        self.reads: list[tuple[slice, ...]] = []

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        ys, xs = (s.indices(n) for s, n in zip(index, self.shape, strict=True))
        self.reads.append(index)
        rows = np.arange(*ys) % self.scene.shape[0]
        cols = np.arange(*xs) % self.scene.shape[1]
        self.read_pixels += rows.size * cols.size
        return self.scene[np.ix_(rows, cols)]
