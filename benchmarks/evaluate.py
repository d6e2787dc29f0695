"""The robot-user loop for one method on one image, and the aggregation of its figures."""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable

import numpy as np
from baselines import BASELINES
from bench_data import ClassSpace, Sample, class_space
from groups import group_names, image_groups
from ours import OursVariant, WholeNetworkModel, softmax_probabilities
from problem import Problem

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.postprocess import class_map_to_instances
from napari_scribble_refine.core.session import RefineSession
from napari_scribble_refine.evaluation.metrics import (
    aggregated_jaccard_index,
    dice,
    iou,
    number_of_interactions,
    panoptic_quality,
    per_class_dice,
    scribble_agreement,
)
from napari_scribble_refine.evaluation.robot import RobotUser

PAPER_DICE = [0.54, 0.62, 0.76, 0.81, 0.86]
"""Sambaturu et al. (MICCAI 2021), nucleus segmentation: Dice after 1..5 interactions."""

FIXED_KS = (1, 3, 5)
"""Interactions scored in the fixed-scribbles mode."""

Factory = Callable[[Problem], Callable[[np.ndarray], np.ndarray]]

ALL_WEIGHTS_MAX_PIXELS = 512 * 512
"""Images larger than this skip the all-weights variant (a full backward per step)."""

ALL_WEIGHTS_STEPS = 10
"""Most optimiser steps per interaction of the all-weights variant."""

ALL_WEIGHTS_LR = 0.00005
"""SGD rate of the all-weights variant (every layer moves, so much smaller than the head's;
0.005 and 0.0005 wrecked the prediction on a DSB fluorescence tile, 0.00005 did not)."""

LOSE_DROP = 0.02
"""A step k - 1 -> k "loses" when an image's Dice drops by more than this."""

_EPS = 1e-9
"""Slack for float sums (a drop of exactly ``LOSE_DROP`` does not lose)."""


def ours_config(args: argparse.Namespace, **changes: object) -> RefineConfig:
    """Return our method's benchmark config (defaults, CPU, the run's seed)."""
    return RefineConfig(seed=args.seed, device="cpu").replace(**changes)


def make_methods(
    sample: Sample, model, args: argparse.Namespace, all_weights: bool = True
) -> tuple[dict[str, Factory], Problem, ClassSpace]:
    """Build the initial prediction and one factory per method for a sample.

    The session is created here (its trunk pass is the setup cost of our method); every
    method starts from its initial prediction.

    Returns
    -------
    methods : dict
        Method name -> factory(problem) -> callable(scribbles) -> class map.
    problem : Problem
        The shared starting point.
    space : ClassSpace
        Evaluation classes.
    """
    session = RefineSession(model, sample.image, ours_config(args), rgb=sample.rgb)
    model_probs = softmax_probabilities(session.logits())
    space = class_space(model.class_names, sample)
    probs = space.probabilities(model_probs)
    initial = space.lut[session.prediction].astype(np.uint8)  # the model's own rule
    problem = Problem(sample.name, sample.image, sample.rgb, probs, initial, space.n_classes)

    def variant(config: RefineConfig) -> Factory:
        return lambda p: OursVariant(session, config, space, model_probs)

    methods: dict[str, Factory] = {
        "ours": variant(ours_config(args)),
        "ours-no-grow": variant(ours_config(args, region_growing=False)),
        "ours-paper": variant(RefineConfig.paper(seed=args.seed, device="cpu")),
    }
    if space.n_classes > 2:  # the switch for foreign types, reported, not judged
        methods["ours-type-classifier"] = variant(ours_config(args, type_classifier=True))
    if all_weights and all_weights_eligible(sample):
        methods["ours-all-weights"] = _all_weights_factory(model, sample, space, model_probs, args)
    for name, (factory, requirement) in BASELINES.items():
        if requirement is None or importlib.util.find_spec(requirement) is not None:
            methods[name] = factory
    if args.methods:
        wanted = {m.strip() for m in args.methods.split(",")}
        methods = {k: v for k, v in methods.items() if k in wanted}
    return methods, problem, space


