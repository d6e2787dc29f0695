"""Train the built-in HoVer-Net models on real annotated nuclei (``../shared/data/train``).

The real-data stage starts from the synthetic-only weights of :mod:`train_builtin` (stages 1
and 2, reproducible bit for bit) and trains every layer on real images:

* ``hovernet-fluo`` (greyscale): DSB2018 fluorescence, brightfield grey and colour histology
  turned grey; every batch of 8 holds 5 fluorescence, 2 brightfield grey and 1 histology
  crop, so BatchNorm sees every modality in every step.
* ``hovernet-he`` (RGB, CoNSeP's four types): every batch holds 6 CoNSeP crops (with types)
  and 2 DSB colour histology crops (nucleus only; their type loss is ignored).

Augmentation: random scale (nuclei vary 30-fold in area), crops, flips and rot90; grey
images get gamma, gain, inversion, noise, blur and JPEG; H&E images get haematoxylin /
eosin / DAB jitter, brightness, contrast, saturation, blur and JPEG. Every batch is a pure
function of (seed, step), so a run resumes exactly from its last checkpoint
(``--scratch``). The validation split (``benchmarks/splits/validation.txt``, whole CoNSeP
tiles and a fixed share of each DSB modality) never enters training; it picks the best
checkpoint and is where the refinement settings are tuned. ``../shared/data/nuclei`` is
never read here.

Usage (the shipped weights)::

    python scripts/train_builtin.py ...            # stages 1-2, synthetic (see its docstring)
    python scripts/train_real.py --model hovernet-fluo \
        --init-from src/napari_scribble_refine/weights/hovernet-fluo.safetensors \
        --scratch /tmp/real-fluo --out src/napari_scribble_refine/weights
    python scripts/train_real.py --model hovernet-he --init-from ... --scratch /tmp/real-he

Run it in the background (``nohup ... &``); rerunning the same command resumes. ``--device
cuda`` trains on a GPU with the same code.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]

from train_builtin import ARCHITECTURE, NORMALISATION, hovernet_loss, make_optimiser  # noqa: E402

from napari_scribble_refine.core.hovernet_postprocess import hv_instances  # noqa: E402
from napari_scribble_refine.core.models._prepare import normalise_array  # noqa: E402
from napari_scribble_refine.core.models.hovernet import HoVerNet, HoVerNetConfig  # noqa: E402
from napari_scribble_refine.core.models.hovernet_checkpoint import (  # noqa: E402
    load_hovernet_safetensors,
    save_hovernet_safetensors,
)
from napari_scribble_refine.evaluation.metrics import aggregated_jaccard_index, dice  # noqa: E402
from napari_scribble_refine.synthetic.shapes import hv_targets  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "train"
SPLIT_FILE = ROOT / "benchmarks" / "splits" / "validation.txt"
CONSEP_CLASSES = ["background", "other", "inflammatory", "epithelial", "spindle"]
RECIPES = {
    "hovernet-fluo": {
        "rgb": False,
        "classes": ["background", "nucleus"],
        "mix": {"fluo": 5, "bfgray": 2, "histo": 1},
        "seed": 3003,
        "description": "HoVer-Net (small) for greyscale nuclei: fluorescence and brightfield "
        "grey; trained on DSB2018 (real) after synthetic pre-training",
    },
    "hovernet-he": {
        "rgb": True,
        "classes": CONSEP_CLASSES,
        "mix": {"consep": 6, "histo": 2},
        "seed": 4004,
        "description": "HoVer-Net (small) for H&E nuclei with CoNSeP's types other / "
        "inflammatory / epithelial / spindle-shaped; trained on CoNSeP and DSB2018 histology",
    },
}
IGNORE = -100
"""Type target of nucleus pixels without a type (torch's ignore_index)."""


# ----------------------------------------------------------------------------- split
def read_manifest(data: Path = DATA) -> list[dict[str, str]]:
    """Rows of the training set's ``manifest.csv``."""
    with (Path(data) / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


def group_of(row: dict[str, str]) -> str:
    """``fluo``, ``bfgray``, ``histo`` (DSB) or ``consep``."""
    return "consep" if row["source"] == "consep" else row["modality"]


def make_split(rows: list[dict[str, str]], seed: int = 20261201) -> list[str]:
    """Choose the validation sample ids.

    40 fluorescence, 12 histology and 3 brightfield grey DSB images, and every patch of 4
    CoNSeP tiles (whole tiles: the patches of a tile share a slide).
    """
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for group, n in (("fluo", 40), ("histo", 12), ("bfgray", 3)):
        ids = sorted(r["sample_id"] for r in rows if group_of(r) == group)
        chosen += sorted(rng.choice(ids, size=n, replace=False).tolist())
    tiles = sorted({r["sample_id"].rsplit("_", 1)[0] for r in rows if r["source"] == "consep"})
    held = set(rng.choice(tiles, size=4, replace=False).tolist())
    chosen += sorted(
        r["sample_id"]
        for r in rows
        if r["source"] == "consep" and r["sample_id"].rsplit("_", 1)[0] in held
    )
    return chosen


def validation_ids(data: Path = DATA) -> set[str]:
    """Read the committed validation split (written by :func:`make_split` if missing)."""
    if not SPLIT_FILE.is_file():
        SPLIT_FILE.parent.mkdir(parents=True, exist_ok=True)
        ids = make_split(read_manifest(data))
        header = (
            "# Validation split of ../shared/data/train (sample ids): never trained on;\n"
            "# picks checkpoints and tunes refinement settings. Made by "
            "scripts/train_real.py:make_split.\n"
        )
        SPLIT_FILE.write_text(header + "\n".join(ids) + "\n")
    lines = SPLIT_FILE.read_text().splitlines()
    return {s.strip() for s in lines if s.strip() and not s.startswith("#")}


# ----------------------------------------------------------------------------- data
@dataclass
class Item:
    """One training image in memory."""

    sample_id: str
    group: str
    image: np.ndarray  # (Y, X) or (Y, X, 3) uint8
    labels: np.ndarray  # (Y, X) int32
    types: np.ndarray | None  # (Y, X) uint8 or None


def load_item(row: dict[str, str], data: Path, rgb: bool) -> Item:
    """Read one sample, grey or RGB as the model needs."""
    folder = Path(data) / row["source"] / row["sample_id"]
    image = tifffile.imread(folder / "image.tif")
    if image.ndim == 3:
        image = image[..., :3]
        if not rgb:
            image = np.round(image @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    elif rgb:
        image = np.repeat(image[..., None], 3, axis=-1)
    labels = tifffile.imread(folder / "labels.tif").astype(np.int32)
    types = None
    if (folder / "types.tif").is_file():
        types = tifffile.imread(folder / "types.tif").astype(np.uint8)
    return Item(row["sample_id"], group_of(row), image, labels, types)


def load_items(recipe: dict, data: Path, split: str) -> dict[str, list[Item]]:
    """Training (``split="train"``) or validation images per group of the recipe's mix."""
    held = validation_ids(data)
    out: dict[str, list[Item]] = {g: [] for g in recipe["mix"]}
    for row in read_manifest(data):
        group = group_of(row)
        if group not in out or (row["sample_id"] in held) != (split == "val"):
            continue
        out[group].append(load_item(row, data, recipe["rgb"]))
    return out


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


STAIN = {
    "mild": {"hed_scale": 0.25, "hed_shift": 0.04, "saturation": 0.3, "grey": 0.0, "gamma": 0.0},
    "strong": {"hed_scale": 0.45, "hed_shift": 0.08, "saturation": 0.6, "grey": 0.2, "gamma": 0.3},
}
"""Colour augmentation of H&E crops: ``mild`` (the first real-data stage) and ``strong``
(the second: stains of other labs, pale and bluish slides, grey renderings)."""


def augment_he(image: np.ndarray, rng: np.random.Generator, stain: str = "mild") -> np.ndarray:
    """Stain (H, E, DAB), brightness, contrast and saturation jitter of an RGB uint8 crop.

    ``strong`` adds per-channel gamma and, now and then, a grey rendering.
    """
    k = STAIN[stain]
    rgb = np.maximum(image.astype(np.float32), 1.0) / 255.0
    od = -np.log(rgb)
    hed = od @ _HED_FROM_RGB
    hed = hed * rng.uniform(1 - k["hed_scale"], 1 + k["hed_scale"], 3)
    hed = hed + rng.uniform(-k["hed_shift"], k["hed_shift"], 3)
    rgb = np.clip(np.exp(-(hed @ _RGB_FROM_HED)), 0, 1)
    if rng.random() < k["gamma"]:
        rgb = rgb ** np.exp(rng.uniform(np.log(0.7), np.log(1.4), 3))
    rgb = rgb * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)  # contrast, brightness
    grey = rgb.mean(-1, keepdims=True)
    if rng.random() < k["grey"]:
        rgb = np.repeat(grey, 3, axis=-1)
    else:
        rgb = grey + (rgb - grey) * rng.uniform(1 - k["saturation"], 1 + k["saturation"])
    return np.clip(rgb * 255, 0, 255).astype(np.uint8)


def augment_grey(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, gain, offset and inversion of a grey uint8 crop."""
    x = image.astype(np.float32) / 255.0
    x = x ** float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    x = x * rng.uniform(0.6, 1.4) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.2:
        x = 1.0 - x
    return np.clip(x * 255, 0, 255).astype(np.uint8)


def make_example(
    item: Item, rng: np.random.Generator, crop: int, rgb: bool, stain: str = "mild"
) -> dict:
    """One augmented crop of an image: input, NP, HV and TP targets."""
    zoom = float(np.exp(rng.uniform(np.log(0.55), np.log(1.8))))
    if item.group == "consep":  # 40x: real H&E also comes at 20x
        zoom = float(np.exp(rng.uniform(np.log(0.5), np.log(1.25))))
    size = int(np.ceil(crop / zoom))
    h, w = item.labels.shape
    y0 = int(rng.integers(0, max(1, h - size + 1)))
    x0 = int(rng.integers(0, max(1, w - size + 1)))
    sl = (slice(y0, y0 + size), slice(x0, x0 + size))
    image, labels = item.image[sl], item.labels[sl]
    types = item.types[sl] if item.types is not None else None
    pad = ((0, size - labels.shape[0]), (0, size - labels.shape[1]))
    if any(p[1] for p in pad):
        image = np.pad(image, pad + ((0, 0),) * (image.ndim - 2), mode="reflect")
        labels = np.pad(labels, pad, mode="constant")  # padded nuclei are not annotated
        types = np.pad(types, pad, mode="constant") if types is not None else None
    f = crop / size
    image = ndi.zoom(image, (f, f) + (1,) * (image.ndim - 2), order=1)[:crop, :crop]
    labels = ndi.zoom(labels, f, order=0)[:crop, :crop]
    types = ndi.zoom(types, f, order=0)[:crop, :crop] if types is not None else None
    k = int(rng.integers(4))
    flip = rng.random() < 0.5
    arrays = [image, labels] + ([types] if types is not None else [])
    arrays = [np.rot90(a, k, axes=(0, 1)) for a in arrays]
    if flip:
        arrays = [a[:, ::-1] for a in arrays]
    image, labels = (np.ascontiguousarray(a) for a in arrays[:2])
    types = np.ascontiguousarray(arrays[2]) if types is not None else None
    image = augment_he(image, rng, stain) if rgb else augment_grey(image, rng)
    if rng.random() < 0.2:
        sigma = rng.uniform(0.4, 1.2)
        image = ndi.gaussian_filter(image, (sigma, sigma) + (0,) * (image.ndim - 2))
    if rng.random() < 0.2:
        image = _jpeg(image, int(rng.integers(40, 95)))
    x = normalise_array(image, "percentile")
    if not rgb and rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.01, 0.05), x.shape).astype(np.float32)
    chw = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)
    if types is None:
        tp = np.where(labels > 0, IGNORE, 0)
    else:
        tp = types.astype(np.int64)
    return {
        "image": np.ascontiguousarray(chw, np.float32),
        "np": (labels > 0).astype(np.int64),
        "hv": hv_targets(labels),
        "tp": tp.astype(np.int64),
    }


def make_batch(
    items: dict[str, list[Item]],
    recipe: dict,
    seed: int,
    step: int,
    crop: int,
    stain: str = "mild",
) -> dict[str, torch.Tensor]:
    """Batch ``step``: the recipe's mix of groups, a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    examples = []
    for group, n in recipe["mix"].items():
        pool = items[group]
        for _ in range(n):
            item = pool[int(rng.integers(len(pool)))]
            examples.append(make_example(item, rng, crop, recipe["rgb"], stain))
    return {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in examples[0]}


# ----------------------------------------------------------------------------- model
def build_network(recipe: dict, init_from: str | None) -> HoVerNet:
    """Build the shipped architecture, initialised from synthetic-only weights where shapes fit."""
    nr_types = len(recipe["classes"]) if len(recipe["classes"]) > 2 else None
    config = HoVerNetConfig(
        nr_types=nr_types, in_channels=3 if recipe["rgb"] else 1, **ARCHITECTURE
    )
    net = HoVerNet(config)
    if init_from:
        state = load_hovernet_safetensors(init_from).model.state_dict()
        own = net.state_dict()
        fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        net.load_state_dict(fits, strict=False)
        print(f"initialised {len(fits)}/{len(own)} tensors from {init_from}", flush=True)
    return net


# ----------------------------------------------------------------------------- validation
def validate(net: HoVerNet, items: dict[str, list[Item]], device: torch.device) -> dict:
    """Mean foreground Dice and AJI per group of the validation images (whole images)."""
    net.eval()
    scores: dict[str, dict[str, list[float]]] = {}
    with torch.inference_mode():
        for group, pool in items.items():
            for item in pool:
                x = normalise_array(item.image, "percentile")
                x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)
                h, w = x.shape[-2:]
                t = torch.from_numpy(np.ascontiguousarray(x))[None].to(device)
                t = F.pad(t, (0, (-w) % 8, 0, (-h) % 8), mode="reflect")
                out = net(t)
                prob = out["np"].float().softmax(1)[0, 1, :h, :w].cpu().numpy()
                hv = out["hv"].float()[0, :, :h, :w].cpu().numpy()
                inst = np.asarray(hv_instances(prob, hv))
                s = scores.setdefault(group, {"dice": [], "aji": []})
                s["dice"].append(dice(inst > 0, item.labels > 0))
                s["aji"].append(aggregated_jaccard_index(inst, item.labels))
    net.train()
    res = {g: {k: round(float(np.mean(v)), 4) for k, v in s.items()} for g, s in scores.items()}
    res["score"] = round(float(np.mean([r["dice"] + r["aji"] for r in res.values()])), 4)
    return res


# ----------------------------------------------------------------------------- main
def train(args: argparse.Namespace) -> None:
    """Train (or resume) and write the best checkpoint's weights."""
    recipe = RECIPES[args.model]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(recipe["seed"])
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    train_items = load_items(recipe, args.data, "train")
    val_items = load_items(recipe, args.data, "val")
    val_items = {g: pool[: args.val_per_group] for g, pool in val_items.items()}
    print(
        "train:", {g: len(p) for g, p in train_items.items()},
        "validation:", {g: len(p) for g, p in val_items.items()}, flush=True,
    )  # fmt: skip
    net = build_network(recipe, args.init_from).to(device)
    opt, sched = make_optimiser(net, args.lr, args.steps)
    state_path = scratch / f"{args.model}-last.pt"
    start, history, best, train_s = 0, [], None, 0.0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True, map_location=device)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, history, best = state["step"], state["history"], state["best"]
        train_s = state["train_s"]
        print(f"resumed at step {start}", flush=True)
    autocast = device.type == "cuda" or args.bf16
    t0 = time.perf_counter() - train_s
    running: dict[str, float] = {}
    net.train()
    for step in range(start, args.steps):
        batch = make_batch(
            train_items, recipe, recipe["seed"] + args.stage - 1, step, args.crop, args.stain
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = net(batch["image"])
        loss, parts = hovernet_loss(out, batch, hv_weight=2.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + v / args.log_every
        if done % args.log_every == 0:
            elapsed = time.perf_counter() - t0
            avg = " ".join(f"{k}={v:.4f}" for k, v in running.items())
            print(f"step {done}/{args.steps} {elapsed:7.0f}s {avg}", flush=True)
            running = {}
        if done % args.val_every == 0 or done == args.steps:
            val = validate(net, val_items, device)
            val["step"] = done
            history.append(val)
            print("validation", json.dumps(val), flush=True)
            if best is None or val["score"] > best["score"]:
                best = val
                torch.save(net.state_dict(), scratch / f"{args.model}-best.pt")
            torch.save(
                {
                    "net": net.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "step": done,
                    # plain floats, so that a resume reads it with weights_only=True
                    "history": json.loads(json.dumps(history)),
                    "best": json.loads(json.dumps(best)), "train_s": time.perf_counter() - t0,
                },
                state_path,
            )  # fmt: skip
        if args.stop_after is not None and done >= args.stop_after:
            print(f"stopped after step {done} (--stop-after); rerun to resume", flush=True)
            return
    train_s = time.perf_counter() - t0
    net.load_state_dict(torch.load(scratch / f"{args.model}-best.pt", weights_only=True))
    finish(net.cpu().eval(), recipe, args, history, best, train_s)


def finish(
    net: HoVerNet, recipe: dict, args: argparse.Namespace, history: list, best: dict, train_s: float
) -> None:
    """Write the best checkpoint as safetensors with its recipe and validation curve."""
    meta = {
        "name": args.model,
        "description": recipe["description"],
        "training": json.dumps(
            {
                "data": "../shared/data/train less benchmarks/splits/validation.txt: "
                + ", ".join(recipe["mix"])
                + (
                    " (CoNSeP: research use only, cite Graham et al. 2019; DSB2018: CC0)"
                    if recipe["rgb"]
                    else " (DSB2018, CC0)"
                ),
                "mix": recipe["mix"],
                "init_from": Path(args.init_from).name if args.init_from else None,
                "stage": args.stage,
                "stain": args.stain,
                "steps": args.steps,
                "best_step": best["step"],
                "batch": sum(recipe["mix"].values()),
                "crop": args.crop,
                "lr": args.lr,
                "device": args.device,
                "threads": args.threads,
                "train_seconds": round(train_s),
                "torch": torch.__version__,
            }
        ),
        "validation": json.dumps(history),
        "licence": "weights trained on CoNSeP inherit its research-use condition"
        if recipe["rgb"]
        else "CC0 training data (DSB2018)",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.model}.safetensors"
    save_hovernet_safetensors(
        net, path, class_names=list(recipe["classes"]), metadata=meta,
        normalisation=NORMALISATION,
    )  # fmt: skip
    print(json.dumps({"weights": str(path), "best": best, "train_s": round(train_s)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(RECIPES), required=True)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--init-from", help="synthetic-only weights (.safetensors) to start from")
    p.add_argument("--out", default=str(ROOT / "src/napari_scribble_refine/weights"))
    p.add_argument("--scratch", required=True, help="checkpoints; a rerun resumes from here")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--crop", type=int, default=192)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-per-group", type=int, default=16)
    p.add_argument("--stain", choices=sorted(STAIN), default="mild", help="H&E colour jitter")
    p.add_argument("--stage", type=int, default=1, help="real-data stage (new batches)")
    p.add_argument("--stop-after", type=int, help="stop after this step (an interruption)")
    p.add_argument("--split-only", action="store_true", help="write the split and stop")
    args = p.parse_args(argv)
    if args.split_only:
        print(f"{len(validation_ids(args.data))} validation samples in {SPLIT_FILE}")
        return
    train(args)


if __name__ == "__main__":
    main()
