"""Rival correction methods, one module each; every one is a :class:`problem.Method` factory.

``BASELINES`` maps a method name to ``(factory, requirement)``: the factory takes a
:class:`problem.Problem` and returns a callable ``scribbles -> class map``; the
requirement is the import name of the optional package it needs (None when it needs none).
"""

from __future__ import annotations

from .crf import DenseCRF
from .forest import RandomForestPixels
from .grabcut import GrabCut
from .paint import GrowThenPaint, PaintOnly
from .random_walk import RandomWalker

BASELINES = {
    "paint-only": (PaintOnly, None),
    "grow+paint": (GrowThenPaint, None),
    "random-walker": (RandomWalker, None),
    "grabcut": (GrabCut, "cv2"),
    "random-forest": (RandomForestPixels, "sklearn"),
    "dense-crf": (DenseCRF, "pydensecrf"),
}

__all__ = ["BASELINES"]