def all_weights_eligible(sample: Sample) -> bool:
    """Say whether a sample is small enough for the all-weights variant (up to 512²)."""
    return sample.image.shape[0] * sample.image.shape[1] <= ALL_WEIGHTS_MAX_PIXELS


def _all_weights_factory(model, sample, space, model_probs, args) -> Factory:
    cache: dict[str, RefineSession] = {}

    # Each step is a full forward and backward pass: fewer steps, no previews.
    cfg = ours_config(
        args,
        max_iterations=ALL_WEIGHTS_STEPS,
        preview_every=ALL_WEIGHTS_STEPS,
        learning_rate=ALL_WEIGHTS_LR,
    )

    def factory(problem: Problem) -> OursVariant:
        if "session" not in cache:
            cache["session"] = RefineSession(
                WholeNetworkModel(model), sample.image, cfg, rgb=sample.rgb
            )
        return OursVariant(cache["session"], cfg, space, model_probs)

    return factory


def class_map_instances(class_map: np.ndarray) -> np.ndarray:
    """Split a class map into instances, the same way for every method."""
    return np.asarray(class_map_to_instances(class_map))


def instance_scores(class_map: np.ndarray, gt_inst: np.ndarray) -> dict:
    """AJI and PQ of a class map's generic instances: ``{"aji0", "pq0"}``."""
    inst = class_map_instances(class_map)
    return {
        "aji0": aggregated_jaccard_index(inst, gt_inst),
        "pq0": panoptic_quality(inst, gt_inst)["pq"],
    }


def _scores(pred: np.ndarray, gt_cls: np.ndarray, n_classes: int) -> tuple[float, float, float]:
    d = dice(pred, gt_cls)
    j = iou(pred, gt_cls)
    c = float("nan")
    if n_classes > 2:
        per = per_class_dice(pred, gt_cls, n_classes)[1:]
        c = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
    return d, j, c


def evaluate_method(
    factory: Factory,
    problem: Problem,
    robot: RobotUser,
    gt_inst: np.ndarray,
    gt_cls: np.ndarray,
    interactions: int,
    cap: int,
    initial_instance_scores: dict,
) -> dict:
    """Run the robot loop for one method on one image.

    Interactions k = 1..``interactions`` always run (for the Dice curves); after that the
    loop goes on only until Dice reaches 0.90 (for NoC), at most to ``cap``. When the robot
    finds no error region of at least its minimum size, nothing changes any more and the
    remaining interactions up to K repeat the last figures without calling the method.

    ``initial_instance_scores`` (from :func:`instance_scores` on the shared initial
    prediction) is copied into the record as the k = 0 figures.

    Returns
    -------
    dict
        Per-interaction lists (dice, iou, class_dice, scribbled, agreement), call seconds,
        setup seconds, NoC@0.85/0.90 (None = never within ``cap``) and AJI/PQ at k = 0, K.
    """
    t0 = time.perf_counter()
    method = factory(problem)
    setup = time.perf_counter() - t0
    n = problem.n_classes
    pred = problem.initial
    scribbles = np.zeros(pred.shape, np.uint8)
    d, j, c = _scores(pred, gt_cls, n)
    rec: dict = {
        "dice": [d],
        "iou": [j],
        "class_dice": [c],
        "scribbled": [0],
        "agreement": [float("nan")],
        "sec": [],
        "setup_sec": setup,
    }
    rec.update(initial_instance_scores)
    idle = False
    for k in range(1, cap + 1):
        if k > interactions and (idle or rec["dice"][-1] >= 0.90):
            break
        if not idle:
            scribbles, strokes = robot.interact(pred, scribbles, k)
            idle = not strokes
            if not idle:
                t = time.perf_counter()
                pred = method(scribbles)
                rec["sec"].append(time.perf_counter() - t)
                d, j, c = _scores(pred, gt_cls, n)
        rec["dice"].append(d)
        rec["iou"].append(j)
        rec["class_dice"].append(c)
        rec["scribbled"].append(int(np.count_nonzero(scribbles)))
        rec["agreement"].append(scribble_agreement(pred, scribbles))
        if hasattr(method, "head_agreement"):  # ours: the tuned head's own fit, before pinning
            rec.setdefault("head_agreement", [float("nan")]).append(method.head_agreement)
        if k == interactions:
            scores = instance_scores(pred, gt_inst)
            rec["ajiK"], rec["pqK"] = scores["aji0"], scores["pq0"]
            if hasattr(method, "instances"):  # the model's own instances (ours: HV watershed)
                rec["ajiK_own"] = aggregated_jaccard_index(method.instances(), gt_inst)
    rec["noc85"] = number_of_interactions(rec["dice"], 0.85, cap)
    rec["noc90"] = number_of_interactions(rec["dice"], 0.90, cap)
    return rec


