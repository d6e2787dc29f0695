"""npe2 sample data: synthetic nuclei with ground truth, and one real bundled image.

Each function returns napari ``LayerDataTuple`` s ``(data, metadata, layer_type)``; napari
itself is not imported. The synthetic images come from :mod:`.synthetic.scenes` with fixed
seeds, so every user sees the same sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..synthetic.scenes import synthetic_fluorescence, synthetic_he

LayerDataTuple = tuple[Any, dict[str, Any], str]

__all__ = ["make_ihc", "make_synthetic_fluorescence", "make_synthetic_he"]

SAMPLE_SHAPE = (512, 512)


def make_synthetic_fluorescence() -> list[LayerDataTuple]:
    """Synthetic nuclear-stain fluorescence with its ground-truth instances.

    Returns
    -------
    list of tuple
        An image layer (uint8, 512 x 512) and a hidden labels layer with the true nuclei.
    """
    sample = synthetic_fluorescence(
        SAMPLE_SHAPE, seed=7, radius=9.0, coverage=0.25, brightfield=False
    )
    return [
        (sample.image, {"name": "synthetic fluorescence", "colormap": "gray"}, "image"),
        (sample.instances, {"name": "ground truth (nuclei)", "visible": False}, "labels"),
    ]


def make_synthetic_he() -> list[LayerDataTuple]:
    """Synthetic H&E histology with ground-truth instances and nucleus types.

    Returns
    -------
    list of tuple
        An RGB image layer (512 x 512), and hidden labels layers with the true nuclei and the
        true types (1 epithelial, 2 lymphocyte, 3 stromal).
    """
    sample = synthetic_he(SAMPLE_SHAPE, seed=3, scale=1.0, coverage=0.25)
    names = ", ".join(f"{i} {n}" for i, n in enumerate(sample.class_names) if i)
    return [
        (sample.image, {"name": "synthetic H&E", "rgb": True}, "image"),
        (sample.instances, {"name": "ground truth (nuclei)", "visible": False}, "labels"),
        (
            sample.types,
            {"name": "ground truth (types)", "visible": False, "metadata": {"classes": names}},
            "labels",
        ),
    ]


def make_ihc() -> list[LayerDataTuple]:
    """Real immunohistochemistry image bundled with scikit-image (no ground truth).

    Returns
    -------
    list of tuple
        One RGB image layer (uint8, 512 x 512 x 3): ``skimage.data.immunohistochemistry()``,
        human colon tissue stained with haematoxylin and DAB.
    """
    from skimage import data

    image = np.asarray(data.immunohistochemistry())
    return [(image, {"name": "immunohistochemistry (scikit-image)", "rgb": True}, "image")]
