"""A fully connected CRF (Krähenbühl & Koltun 2011, pydensecrf2) with scribble unaries."""

from __future__ import annotations

import numpy as np
from problem import Problem, paint


class DenseCRF:
    """Unaries from the model's probabilities, scribbled pixels pinned to their class.

    Gaussian (smoothness) and bilateral (appearance) pairwise terms with the parameters of
    the DeepLab post-processing (sxy 3 / compat 3; sxy 40, srgb 13, compat 5); 5 mean-field
    iterations.
    """

    def __init__(
        self, problem: Problem, iterations: int = 5, pinned: float = 0.999, sxy: int = 40
    ) -> None:
        import pydensecrf.densecrf as dcrf

        self.dcrf = dcrf
        self.initial = problem.initial
        img = problem.image
        self.rgb = np.ascontiguousarray(img if problem.rgb else np.repeat(img[..., None], 3, -1))
        self.probs = np.clip(problem.probabilities, 1e-6, 1.0).astype(np.float32)
        self.iterations = iterations
        self.pinned = pinned
        self.sxy = sxy

    def __call__(self, scribbles: np.ndarray) -> np.ndarray:
        """Return the class map given all scribbles so far (0 none, c + 1 class c)."""
        n, h, w = self.probs.shape
        probs = self.probs.copy()
        rows, cols = np.nonzero(scribbles)
        if rows.size:
            cls = scribbles[rows, cols].astype(np.int64) - 1
            probs[:, rows, cols] = (1.0 - self.pinned) / max(n - 1, 1)
            probs[cls, rows, cols] = self.pinned
        crf = self.dcrf.DenseCRF2D(w, h, n)
        crf.setUnaryEnergy(np.ascontiguousarray(-np.log(probs).reshape(n, -1)))
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=self.sxy, srgb=13, rgbim=self.rgb, compat=5)
        q = np.asarray(crf.inference(self.iterations)).reshape(n, h, w)
        return paint(np.argmax(q, axis=0).astype(np.uint8), scribbles)
