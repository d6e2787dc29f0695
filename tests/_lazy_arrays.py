"""A large image made on read, which counts what is read (tests of lazy reading)."""

from __future__ import annotations

import numpy as np


class CountingArray:
    """A large greyscale image tiled from one scene, generated on read; counts each read."""

    def __init__(
        self, scene: np.ndarray, shape: tuple[int, int], blank_from_column: int | None = None
    ) -> None:
        self.scene = scene
        self.blank_from_column = blank_from_column  # scanner background from there on
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
        block = self.scene[np.ix_(rows, cols)]
        if self.blank_from_column is not None:
            block[:, np.arange(*xs) >= self.blank_from_column] = 0
        return block
