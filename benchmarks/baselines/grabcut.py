"""GrabCut (Rother et al. 2004, OpenCV) initialised from the prediction and the scribbles."""

from __future__ import annotations

import numpy as np
from problem import Problem, paint


class GrabCut:
    """Predicted foreground is "probably foreground", the rest "probably background".

    Scribbles are hard labels (background scribbles sure background, any nucleus class sure
    foreground). GrabCut is binary, so each foreground pixel keeps its predicted class, or
    the most probable nucleus class where it was predicted background.
    """

    def __init__(self, problem: Problem, iterations: int = 5) -> None:
        import cv2

        self.cv2 = cv2
        self.initial = problem.initial
        img = problem.image
        self.image = np.ascontiguousarray(img if problem.rgb else np.repeat(img[..., None], 3, -1))
        self.image = np.ascontiguousarray(self.image[..., ::-1])  # OpenCV wants BGR
        probs = problem.probabilities
        self.fg_class = (np.argmax(probs[1:], axis=0) + 1).astype(np.uint8)
        self.iterations = iterations

    def __call__(self, scribbles: np.ndarray) -> np.ndarray:
        """Return the class map given all scribbles so far (0 none, c + 1 class c)."""
        cv2 = self.cv2
        mask = np.where(self.initial > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        mask[scribbles == 1] = cv2.GC_BGD
        mask[scribbles > 1] = cv2.GC_FGD
        fg_like = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
        if fg_like.all() or not fg_like.any():
            return paint(self.initial, scribbles)
        cv2.setRNGSeed(0)
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        cv2.grabCut(self.image, mask, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
        out = np.where(fg, np.where(self.initial > 0, self.initial, self.fg_class), 0)
        return paint(out.astype(np.uint8), scribbles)
