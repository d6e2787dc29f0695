"""Train the built-in HoVer-Net models on procedurally generated nuclei only.

Reproducible: every batch is a pure function of (model seed, stage, step), the network is
seeded with ``torch.manual_seed``, the architecture is pinned in :data:`ARCHITECTURE`, and
the shipped weights come from a fixed number of steps (a wall-clock limit only guards
against a machine that is much slower than expected; a run cut short by it is marked
``complete: false`` in the weights' metadata). Runs use one CPU thread and bf16 autocast.

The shipped weights come from stages 1 and 2 below (``MODEL`` = hovernet-fluo or
hovernet-he); hovernet-he adds a stage 3 (``--stage 3 --lr 5e-4``, from stage 2's state dict)::

    # stage 1: 700 steps from scratch, lr 2e-3
    python scripts/train_builtin.py --model MODEL --out /tmp/s1 --scratch /tmp/s1
    # stage 2: 450 steps from stage 1, lr 1e-3, HV losses weighted 2x, new scenes
    python scripts/train_builtin.py --model MODEL --stage 2 --steps 450 --lr 1e-3 \
        --hv-weight 2 --init-from /tmp/s1/MODEL-stage1-step700.pt \
        --out src/napari_scribble_refine/weights/ --scratch /tmp/s2
    # held-out synthetic metrics of existing weights
    python scripts/train_builtin.py --model MODEL --eval-only \
        --weights src/napari_scribble_refine/weights/MODEL.safetensors

Losses follow HoVer-Net (Graham et al. 2019): NP cross-entropy + Dice, HV MSE + MSGE
(gradient MSE inside nuclei), TP cross-entropy + Dice.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]

from napari_scribble_refine.core.models._prepare import (  # noqa: E402
    PERCENTILES,
    normalise_array,
)
from napari_scribble_refine.core.models.hovernet import (  # noqa: E402
    HoVerNet,
    HoVerNetConfig,
    count_parameters,
)
from napari_scribble_refine.evaluation.metrics import (  # noqa: E402
    aggregated_jaccard_index,
    dice,
    panoptic_quality,
    per_type_f1,
)
from napari_scribble_refine.synthetic.scenes import (  # noqa: E402
    FLUO_CLASSES,
    HE_CLASSES,
    synthetic_fluorescence,
    synthetic_he,
)
from napari_scribble_refine.synthetic.shapes import hv_targets  # noqa: E402

RECIPES = {
    "hovernet-fluo": {
        "generator": "synthetic_fluorescence",
        "in_channels": 1,
        "nr_types": None,
        "class_names": FLUO_CLASSES,
        "seed": 1001,
        "description": "HoVer-Net (small) for greyscale nuclei: fluorescence and brightfield grey",
    },
    "hovernet-he": {
        "generator": "synthetic_he",
        "in_channels": 3,
        "nr_types": len(HE_CLASSES),
        "class_names": HE_CLASSES,
        "seed": 2002,
        "description": "HoVer-Net (small) for H&E nuclei with types epithelial/lymphocyte/stromal",
    },
}
NORMALISE = "percentile"
NORMALISATION = {"kind": "percentile", "low": PERCENTILES[0], "high": PERCENTILES[1]}
EVAL_SEED0 = 10_000_000  # held-out synthetic seeds start here; training seeds stay below
GENERATORS = {"synthetic_fluorescence": synthetic_fluorescence, "synthetic_he": synthetic_he}


# ----------------------------------------------------------------------------- data
def make_example(recipe: dict, seed: int, crop: int) -> dict[str, np.ndarray]:
    """One augmented training example, a pure function of ``seed``.

    Parameters
    ----------
    recipe : dict
        Entry of :data:`RECIPES`.
    seed : int
        Sample seed (generator scene and augmentation).
    crop : int
        Output size (square).

    Returns
    -------
    dict
        ``image`` float32 (C, crop, crop), ``np`` int64, ``hv`` float32 (2, ...),
        ``tp`` int64 (crop, crop).
    """
    rng = np.random.default_rng([seed, 12345])
    zoom = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    size = max(64, int(round(crop / zoom)))
    sample = GENERATORS[recipe["generator"]]((size, size), seed=seed)
    image = normalise_array(sample.image, NORMALISE)
    inst, types = sample.instances, sample.types
    if size != crop:
        f = crop / size
        if image.ndim == 2:
            image = ndi.zoom(image, f, order=1)
        else:
            image = ndi.zoom(image, (f, f, 1), order=1)
        inst = ndi.zoom(inst, f, order=0)
        types = ndi.zoom(types, f, order=0)
        image, inst, types = image[:crop, :crop], inst[:crop, :crop], types[:crop, :crop]
    k = int(rng.integers(4))
    image, inst, types = (np.rot90(a, k, axes=(0, 1)) for a in (image, inst, types))
    if rng.random() < 0.5:
        image, inst, types = image[:, ::-1], inst[:, ::-1], types[:, ::-1]
    image = np.ascontiguousarray(image, np.float32)
    inst = np.ascontiguousarray(inst)
    types = np.ascontiguousarray(types)
    # Intensity and contrast jitter in the normalised space.
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    image = np.sign(image) * np.abs(image) ** gamma
    gain = rng.uniform(0.75, 1.3, size=(1,) if image.ndim == 2 else (1, 1, 3))
    if image.ndim == 3:
        gain = gain * rng.uniform(0.9, 1.1)
    image = image * gain.astype(np.float32) + np.float32(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.3:
        image = image + rng.normal(0, rng.uniform(0.01, 0.05), image.shape).astype(np.float32)
    chw = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    return {
        "image": np.ascontiguousarray(chw, np.float32),
        "np": (inst > 0).astype(np.int64),
        "hv": hv_targets(inst),
        "tp": types.astype(np.int64),
    }


class SyntheticBatches(torch.utils.data.Dataset):
    """Batch ``i`` of a training run: seeds ``seed0 + i * batch + j``."""

    def __init__(self, recipe: dict, steps: int, batch: int, crop: int, stage: int = 1) -> None:
        self.recipe, self.steps, self.batch, self.crop = recipe, steps, batch, crop
        self.offset = (stage - 1) * 500_000  # later stages see new scenes

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        seed0 = self.recipe["seed"] * 1_000_000 + self.offset + step * self.batch
        items = [make_example(self.recipe, seed0 + j, self.crop) for j in range(self.batch)]
        return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}


# ----------------------------------------------------------------------------- losses
def _sobel(size: int = 5) -> torch.Tensor:
    r = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float32)
    v, h = torch.meshgrid(r, r, indexing="ij")  # v along rows (y), h along columns (x)
    denom = h * h + v * v + 1e-15
    return torch.stack([h / denom, v / denom])[:, None]  # [2, 1, k, k]: d/dx, d/dy


SOBEL = _sobel()


def hv_gradients(hv: torch.Tensor) -> torch.Tensor:
    """d(h)/dx and d(v)/dy of an HV map [N, 2, H, W] (HoVer-Net's MSGE)."""
    return F.conv2d(hv, SOBEL.to(hv), padding=SOBEL.shape[-1] // 2, groups=2)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Soft Dice loss summed over classes."""
    prob = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(prob)
    inter = (prob * onehot).sum((0, 2, 3))
    union = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return (1.0 - (2 * inter + eps) / (union + eps)).sum()


def hovernet_loss(
    out: dict, batch: dict, hv_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the HoVer-Net losses and their parts."""
    np_logits = out["np"].float()
    hv = out["hv"].float()
    parts = {
        "np_ce": F.cross_entropy(np_logits, batch["np"]),
        "np_dice": dice_loss(np_logits, batch["np"]),
        "hv_mse": F.mse_loss(hv, batch["hv"]),
    }
    focus = batch["np"][:, None].float().expand(-1, 2, -1, -1)
    grad_err = (hv_gradients(hv) - hv_gradients(batch["hv"])) ** 2
    parts["hv_msge"] = (grad_err * focus).sum() / (focus.sum() + 1e-8)
    if "tp" in out:
        # type pixels of -100 (torch's ignore_index) do not count; images that are all
        # ignored (untyped sources) stay out of the Dice term
        tp_logits = out["tp"].float()
        parts["tp_ce"] = F.cross_entropy(tp_logits, batch["tp"])
        typed = (batch["tp"] != -100).all(-1).all(-1)
        if typed.all():
            parts["tp_dice"] = dice_loss(tp_logits, batch["tp"])
        elif typed.any():
            parts["tp_dice"] = dice_loss(tp_logits[typed], batch["tp"][typed])
    weights = {"hv_mse": hv_weight, "hv_msge": hv_weight}
    total = sum(weights.get(k, 1.0) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ----------------------------------------------------------------------------- evaluation
def predict_maps(net: HoVerNet, image: np.ndarray) -> dict[str, np.ndarray]:
    """Network maps of one image: nucleus probability, HV, type argmax."""
    x = normalise_array(image, NORMALISE)
    x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)
    h, w = x.shape[-2:]
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    t = F.pad(t, (0, (-w) % 8, 0, (-h) % 8), mode="reflect")
    with torch.inference_mode():
        out = net(t)
    maps = {
        "np": out["np"].softmax(1)[0, 1, :h, :w].numpy(),
        "hv": out["hv"][0, :, :h, :w].numpy(),
    }
    if "tp" in out:
        maps["tp"] = out["tp"][0, :, :h, :w].argmax(0).numpy().astype(np.uint8)
    return maps


def maps_to_instances(maps: dict[str, np.ndarray]) -> np.ndarray:
    """HoVer-Net post-processing (core.hovernet_postprocess) of predicted maps."""
    from napari_scribble_refine.core.hovernet_postprocess import hv_instances

    return np.asarray(hv_instances(maps["np"], maps["hv"]))


def evaluate_synthetic(net: HoVerNet, recipe: dict, n: int = 16, size: int = 256) -> dict:
    """Metrics on held-out synthetic images (seeds from :data:`EVAL_SEED0`)."""
    net.eval()
    scores: dict[str, list[float]] = {"dice": [], "aji": [], "pq": []}
    f1s: dict[int, list[float]] = {}
    for i in range(n):
        sample = GENERATORS[recipe["generator"]]((size, size), seed=EVAL_SEED0 + i)
        maps = predict_maps(net, sample.image)
        inst = maps_to_instances(maps)
        scores["dice"].append(dice(inst > 0, sample.instances > 0))
        scores["aji"].append(aggregated_jaccard_index(inst, sample.instances))
        scores["pq"].append(panoptic_quality(inst, sample.instances)["pq"])
        if "tp" in maps:
            res = per_type_f1(inst, maps["tp"], sample.instances, sample.types, type_ids=[1, 2, 3])
            for t, v in res["f1"].items():
                if not np.isnan(v):
                    f1s.setdefault(t, []).append(v)
    result = {k: round(float(np.mean(v)), 4) for k, v in scores.items()}
    if f1s:
        result["type_f1"] = {
            recipe["class_names"][t]: round(float(np.mean(v)), 4) for t, v in f1s.items()
        }
    result["n_images"] = n
    return result


# ----------------------------------------------------------------------------- saving
def save_weights(net: HoVerNet, path: Path, recipe: dict, meta: dict) -> None:
    """Write safetensors weights with the config, classes and normalisation in the metadata."""
    from napari_scribble_refine.core.models.hovernet_checkpoint import save_hovernet_safetensors

    save_hovernet_safetensors(
        net,
        path,
        class_names=list(recipe["class_names"]),
        metadata=meta,
        normalisation=NORMALISATION,
    )


ARCHITECTURE = {
    "mode": "fast",
    "padding": "same",
    "stem_channels": 24,
    "stem_kernel": 5,
    "block_mid": (16, 32, 64, 128),
    "block_out": (32, 64, 128, 256),
    "block_units": (1, 2, 2, 2),
    "decoder_channels": (64, 48, 32),
    "dense_units": (4, 2),
    "dense_bottleneck": 32,
    "dense_growth": 16,
    "dense_groups": 4,
    "kernel_size": 3,
    "input_scale": 1.0,
}
"""The shipped models' architecture, pinned here (not taken from ``HoVerNetConfig.small``,
whose defaults may change) so that a re-run builds the same network."""


def build_network(recipe: dict) -> HoVerNet:
    """Build the small HoVer-Net of a recipe."""
    config = HoVerNetConfig(
        nr_types=recipe["nr_types"], in_channels=recipe["in_channels"], **ARCHITECTURE
    )
    return HoVerNet(config)


# ----------------------------------------------------------------------------- main
def make_optimiser(
    net: torch.nn.Module, lr: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (weight decay 1e-4), linear warm-up over 50 steps, cosine decay to 5 %."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = min(50, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return float(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def train(args: argparse.Namespace) -> None:
    """Run one training and write the weights (see the module docstring)."""
    recipe = RECIPES[args.model]
    torch.set_num_threads(args.threads)
    torch.manual_seed(recipe["seed"] + args.stage - 1)
    net = build_network(recipe)
    if args.init_from:
        # A later stage starts from the raw state dict of the previous stage.
        net.load_state_dict(torch.load(args.init_from, weights_only=True)["state_dict"])
        print(f"stage {args.stage}: initialised from {args.init_from}", flush=True)
    print(f"{args.model}: {count_parameters(net):,} parameters", flush=True)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt, sched = make_optimiser(net, args.lr, args.steps)
    data = SyntheticBatches(recipe, args.steps, args.batch, args.crop, args.stage)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,
        shuffle=False,
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
    )
    t0 = time.perf_counter()
    running: dict[str, float] = {}
    done = 0
    net.train()
    for step, batch in enumerate(loader):
        x = batch["image"]
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = net(x)
        loss, parts = hovernet_loss(out, batch, args.hv_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + v
        if done % args.log_every == 0 or done == args.steps:
            elapsed = time.perf_counter() - t0
            avg = " ".join(f"{k}={v / args.log_every:.4f}" for k, v in running.items())
            print(
                f"step {done}/{args.steps} {elapsed:7.1f}s ({elapsed / done:.2f} s/step) "
                f"lr={sched.get_last_lr()[0]:.2e} {avg}",
                flush=True,
            )
            running = {}
        if time.perf_counter() - t0 > args.max_minutes * 60:
            print(f"WARNING: wall-clock limit reached after {done} steps", flush=True)
            break
    train_s = time.perf_counter() - t0
    net = net.to(memory_format=torch.contiguous_format).eval()
    scratch = Path(args.scratch) / f"{args.model}-stage{args.stage}-step{done}.pt"
    torch.save({"state_dict": net.state_dict(), "steps": done, "train_s": train_s}, scratch)
    print(f"raw state dict saved to {scratch}", flush=True)
    finish(net, recipe, args, done, train_s)


def finish(
    net: HoVerNet, recipe: dict, args: argparse.Namespace, done: int, train_s: float
) -> None:
    """Evaluate on held-out synthetic images and write the safetensors weights."""
    metrics = evaluate_synthetic(net, recipe)
    meta = {
        "name": args.model,
        "description": recipe["description"],
        "training": json.dumps(
            {
                "data": f"{recipe['generator']} (napari_scribble_refine.synthetic.scenes), "
                f"seeds {recipe['seed']}*1e6 + step*batch + j; no real images",
                "stage": args.stage,
                "init_from": Path(args.init_from).name if args.init_from else None,
                "hv_weight": args.hv_weight,
                "steps": done,
                "steps_planned": args.steps,
                "complete": done == args.steps,
                "batch": args.batch,
                "crop": args.crop,
                "lr": args.lr,
                "bf16": args.bf16,
                "threads": args.threads,
                "train_seconds": round(train_s),
                "torch": torch.__version__,
            }
        ),
        "synthetic_metrics": json.dumps(metrics),
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.model}.safetensors"
    save_weights(net, path, recipe, meta)
    print(
        json.dumps(
            {
                "model": args.model,
                "weights": str(path),
                "steps": done,
                "train_seconds": round(train_s),
                "synthetic": metrics,
            },
            indent=2,
        ),
        flush=True,
    )


def evaluate_only(args: argparse.Namespace) -> None:
    """Print the held-out synthetic metrics of existing weights."""
    from napari_scribble_refine.core.models.hovernet_checkpoint import load_hovernet_safetensors

    torch.set_num_threads(args.threads)
    net = load_hovernet_safetensors(args.weights).model
    metrics = evaluate_synthetic(net.eval(), RECIPES[args.model])
    print(json.dumps({"model": args.model, "synthetic": metrics}, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(RECIPES), required=True)
    p.add_argument("--out", default=str(ROOT / "src/napari_scribble_refine/weights"))
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=144)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--stage", type=int, default=1, help="training stage (new data seeds)")
    p.add_argument("--init-from", help="raw state dict (.pt) of the previous stage")
    p.add_argument("--hv-weight", type=float, default=1.0, help="weight of the HV losses")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--max-minutes", type=float, default=75.0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--weights", help="weights to evaluate with --eval-only")
    p.add_argument("--scratch", default="/tmp", help="where the raw state dict is kept")
    p.add_argument("--from-pt", help="finish (evaluate + save) from a raw state dict")
    args = p.parse_args(argv)
    if args.from_pt:
        recipe = RECIPES[args.model]
        torch.set_num_threads(args.threads)
        raw = torch.load(args.from_pt, weights_only=True)
        net = build_network(recipe)
        net.load_state_dict(raw["state_dict"])
        finish(net.eval(), recipe, args, int(raw["steps"]), float(raw["train_s"]))
    elif args.eval_only:
        evaluate_only(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