def evaluate_fixed(
    methods: dict[str, Factory],
    problem: Problem,
    robot: RobotUser,
    gt_cls: np.ndarray,
    ks: tuple[int, ...],
) -> dict:
    """Fixed-scribbles mode: one scribble set per k drawn on the initial prediction.

    All methods get the same scribbles (the robot keeps scribbling the initial prediction's
    errors); each method is called with the sets of ``ks`` in order.

    Returns
    -------
    dict
        ``{"k": ks, "scribbled": [...], "methods": {name: {"dice": [...], "class_dice": [...]}}}``.
    """
    sets = []
    scribbles = np.zeros(problem.initial.shape, np.uint8)
    for k in range(1, max(ks) + 1):
        scribbles, _ = robot.interact(problem.initial, scribbles, k)
        sets.append(scribbles)
    out: dict = {
        "k": list(ks),
        "scribbled": [int(np.count_nonzero(sets[k - 1])) for k in ks],
        "methods": {},
    }
    for name, factory in methods.items():
        method = factory(problem)
        dices, cls = [], []
        for k in ks:
            pred = method(sets[k - 1]) if sets[k - 1].any() else problem.initial
            d, _, c = _scores(pred, gt_cls, problem.n_classes)
            dices.append(d)
            cls.append(c)
        out["methods"][name] = {"dice": dices, "class_dice": cls}
    return out


def warm_up(methods: dict[str, Factory], problem: Problem, gt_cls: np.ndarray) -> None:
    """Call every method once on a crop (imports, thread pools, JIT), untimed."""
    ys = slice(0, min(128, problem.initial.shape[0]))
    xs = slice(0, min(128, problem.initial.shape[1]))
    crop = Problem(
        problem.name,
        problem.image[ys, xs],
        problem.rgb,
        problem.probabilities[:, ys, xs],
        problem.initial[ys, xs],
        problem.n_classes,
    )
    robot = RobotUser(gt_cls[ys, xs], problem.n_classes, seed=0, min_region=1)
    scribbles, _ = robot.interact(crop.initial, np.zeros(crop.initial.shape, np.uint8), 1)
    for name, factory in methods.items():
        if name.startswith("ours"):
            continue  # bound to the full image's session; the first sample warms it
        factory(crop)(scribbles)


def _mean(values: list[float]) -> float | None:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else None


def _curve(recs: list[dict], key: str, length: int) -> list[float | None]:
    return [_mean([r[key][k] for r in recs if len(r[key]) > k]) for k in range(length)]


def lose_steps(recs: list[dict], interactions: int) -> tuple[int, int]:
    """Count the steps that lost Dice, over a group of images.

    A step is an (image, k) pair for k = 1..``interactions``; it loses when the image's Dice
    at k is lower than at k - 1 by more than :data:`LOSE_DROP`. Steps with a missing Dice
    (None or NaN at k - 1 or k) are not counted.

    Parameters
    ----------
    recs : list of dict
        Per-image records of one method (their ``"dice"`` lists, k = 0, 1, ...).
    interactions : int
        K: only the steps up to k = K count (NoC may have run the loop further).

    Returns
    -------
    lost : int
        Steps that lost more than :data:`LOSE_DROP`.
    steps : int
        Steps counted.
    """
    lost = steps = 0
    for r in recs:
        values = [np.nan if v is None else float(v) for v in r["dice"][: interactions + 1]]
        for before, after in zip(values[:-1], values[1:], strict=True):
            if np.isfinite(before) and np.isfinite(after):
                steps += 1
                lost += int(before - after > LOSE_DROP + _EPS)
    return int(lost), steps


