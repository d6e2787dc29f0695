"""Write docs/screenshot.png: the docked widget over a refined H&E sample.

Runs the scripted workflow of the README (open the sample, dock the widget, Predict, paint
corrections where the prediction's nucleus types are wrong, Refine) in a shown viewer and
saves the whole window. With ``--sequence DIR`` it also saves each step of the correction
(``1-predict.png``, ``2-scribbles.png``, ``3-refined.png``, ``4-committed.png``). Needs a
display (``xvfb-run -a python scripts/screenshot.py`` on a headless machine).

Usage::

    python scripts/screenshot.py [--model hovernet-he] [--out docs/screenshot.png]
        [--sequence docs/correction]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
import numpy as np
from PIL import Image as PILImage
from scipy import ndimage as ndi
from skimage.draw import disk

from napari_scribble_refine.scripting import open_widget


def corrections(prediction: np.ndarray, instances: np.ndarray, types: np.ndarray, n: int = 12):
    """Strokes a user would paint: on nuclei predicted wrongly, and on false detections.

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
    # short background strokes where background was predicted as nuclei (else anywhere)
    far = ndi.distance_transform_edt(types == 0) > 4
    wrong = far & (prediction != 0)
    rng = np.random.default_rng(0)
    for y, x in rng.permutation(np.argwhere(wrong if wrong.any() else far))[: 3 * n]:
        span = slice(x, min(x + 15, far.shape[1]))
        scribbles[y, span][far[y, span]] = 1
    return scribbles


def main() -> None:
    """Render and save the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", choices=["he", "fluorescence"], default="he")
    parser.add_argument("--model", default=None, help="default: the sample's built-in model")
    parser.add_argument("--out", default="docs/screenshot.png")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--no-growing", action="store_true", help="turn region growing off")
    parser.add_argument("--sequence", default=None, help="folder for one screenshot per step")
    args = parser.parse_args()
    steps = Path(args.sequence) if args.sequence else None
    if steps is not None:
        steps.mkdir(parents=True, exist_ok=True)

    def snap(name: str) -> None:
        if steps is not None:  # 128 colours: a quarter of the bytes, the same picture
            viewer.screenshot(str(steps / name), canvas_only=False)
            picture = PILImage.open(steps / name).convert("RGB")
            picture.quantize(colors=128).save(steps / name, optimize=True)

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    key, image, model = {
        "he": ("synthetic_he", "synthetic H&E", "hovernet-he"),
        "fluorescence": ("synthetic_fluorescence", "synthetic fluorescence", "hovernet-fluo"),
    }[args.sample]
    viewer.open_sample("napari-scribble-refine", key)
    widget = open_widget(viewer, image=image, model=args.model or model, device="cpu")
    widget.configure(max_iterations=args.iterations)
    if args.learning_rate is not None:
        widget.configure(learning_rate=args.learning_rate)
    if args.no_growing:
        widget.configure(region_growing=False)
    widget.predict(wait=True)
    viewer.reset_view()
    viewer.camera.zoom *= 1.6
    snap("1-predict.png")

    truth_instances = viewer.layers["ground truth (nuclei)"].data
    if "ground truth (types)" in viewer.layers:
        truth_types = viewer.layers["ground truth (types)"].data
    else:
        truth_types = (truth_instances > 0).astype(np.uint8)
    scribbles = widget.new_scribbles()
    scribbles.data = corrections(widget.prediction_layer.data, truth_instances, truth_types)
    snap("2-scribbles.png")
    widget.refine(wait=True)
    snap("3-refined.png")

    widget.prediction_layer.opacity = 0.6
    viewer.layers.selection.active = scribbles
    widget.select_class(min(2, len(widget.class_names) - 1))
    viewer.reset_view()
    viewer.camera.zoom *= 1.6
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"{out}: {widget.last_outcome.message}")
    if steps is not None:
        widget.commit()
        for layer in (widget.prediction_layer, widget.instances_layer, scribbles):
            layer.visible = False
        snap("4-committed.png")
        print(f"{steps}: {', '.join(sorted(p.name for p in steps.glob('*.png')))}")
    viewer.close()


if __name__ == "__main__":
    main()
