"""Synthetic nucleus images with ground truth: the sample data, the demo and the tests.

:mod:`.scenes` draws fluorescence and H&E scenes from :mod:`.shapes`; the engine
(:mod:`napari_scribble_refine.core`) never imports it.
"""