def summarise(recs: list[dict], interactions: int, cap: int) -> dict:
    """Figures of one method over a group of images.

    Returns
    -------
    dict
        NoC@0.85/0.90 (``never*``: images that never got there), ``dice@1``, ``dice@3``,
        ``dice@5``, ``class_dice@5``, ``head_agreement@5`` (ours variants),
        ``lose_share`` (share of (image, k) steps, k = 1..K, that lost more than
        :data:`LOSE_DROP` Dice; ``lose_steps`` of ``steps``), seconds, and the mean curves
        over k = 0..K.
    """
    secs = np.concatenate([np.asarray(r["sec"], float) for r in recs] + [np.zeros(0)])
    out: dict = {"n_images": len(recs)}
    for t in ("85", "90"):
        nocs = [r["noc" + t] for r in recs]
        out["noc" + t] = _mean([cap if v is None else v for v in nocs])
        out["never" + t] = sum(v is None for v in nocs)
    curve = _curve(recs, "dice", interactions + 1)
    out["dice@1"] = curve[min(1, interactions)]
    out["dice@3"] = curve[min(3, interactions)]
    out["dice@5"] = curve[min(5, interactions)]
    lost, steps = lose_steps(recs, interactions)
    out["lose_share"] = lost / steps if steps else None
    out["lose_steps"] = lost
    out["steps"] = steps
    out["sec_median"] = float(np.median(secs)) if secs.size else None
    out["sec_p90"] = float(np.percentile(secs, 90)) if secs.size else None
    out["calls"] = int(secs.size)
    out["setup_sec_mean"] = _mean([r["setup_sec"] for r in recs])
    out["dice_curve"] = curve
    out["iou_curve"] = _curve(recs, "iou", interactions + 1)
    out["class_dice_curve"] = _curve(recs, "class_dice", interactions + 1)
    out["class_dice@5"] = out["class_dice_curve"][min(5, interactions)]
    out["scribbled_curve"] = _curve(recs, "scribbled", interactions + 1)
    out["agreement_curve"] = _curve(recs, "agreement", interactions + 1)
    if all("head_agreement" in r for r in recs):
        out["head_agreement_curve"] = _curve(recs, "head_agreement", interactions + 1)
        out["head_agreement@5"] = out["head_agreement_curve"][min(5, interactions)]
    for key in ("aji0", "ajiK", "pq0", "pqK", "ajiK_own"):
        out[key] = _mean([r.get(key) for r in recs])
    out["sec_curve"] = [
        _mean([r["sec"][k] for r in recs if len(r["sec"]) > k]) for k in range(interactions)
    ]
    return out


def aggregate(images: list[dict], interactions: int, cap: int) -> dict:
    """Summarise a run per method and group, and its fixed-scribbles mode.

    Groups are the sources, the modalities of :data:`groups.MODALITY_SOURCES`
    (``dsb2018/fluo`` etc.; see :func:`groups.image_groups`) and ``all``.

    Returns
    -------
    dict
        ``{"methods": {name: {group: figures}}, "fixed": {name: {group: {"dice@k": ...}}}}``
        (figures from :func:`summarise`; a method appears in a group when it ran on at least
        one of its images).
    """
    groups = group_names(images)
    memberships = [image_groups(im) for im in images]
    names: list[str] = []
    for im in images:
        names += [m for m in im["methods"] if m not in names]
    methods: dict = {}
    fixed: dict = {}
    for name in names:
        methods[name] = {}
        fixed[name] = {}
        for group_name in groups:
            group = [im for im, gs in zip(images, memberships, strict=True) if group_name in gs]
            recs = [im["methods"][name] for im in group if name in im["methods"]]
            if recs:
                methods[name][group_name] = summarise(recs, interactions, cap)
            fx = [im["fixed"] for im in group if name in im.get("fixed", {}).get("methods", {})]
            if fx:
                ks = fx[0]["k"]
                fixed[name][group_name] = {
                    f"dice@{k}": _mean([f["methods"][name]["dice"][i] for f in fx])
                    for i, k in enumerate(ks)
                }
    return {"methods": methods, "fixed": fixed}
