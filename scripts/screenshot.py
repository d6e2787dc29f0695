"""Write docs/screenshot.png: the docked widget over a refined H&E sample.

Runs the scripted workflow of the README (open the sample, dock the widget, Predict, paint
corrections where the prediction's nucleus types are wrong, Refine) in a shown viewer and
saves the whole window. Needs a display (``xvfb-run -a python scripts/screenshot.py`` on a
headless machine).

Usage::

    python scripts/screenshot.py [--model hovernet-he] [--out docs/screenshot.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk

from napari_scribble_refine.scripting import open_widget


def corrections(prediction: np.ndarray, instances: np.ndarray, types: np.ndarray, n: int = 12):
    """Short strokes on nuclei whose predicted type is wrong, plus background strokes.

    Parameters
    ----------
    prediction : numpy.ndarray
        Predicted class map.
    instances, types : numpy.ndarray
        Ground truth.
    n : int
        Most nuclei to correct.

    Returns
    -------
    numpy.ndarray
        Scribbles (value = class + 1).
    """
    scribbles = np.zeros(prediction.shape, np.uint8)
    labels = np.unique(instances)[1:]
    centres = ndi.center_of_mass(np.ones_like(instances), instances, labels)
    done = 0
    for label, (cy, cx) in zip(labels, centres, strict=True):
        mask = instances == label
        truth = int(np.bincount(types[mask]).argmax())
        if truth == 0 or np.mean(prediction[mask] == truth) > 0.5:
            continue
        rr, cc = disk((cy, cx), 3, shape=prediction.shape)
        keep = mask[rr, cc]
        scribbles[rr[keep], cc[keep]] = truth + 1
        done += 1
        if done == n:
            break
    background = (types == 0) & (ndi.distance_transform_edt(types == 0) > 6)
    rows = np.zeros_like(background)
    rows[::40, :] = True
    scribbles[background & rows] = 1
    return scribbles


def main() -> None:
    """Render and save the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hovernet-he")
    parser.add_argument("--out", default="docs/screenshot.png")
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-scribble-refine", "synthetic_he")
    widget = open_widget(viewer, image="synthetic H&E", model=args.model, device="cpu")
    widget.configure(iterations=args.iterations)
    widget.predict(wait=True)

    truth_instances = viewer.layers["ground truth (nuclei)"].data
    truth_types = viewer.layers["ground truth (types)"].data
    scribbles = widget.new_scribbles()
    scribbles.data = corrections(widget.prediction_layer.data, truth_instances, truth_types)
    widget.refine(wait=True)

    widget.instances_layer.visible = False
    viewer.layers.selection.active = scribbles
    widget.select_class(2)
    viewer.reset_view()
    viewer.camera.zoom *= 1.6
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"{out}: {widget.last_outcome.message}")
    viewer.close()


if __name__ == "__main__":
    main()
