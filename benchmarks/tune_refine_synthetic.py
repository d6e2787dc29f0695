"""Does refinement improve the prediction? Robot-user loops on synthetic images.

For each synthetic image (fluorescence, brightfield-grey and H&E; seeds from
:data:`SEED0`, far from the training seeds ``1001e6+``/``2002e6+`` and the held-out
``10e6+`` of ``scripts/train_builtin.py``) the built-in model predicts, then a
:class:`robot.RobotUser` scribbles on the largest error of every class ``K`` times, and
``session.run(scribbles)`` follows each interaction. Foreground Dice and the mean per-class
Dice (foreground classes) are recorded after every interaction, with the seconds each
refinement took. One table per configuration and a JSON summary are printed::

    python benchmarks/tune_refine_synthetic.py                      # default config only
    python benchmarks/tune_refine_synthetic.py --configs default,plain_ce,no_grow
    python benchmarks/tune_refine_synthetic.py --set learning_rate=0.02 --set n_layers=2
    python benchmarks/tune_refine_synthetic.py --size 512 --n-fluo 1 --n-he 1   # timing

``n_layers`` is applied to the model (HoVer-Net head depth) when the session is built.
Synthetic data only: never tune on ``shared/data``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from napari_scribble_refine.core import RefineConfig, RefineSession, load_model  # noqa: E402
from napari_scribble_refine.evaluation.metrics import dice, per_class_dice  # noqa: E402
from napari_scribble_refine.evaluation.robot import RobotUser
from napari_scribble_refine.synthetic.scenes import (  # noqa: E402
    synthetic_fluorescence,
    synthetic_he,
)

SEED0 = 900_000
"""First image seed (training uses seeds >= 1.001e9, held-out evaluation 1e7..1e7+15)."""

CONFIGS: dict[str, dict] = {
    "default": {},
    "plain_ce": {"class_balanced": False},
    "no_grow": {"region_growing": False},
    "uncapped_grow": {"grow_cap": 0.0},
    "paper": {
        "class_balanced": False,
        "grown_weight": 1.0,
        "grow_cap": 0.0,
        "keep_weight": 0.0,
        "max_iterations": 50,
        "learning_rate": 0.05,
        "momentum": 0.9,
    },
    "no_keep": {"keep_weight": 0.0},
}
"""Named configurations: RefineConfig overrides (plus ``n_layers`` for the model)."""


def make_images(
    n_fluo: int, n_he: int, size: int | None, hard: bool = False
) -> list[tuple[str, str, object]]:
    """Synthetic samples: (label, model name, SyntheticSample).

    Parameters
    ----------
    n_fluo, n_he : int
        Number of fluorescence (every third one brightfield grey) and H&E images.
    size : int or None
        Square side; None cycles through 256, 320 and 384.
    hard : bool
        Generator settings outside the training ranges (a domain shift the built-in models
        get wrong): fluorescence nuclei of radius 28-40 px (trained 4-25), brightfield
        nuclei of radius 13-18 px (trained 4-11), H&E at 1.7-2.2x magnification
        (trained 0.6-1.4x); labels get an ``h`` prefix.

    Returns
    -------
    list of tuple
        The samples.
    """
    sides = (256, 320, 384)
    out = []
    for i in range(n_fluo):
        side = size or sides[i % 3]
        bf = i % 3 == 2
        seed = SEED0 + i
        extra: dict = {}
        if hard:
            rng = np.random.default_rng(seed)
            extra["radius"] = rng.uniform(13, 18) if bf else rng.uniform(28, 40)
        sample = synthetic_fluorescence((side, side), seed=seed, brightfield=bf, **extra)
        out.append((f"{'h' * hard}{'bf' if bf else 'fl'}{i}-{side}", "hovernet-fluo", sample))
    for i in range(n_he):
        side = size or sides[i % 3]
        seed = SEED0 + 500 + i
        extra = {"scale": float(np.random.default_rng(seed).uniform(1.7, 2.2))} if hard else {}
        sample = synthetic_he((side, side), seed=seed, **extra)
        out.append((f"{'h' * hard}he{i}-{side}", "hovernet-he", sample))
    return out


def run_config(
    name: str,
    overrides: dict,
    images: list,
    interactions: int,
    cache: dict,
) -> dict:
    """Robot loop of one configuration over all images.

    Parameters
    ----------
    name : str
        Configuration label.
    overrides : dict
        RefineConfig fields, plus ``n_layers`` (applied to the model too).
    images : list
        From :func:`make_images`.
    interactions : int
        K, robot interactions per image.
    cache : dict
        Sessions by (label, n_layers), reset before reuse (saves the trunk pass).

    Returns
    -------
    dict
        Per image: Dice and class-Dice lists (k = 0..K), seconds, steps.
    """
    config = RefineConfig(seed=0, device="cpu").replace(**overrides)
    rows = {}
    for label, model_name, sample in images:
        key = (label, config.n_layers)
        if key not in cache:
            model = load_model(model_name, n_layers=config.n_layers)
            cache[key] = RefineSession(model, sample.image, config)
        session = cache[key]
        session.reset()
        truth = sample.types.astype(np.int32)
        n_classes = session.n_classes
        robot = RobotUser(truth, n_classes, seed=0)
        scribbles = np.zeros(truth.shape, np.uint8)
        prediction = session.predict()
        dices = [dice(prediction > 0, truth > 0)]
        cdices = [float(np.nanmean(per_class_dice(prediction, truth, n_classes)[1:]))]
        seconds, steps, grown = [], [], []
        for k in range(1, interactions + 1):
            scribbles, _ = robot.interact(prediction, scribbles, k)
            t0 = time.perf_counter()
            result = session.run(scribbles, config=config)
            seconds.append(time.perf_counter() - t0)
            prediction = result.prediction
            steps.append(result.iterations)
            grown.append(result.n_scribbled / max(1, int(np.count_nonzero(scribbles))))
            dices.append(dice(prediction > 0, truth > 0))
            cdices.append(float(np.nanmean(per_class_dice(prediction, truth, n_classes)[1:])))
        rows[label] = {
            "dice": [round(d, 4) for d in dices],
            "class_dice": [round(d, 4) for d in cdices],
            "seconds": [round(s, 3) for s in seconds],
            "steps": steps,
            "grown_ratio": [round(g, 2) for g in grown],
        }
    return rows


def print_table(name: str, overrides: dict, rows: dict, interactions: int) -> dict:
    """Print one configuration's table and return its summary.

    Parameters
    ----------
    name : str
        Configuration label.
    overrides : dict
        Its overrides (printed).
    rows : dict
        From :func:`run_config`.
    interactions : int
        K.

    Returns
    -------
    dict
        Means of Dice and class Dice at every k, median seconds, wins.
    """
    ks = [k for k in (0, 1, 3, 5) if k <= interactions]
    print(f"\n== {name} {json.dumps(overrides)}")
    head = " ".join(f"D@{k:<4}" for k in ks) + " | " + " ".join(f"cD@{k:<3}" for k in ks)
    print(f"{'image':<10} {head} | s/int  steps")
    for label, r in rows.items():
        d = " ".join(f"{r['dice'][k]:.3f}" for k in ks)
        c = " ".join(f"{r['class_dice'][k]:.3f}" for k in ks)
        med = statistics.median(r["seconds"])
        print(f"{label:<10} {d} | {c} | {med:5.2f}  {r['steps']}")
    summary: dict = {"overrides": overrides}
    for group, prefix in (("fluo", ("fl", "bf", "hfl", "hbf")), ("he", ("he", "hhe"))):
        sel = [r for lab, r in rows.items() if lab.startswith(prefix)]
        if not sel:
            continue
        mean_d = [float(np.mean([r["dice"][k] for r in sel])) for k in range(interactions + 1)]
        mean_c = [
            float(np.mean([r["class_dice"][k] for r in sel])) for k in range(interactions + 1)
        ]
        secs = [s for r in sel for s in r["seconds"]]
        worse = sum(r["dice"][-1] < r["dice"][0] for r in sel)
        summary[group] = {
            "dice": [round(v, 4) for v in mean_d],
            "class_dice": [round(v, 4) for v in mean_c],
            "median_s": round(statistics.median(secs), 3),
            "max_s": round(max(secs), 3),
            "n_worse_at_K": worse,
        }
        d = " ".join(f"{mean_d[k]:.3f}" for k in ks)
        c = " ".join(f"{mean_c[k]:.3f}" for k in ks)
        print(
            f"{'MEAN ' + group:<10} {d} | {c} | {statistics.median(secs):5.2f}  "
            f"worse@K: {worse}/{len(sel)}"
        )
    return summary


def parse_value(text: str) -> object:
    """``"0.5"`` -> 0.5, ``"true"`` -> True, ``"3"`` -> 3, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    dict
        Summary per configuration.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="default", help=f"comma-separated of {list(CONFIGS)}")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an extra configuration with these overrides (repeatable)",
    )
    p.add_argument("--n-fluo", type=int, default=6)
    p.add_argument("--n-he", type=int, default=6)
    p.add_argument("--size", type=int, default=None, help="square side (default 256-384)")
    p.add_argument("--interactions", type=int, default=5)
    p.add_argument("--hard", action="store_true", help="out-of-training-range generator settings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the JSON summary here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    configs = {}
    for name in filter(None, args.configs.split(",")):
        configs[name] = CONFIGS[name]
    if args.set:
        custom = {}
        for item in args.set:
            field, _, value = item.partition("=")
            custom[field] = parse_value(value)
        configs["custom:" + ",".join(args.set)] = custom

    images = make_images(args.n_fluo, args.n_he, args.size, args.hard)
    cache: dict = {}
    summary = {}
    for name, overrides in configs.items():
        rows = run_config(name, overrides, images, args.interactions, cache)
        summary[name] = print_table(name, overrides, rows, args.interactions)
        summary[name]["images"] = rows
    compact = {n: {k: v for k, v in s.items() if k != "images"} for n, s in summary.items()}
    print("\n" + json.dumps(compact))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
