"""Tune the refinement on the training set's validation split, never on the test set.

Usage::

    python benchmarks/tune_refine.py [--variants default,no-trust,...] [--per-group 12]
        [--baselines paint-only,dense-crf] [--interactions 3] [--out FILE.json]

The robot user of the benchmark corrects the shipped models' predictions on the images of
``benchmarks/splits/validation.txt`` (``../shared/data/train``: DSB fluorescence, histology
and brightfield grey, CoNSeP patches; none of them trained a shipped model) with each
variant of our refinement (a named set of ``RefineConfig`` changes, :data:`VARIANTS`) and
the chosen rival methods, and prints per group: Dice after 0, 1 and K interactions, the
share of steps that lost more than 0.02 Dice, the tuned head's own agreement with its
scribbles at K, class Dice at K (typed groups) and the median seconds per interaction.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from baselines import BASELINES  # noqa: E402
from bench_data import CONSEP_TYPES, Sample, class_space, ground_truth, load_sample  # noqa: E402
from evaluate import evaluate_method, instance_scores  # noqa: E402
from ours import OursVariant, softmax_probabilities  # noqa: E402
from problem import Problem  # noqa: E402

from napari_scribble_refine.core.config import RefineConfig  # noqa: E402
from napari_scribble_refine.core.models.registry import load_model  # noqa: E402
from napari_scribble_refine.core.session import RefineSession  # noqa: E402
from napari_scribble_refine.evaluation.robot import RobotUser, sample_seed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "train"
SPLIT = REPO / "benchmarks" / "splits" / "validation.txt"
GROUPS = ("fluo", "histo", "bfgray", "consep")

VARIANTS: dict[str, dict] = {
    "default": {},
    "paper": {"paper": True},
    "no-trust": {"trust_region": False, "type_by_instance": False},
    "spread": {"spread": True},
    "spread-margin0.6": {"spread": True, "spread_margin": 0.6},
    "not-similar": {"local_similar": False},
    "reach-1": {"trust_reach": 1.0},
    "no-spread": {"spread": False},
    "no-grow": {"region_growing": False},
    "no-type-vote": {"type_by_instance": False},
    "reach-0.5": {"trust_reach": 0.5},
    "reach-2": {"trust_reach": 2.0},
    "conf-0.5": {"spread_confidence": 0.5},
    "conf-0.9": {"spread_confidence": 0.9},
    "keep-0": {"keep_weight": 0.0},
    "lr-0.3": {"learning_rate": 0.3},
    "iter-100": {"max_iterations": 100},
    "no-crf": {"crf_weight": 0.0},
    "adam-0.01": {"optimiser": "adam", "learning_rate": 0.01},
    "adam-0.03": {"optimiser": "adam", "learning_rate": 0.03},
    "fit-hard": {"learning_rate": 0.3, "max_iterations": 100, "keep_weight": 0.5},
    "margin-0.8": {"spread_margin": 0.8},
    "no-spread-similar": {"spread": False, "local_similar": True},
    "no-spread-similar-reach0.5": {"spread": False, "local_similar": True, "trust_reach": 0.5},
    "similar-margin0.6": {"local_similar": True, "spread_margin": 0.6},
    "margin-0.6": {"spread_margin": 0.6},
    "frozen-head": {"learning_rate": 1e-12, "max_iterations": 1},
    "type-spread": {"type_spread": True},
    "type-clf": {"type_classifier": True},
    "no-type-clf": {"type_classifier": False},
    "grow-intensity": {"grow_similar": False},
    "free-types": {"free_types": True},
    "layers-2": {"n_layers": 2},
    "layers-3": {"n_layers": 3},
    "layers-2-adam-0.01": {"n_layers": 2, "optimiser": "adam", "learning_rate": 0.01},
    "layers-2-adam-0.03": {"n_layers": 2, "optimiser": "adam", "learning_rate": 0.03},
    "layers-2-lr-0.3": {"n_layers": 2, "learning_rate": 0.3},
    "layers-3-adam": {"n_layers": 3, "optimiser": "adam", "learning_rate": 0.01},
    "crf-bright-3": {"crf_weight_bright": 3.0},
    "layers-2-sgd": {"n_layers": 2, "optimiser": "sgd", "learning_rate": 0.1},
    "layers-3-adam-keep-6": {
        "n_layers": 3,
        "optimiser": "adam",
        "learning_rate": 0.01,
        "keep_weight": 6.0,
    },
    "layers-3-adam-it20": {
        "n_layers": 3,
        "optimiser": "adam",
        "learning_rate": 0.01,
        "max_iterations": 20,
    },
    "free-types-adam": {"free_types": True, "optimiser": "adam", "learning_rate": 0.03},
    "type-spread-0.8": {"type_spread": True, "type_spread_margin": 0.8},
    "type-spread-1.2": {"type_spread": True, "type_spread_margin": 1.2},
    "keep-0.5": {"keep_weight": 0.5},
    "adam-0.03-keep-0.5": {"optimiser": "adam", "learning_rate": 0.03, "keep_weight": 0.5},
    "adam-0.03-it100-keep-0.5": {
        "optimiser": "adam",
        "learning_rate": 0.03,
        "keep_weight": 0.5,
        "max_iterations": 100,
    },
    "crf-w10": {"crf_weight": 10.0},
    "crf-w6-it10": {"crf_weight": 6.0, "crf_iterations": 10},
    "crf-w6-r16": {"crf_weight": 6.0, "crf_radius": 16},
    "crf-w6-eps0.003": {"crf_weight": 6.0, "crf_eps": 0.003},
    "crf-w10-r16": {"crf_weight": 10.0, "crf_radius": 16},
    "crf-w1": {"crf_weight": 1.0},
    "crf-w6": {"crf_weight": 6.0},
    "crf-r4": {"crf_radius": 4},
    "crf-r16": {"crf_radius": 16},
    "crf-eps0.003": {"crf_eps": 0.003},
    "crf-eps0.03": {"crf_eps": 0.03},
}
"""Named ``RefineConfig`` changes (``{"paper": True}``: :meth:`RefineConfig.paper`)."""

BASES: dict[str, dict] = {
    "current": {},
    "before-tuning": {
        "spread": True,
        "trust_reach": 1.0,
        "local_similar": False,
        "grow_similar": False,
    },
}
"""Settings the variants change: today's defaults, or those before the tuning of
2026-12-01 (sweeps A and B of ``benchmarks/notes.md`` ran from them)."""


def variant_config(name: str, seed: int, base: str = "current") -> RefineConfig:
    """Return the config of a named variant on a base (CPU, seeded)."""
    changes = dict(VARIANTS[name])
    start = RefineConfig.paper() if changes.pop("paper", False) else RefineConfig()
    if not VARIANTS[name].get("paper"):
        start = start.replace(**BASES[base])
    return start.replace(seed=seed, device="cpu", **changes)


def group_of(sample_id: str, source: str) -> str:
    """``fluo``, ``histo``, ``bfgray`` (DSB, by the id's prefix) or ``consep``."""
    return "consep" if source == "consep" else sample_id.split("_", 1)[0]


def validation_folders(data: Path, per_group: int) -> list[tuple[str, Path]]:
    """Return the first ``per_group`` validation samples of each group, in split order."""
    ids = [s for s in SPLIT.read_text().splitlines() if s.strip() and not s.startswith("#")]
    out: list[tuple[str, Path]] = []
    counts = dict.fromkeys(GROUPS, 0)
    for sample_id in ids:
        source = "dsb2018" if sample_id.split("_", 1)[0] in GROUPS[:3] else "consep"
        group = group_of(sample_id, source)
        if counts[group] < per_group:
            counts[group] += 1
            out.append((group, data / source / sample_id))
    return out


def stain_shift(image: np.ndarray, seed: int) -> np.ndarray:
    """Re-stain an H&E image as another lab might (``--stain-shift``): a fixed draw per image.

    Haematoxylin and eosin optical densities are scaled by 0.6-1.5 and shifted, in
    scikit-image's HED space, then the image is returned to uint8 RGB.
    """
    from skimage.color import hed2rgb, rgb2hed

    rng = np.random.default_rng(seed)
    hed = rgb2hed(image[..., :3])
    scale = rng.uniform(0.6, 1.5, size=3)
    shift = rng.uniform(-0.03, 0.03, size=3)
    out = hed2rgb(hed * scale + shift)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def as_two_types(sample: Sample) -> Sample:
    """CoNSeP's types as PanNuke's two (``--two-types``): epithelial is Neoplastic, the rest not.

    The training set's SOURCES.md maps them so; the model's classes then map to the two by
    :func:`bench_data.class_space`, as on the test set's PanNuke images.
    """
    epithelial = int(next(k for k, v in CONSEP_TYPES.items() if v == "epithelial"))
    types = sample.types.astype(np.int64)
    two = np.where(types == epithelial, 1, np.where(types > 0, 2, 0)).astype(np.uint8)
    return dataclasses.replace(
        sample, types=two, type_names=["background", "Neoplastic", "Non-neoplastic"]
    )


def run_sample(group: str, folder: Path, args: argparse.Namespace, models: dict) -> dict:
    """Every variant and baseline with the robot on one sample."""
    sample = load_sample(folder)
    if args.stain_shift and sample.rgb:
        sample = dataclasses.replace(
            sample, image=stain_shift(sample.image, sample_seed(sample.name, args.seed))
        )
    if args.two_types and sample.types is not None:
        sample = as_two_types(sample)
    if args.permute_types and sample.types is not None:
        n = len(sample.type_names) - 1  # the user's types are the model's, shifted by one
        types = sample.types.astype(np.int64)
        shifted = np.where(types > 0, types % n + 1, 0).astype(sample.types.dtype)
        sample = dataclasses.replace(sample, types=shifted)
    kind = "rgb" if sample.rgb else "grey"
    if kind not in models:
        models[kind] = load_model(args.rgb_model if sample.rgb else args.grey_model)
    model = models[kind]
    session = RefineSession(model, sample.image, variant_config("default", args.seed, args.base))
    model_probs = softmax_probabilities(session.logits())
    space = class_space(model.class_names, sample)
    initial = space.lut[session.prediction].astype(np.uint8)
    problem = Problem(
        sample.name, sample.image, sample.rgb, space.probabilities(model_probs), initial,
        space.n_classes,
    )  # fmt: skip
    gt_cls = ground_truth(sample, space)
    first = instance_scores(initial, sample.labels)
    seed = sample_seed(sample.name, args.seed)
    record = {"sample": sample.name, "group": group, "methods": {}}
    sessions = {session.config.n_layers: session}
    methods = {f"ours:{v}": v for v in args.variants} | {b: b for b in args.baselines}
    for name, key in methods.items():
        if name.startswith("ours:"):
            cfg = variant_config(key, args.seed, args.base)
            if cfg.n_layers not in sessions:  # the head depth is fixed per session
                sessions[cfg.n_layers] = RefineSession(model, sample.image, cfg)
            own = sessions[cfg.n_layers]

            def factory(p: Problem, cfg: RefineConfig = cfg, own=own) -> OursVariant:
                return OursVariant(own, cfg, space, model_probs)
        else:
            factory = BASELINES[key][0]
        robot = RobotUser(gt_cls, space.n_classes, seed=seed)
        record["methods"][name] = evaluate_method(
            factory, problem, robot, sample.labels, gt_cls, args.interactions,
            args.interactions, first,
        )  # fmt: skip
    return record


def summarise(records: list[dict], k: int) -> dict:
    """Per group and method: Dice@0/1/K, share of losing steps, head agreement, class Dice."""
    out: dict = {}
    for group in [*GROUPS, "all"]:
        recs = [r for r in records if group in ("all", r["group"])]
        if not recs:
            continue
        for name in recs[0]["methods"]:
            runs = [r["methods"][name] for r in recs]
            dice = np.array([r["dice"][: k + 1] for r in runs])
            losses = np.diff(dice, axis=1) < -0.02
            row = {
                "n": len(runs),
                "dice@0": dice[:, 0].mean(),
                "dice@1": dice[:, 1].mean(),
                f"dice@{k}": dice[:, k].mean(),
                "lose>0.02": losses.mean(),
                "sec_median": float(np.median(np.concatenate([r["sec"] for r in runs]))),
            }
            if "head_agreement" in runs[0]:
                row[f"head@{k}"] = float(np.nanmean([r["head_agreement"][k] for r in runs]))
            cls = [r["class_dice"][k] for r in runs]
            if np.isfinite(cls).any():
                row["class@0"] = float(np.nanmean([r["class_dice"][0] for r in runs]))
                row["class@1"] = float(np.nanmean([r["class_dice"][1] for r in runs]))
                row[f"class@{k}"] = float(np.nanmean(cls))
                curves = np.array([r["class_dice"][: k + 1] for r in runs], dtype=float)
                steps = np.diff(curves, axis=1)
                row["class_lose>0.02"] = float(np.mean(steps[np.isfinite(steps)] < -0.02))
            out.setdefault(group, {})[name] = {
                key: round(float(v), 4) if isinstance(v, float | np.floating) else v
                for key, v in row.items()
            }
    return out


def print_table(summary: dict) -> None:
    """One line per group and method."""
    for group, methods in summary.items():
        print(f"\n## {group}")
        for name, row in methods.items():
            cells = " ".join(f"{k}={v}" for k, v in row.items())
            print(f"{name:22s} {cells}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--variants", default="default,no-trust")
    p.add_argument("--base", choices=sorted(BASES), default="current")
    p.add_argument("--baselines", default="paint-only")
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--per-group", type=int, default=12)
    p.add_argument("--interactions", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grey-model", default="hovernet-fluo")
    p.add_argument("--rgb-model", default="hovernet-he")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--stain-shift", action="store_true",
        help="re-stain RGB images (another lab's H&E: the model's types are then less sure)",
    )  # fmt: skip
    p.add_argument(
        "--permute-types", action="store_true",
        help="shift the ground-truth types by one class (a model whose types mean another "
        "lab's classes: every type the model predicts is wrong)",
    )  # fmt: skip
    p.add_argument(
        "--two-types", action="store_true",
        help="score CoNSeP in PanNuke's two types (epithelial = Neoplastic, the rest not), "
        "the model's classes mapped as on the test set",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="write the records and table here")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    args.baselines = [b for b in args.baselines.split(",") if b]
    unknown = [v for v in args.variants if v not in VARIANTS]
    unknown += [b for b in args.baselines if b not in BASELINES]
    if unknown:
        p.error(f"unknown variants or baselines {unknown}; variants: {sorted(VARIANTS)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    wanted = set(args.groups.split(","))
    folders = [(g, f) for g, f in validation_folders(args.data, args.per_group) if g in wanted]
    models: dict = {}
    records = []
    t0 = time.perf_counter()
    for group, folder in folders:
        records.append(run_sample(group, folder, args, models))
        print(f"{folder.name}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    summary = summarise(records, args.interactions)
    print_table(summary)
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "records": records}, default=float))


if __name__ == "__main__":
    main()
