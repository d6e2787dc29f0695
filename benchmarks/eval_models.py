"""Score the built-in models on the real nucleus benchmark set (evaluation only).

Usage::

    python benchmarks/eval_models.py [--data DIR] [--models hovernet-fluo hovernet-he]

``DIR`` defaults to ``../shared/data/nuclei`` relative to the repository root. Greyscale
images go to the fluorescence model, RGB images to the H&E model. The output is JSON on
stdout: model -> source -> modality -> mean foreground Dice, AJI and PQ over the samples
(plus per-type F1 on ``pannuke_breast`` for typed models, with the model's classes mapped
onto PanNuke's Neoplastic / Non-neoplastic by :func:`bench_data.class_space`).

The data is never used to train or tune anything; this script only reads it.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from bench_data import class_space, list_samples, load_sample  # noqa: E402

from napari_scribble_refine.core.models.registry import load_model  # noqa: E402
from napari_scribble_refine.evaluation.metrics import (  # noqa: E402
    aggregated_jaccard_index,
    dice,
    panoptic_quality,
    per_type_f1,
)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nuclei"
MODEL_FOR = {False: "hovernet-fluo", True: "hovernet-he"}  # keyed by "is RGB"


def predict(model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instances and per-pixel classes of one image.

    Parameters
    ----------
    model : SegmentationModel
        A loaded model.
    image : numpy.ndarray
        (Y, X) or (Y, X, 3).

    Returns
    -------
    instances : numpy.ndarray
        Instance labels (0 = background).
    classes : numpy.ndarray
        Argmax class map of the model's head.
    """
    with torch.inference_mode():
        feats = model.features(image)
        logits = model.head(feats)
        classes = model.class_map(logits)[0].cpu().numpy()
        inst = model.instances(classes, logits, feats)
    if inst is None:
        from skimage.measure import label

        inst = label(classes > 0)
    return np.asarray(inst), classes


def modalities(data: Path) -> dict[str, str]:
    """``sample_id -> modality`` from the data set's manifest (empty without one)."""
    manifest = Path(data) / "manifest.csv"
    if not manifest.is_file():
        return {}
    with manifest.open() as f:
        return {row["sample_id"]: row["modality"] for row in csv.DictReader(f)}


def evaluate(
    data: Path, models: list[str], limit: int | None = None, precision: str = "auto"
) -> dict:
    """Run the models on every sample they apply to and average the metrics.

    Parameters
    ----------
    data : Path
        Data folder (``<source>/<sample>/image.tif, labels.tif[, types.tif]``).
    models : list of str
        Registry names to evaluate.
    limit : int, optional
        Use only the first ``limit`` samples of each source.
    precision : {"auto", "float32", "bfloat16"}
        Trunk arithmetic of the HoVer-Net adapter (``HoVerNetModel``).

    Returns
    -------
    dict
        model -> source -> modality -> metrics.
    """
    kinds = modalities(data)
    loaded = {name: load_model(name, precision=precision) for name in models}
    scores: dict = {}
    for source, folders in list_samples(data, limit).items():
        for folder in folders:
            sample = load_sample(folder)
            name = MODEL_FOR[sample.rgb]
            if name not in loaded:
                continue
            model = loaded[name]
            inst, classes = predict(model, sample.image)
            gt = sample.labels
            row = {
                "dice": dice(inst > 0, gt > 0),
                "aji": aggregated_jaccard_index(inst, gt),
                "pq": panoptic_quality(inst, gt)["pq"],
            }
            space = class_space(list(model.class_names), sample)
            if space.n_classes > 2 and sample.types is not None:
                pred_types = space.lut[classes].astype(np.uint8)
                res = per_type_f1(inst, pred_types, gt, sample.types, type_ids=[1, 2])
                for t, v in res["f1"].items():
                    row[f"f1_{space.names[t]}"] = v
                row["f1_detection"] = res["f1_detection"]
            modality = kinds.get(sample.sample_id, "rgb" if sample.rgb else "grey")
            bucket = scores.setdefault(name, {}).setdefault(source, {}).setdefault(modality, [])
            bucket.append(row)
    out: dict = {}
    for name, by_source in scores.items():
        for source, by_mod in by_source.items():
            for modality, rows in by_mod.items():
                keys = rows[0].keys()
                summary = {k: round(float(np.nanmean([r[k] for r in rows])), 4) for k in keys}
                summary["n"] = len(rows)
                out.setdefault(name, {}).setdefault(source, {})[modality] = summary
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Score the built-in models on real nuclei.")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--models", nargs="+", default=["hovernet-fluo", "hovernet-he"])
    p.add_argument("--limit", type=int, default=None, help="samples per source (quick runs)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = evaluate(args.data, args.models, args.limit, args.precision)
    result["_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
