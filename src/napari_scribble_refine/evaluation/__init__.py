"""Scoring refinements against ground truth: segmentation metrics and the robot user.

Used by the benchmarks, the command line's ``demo`` and the tests; the engine
(:mod:`napari_scribble_refine.core`) never imports it.
"""
