"""Paint-only (scribbles overwrite the prediction) and region growing + paint-only."""

from __future__ import annotations

import numpy as np
from problem import Problem, paint

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.region_growing import grow_scribbles, robust_intensity_range


class PaintOnly:
    """Scribbled pixels take their class; every other pixel keeps the initial prediction."""

    def __init__(self, problem: Problem) -> None:
        self.initial = problem.initial

    def __call__(self, scribbles: np.ndarray) -> np.ndarray:
        """Return the class map given all scribbles so far (0 none, c + 1 class c)."""
        return paint(self.initial, scribbles)


class GrowThenPaint:
    """Region growing (the same T, distance and size caps as ours), then paint-only.

    Separates what growing alone gives from what fine-tuning gives.
    """

    def __init__(self, problem: Problem, config: RefineConfig | None = None) -> None:
        self.config = config or RefineConfig()
        self.image = problem.image
        self.initial = problem.initial
        self.range = robust_intensity_range(problem.image)

    def __call__(self, scribbles: np.ndarray) -> np.ndarray:
        """Return the class map given all scribbles so far (0 none, c + 1 class c)."""
        grown = grow_scribbles(
            self.image,
            scribbles.astype(np.int32),
            threshold=self.config.grow_threshold,
            max_distance=self.config.grow_max_distance,
            intensity_range=self.range,
            max_grown_ratio=self.config.grow_cap or None,
        )
        return paint(self.initial, grown)
