"""Random walker (Grady 2006, scikit-image) seeded by scribbles and confident predictions."""

from __future__ import annotations

import warnings

import numpy as np
from problem import Problem, paint
from scipy import ndimage as ndi
from skimage.segmentation import random_walker


class RandomWalker:
    """Scribbles and confidently predicted pixels are seeds; the walker labels the rest.

    Confident pixels (top probability >= ``confidence``) become seeds of their predicted
    class, except within ``clearance`` px of a scribble, so that a scribble inside a
    confidently wrong region can still move the boundary around it.
    """

    def __init__(
        self,
        problem: Problem,
        confidence: float = 0.95,
        clearance: int = 10,
        beta: float = 130.0,
    ) -> None:
        self.problem = problem
        self.initial = problem.initial
        top = problem.probabilities.max(axis=0)
        self.confident = top >= confidence
        self.clearance = clearance
        self.beta = beta

    def __call__(self, scribbles: np.ndarray) -> np.ndarray:
        """Return the class map given all scribbles so far (0 none, c + 1 class c)."""
        marked = scribbles > 0
        if not marked.any():
            return self.initial.copy()
        near = ndi.distance_transform_edt(~marked) <= self.clearance
        seeds = np.where(self.confident & ~near, self.initial.astype(np.int32) + 1, 0)
        seeds[marked] = scribbles[marked]
        if np.unique(seeds[seeds > 0]).size < 2:
            return paint(self.initial, scribbles)
        data = self.problem.channels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            walked = random_walker(
                data, seeds, beta=self.beta, mode="cg_j", tol=1e-3, channel_axis=-1
            )
        out = np.where(walked > 0, walked - 1, self.initial).astype(np.uint8)
        return paint(out, scribbles)
