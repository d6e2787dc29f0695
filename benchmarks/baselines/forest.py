"""An ilastik-like random-forest pixel classifier trained on the scribbles alone."""

from __future__ import annotations

import numpy as np
from problem import Problem, paint
from skimage.feature import multiscale_basic_features


class RandomForestPixels:
    """Multiscale intensity, edge and texture features; a random forest fit on scribbled pixels.

    Like ilastik's pixel classification it never sees the network's prediction: until two
    classes are scribbled it cannot be trained, and it returns the painted prediction.
    """

    def __init__(
        self, problem: Problem, n_estimators: int = 50, n_jobs: int = 1, seed: int = 0
    ) -> None:
        from sklearn.ensemble import RandomForestClassifier

        self.initial = problem.initial
        self.make_forest = lambda: RandomForestClassifier(
            n_estimators=n_estimators, max_depth=16, n_jobs=n_jobs, random_state=seed
        )
        # Computed once per image (setup), like ilastik's feature cache.
        feats = multiscale_basic_features(
            problem.image.astype(np.float32) / 255.0,
            sigma_min=0.7,
            sigma_max=10.0,
            num_sigma=5,
            channel_axis=-1 if problem.rgb else None,
        )
        self.features = feats.reshape(-1, feats.shape[-1]).astype(np.float32)

    def __call__(self, scribbles: np.ndarray) -> np.ndarray:
        """Return the class map given all scribbles so far (0 none, c + 1 class c)."""
        marked = scribbles.ravel() > 0
        labels = scribbles.ravel()[marked]
        if np.unique(labels).size < 2:
            return paint(self.initial, scribbles)
        feats = self.features
        forest = self.make_forest().fit(feats[marked], labels)
        pred = forest.predict(feats).reshape(scribbles.shape) - 1
        return paint(pred.astype(np.uint8), scribbles)
