"""Re-train a built-in model from scratch and compare it with the shipped weights.

Runs every stage of the shipped recipe (the commands in the model card) into ``--out``:
the synthetic stages of ``train_builtin.py``, then the real-data stages of
``train_real.py`` (``../shared/data/train``). It then prints, as JSON, the validation
metrics of the new and the shipped weights (the best checkpoint's, on the training set's
validation split), their differences, the largest absolute weight difference, and whether
every metric is within the card's tolerance (±0.02 Dice, ±0.03 AJI). Exits 1 when a metric
is outside it::

    python scripts/reproduce_builtin.py --model hovernet-fluo --out /tmp/repro-fluo

``--synthetic-only`` stops after the synthetic stages and compares their held-out synthetic
metrics with ``--against`` (the synthetic-only weights of an earlier release).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import train_builtin
import train_real
from safetensors import safe_open
from safetensors.torch import load_file

SHIPPED = train_builtin.ROOT / "src/napari_scribble_refine/weights"

#: The shipped recipe: one argument list per stage, ``{prev}`` is the previous stage's file.
STAGES: dict[str, list[list[str]]] = {
    "hovernet-fluo": [
        [],
        ["--stage", "2", "--steps", "450", "--lr", "1e-3", "--hv-weight", "2"],
    ],
    "hovernet-he": [
        [],
        ["--stage", "2", "--steps", "450", "--lr", "1e-3", "--hv-weight", "2"],
        ["--stage", "3", "--steps", "450", "--lr", "5e-4", "--hv-weight", "2"],
    ],
}

#: The real-data stages (``train_real.py``), each from the previous stage's weights.
REAL_STAGES: dict[str, list[list[str]]] = {
    "hovernet-fluo": [
        ["--steps", "1500"],
        ["--steps", "1500", "--lr", "3e-4", "--stage", "2"],
        ["--steps", "1500", "--lr", "2e-4", "--stage", "3"],
        ["--steps", "1500", "--lr", "1.5e-4", "--stage", "4"],
    ],
    "hovernet-he": [
        ["--steps", "1300"],
        ["--steps", "600", "--lr", "5e-4", "--stain", "strong", "--stage", "2",
         "--val-every", "150"],
        ["--steps", "1500", "--lr", "3e-4", "--stain", "strong", "--stage", "3",
         "--val-every", "250"],
    ],
}  # fmt: skip

#: Allowed absolute difference per metric (the model cards' stated tolerance).
TOLERANCE = {"dice": 0.02, "aji": 0.03, "pq": 0.03, "f1": 0.05}


def _tolerance(metric: str) -> float:
    for key, tol in TOLERANCE.items():
        if key in metric.lower():
            return tol
    raise KeyError(f"no tolerance stated for metric {metric!r}")


def _synthetic_metrics(path: Path) -> dict[str, float]:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["synthetic_metrics"])


def _flat(metrics: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        elif isinstance(value, float):
            out[key] = float(value)
    return out


def _validation_metrics(path: Path) -> dict[str, float]:
    """Read the best checkpoint's validation figures from a real-data weights file."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    best = json.loads(meta["training"])["best_step"]
    (entry,) = [e for e in json.loads(meta["validation"]) if e["step"] == best]
    return {k: v for k, v in _flat(entry).items() if k not in ("step", "score")}


def reproduce(
    model: str, out: Path, synthetic_only: bool = False, against: Path | None = None
) -> dict:
    """Train every stage of ``model`` into ``out`` and compare with the shipped weights."""
    prev = None
    for i, extra in enumerate(STAGES[model], start=1):
        stage_dir = out / f"stage{i}"
        if stage_dir.exists() and any(stage_dir.iterdir()):
            raise FileExistsError(f"{stage_dir} is not empty: give --out a new folder")
        stage_dir.mkdir(parents=True)
        argv = ["--model", model, "--out", str(stage_dir), "--scratch", str(stage_dir)]
        argv += ["--max-minutes", "1e9", *extra]  # the recipe is steps, not minutes
        if prev is not None:
            argv += ["--init-from", str(prev)]
        train_builtin.main(argv)
        with safe_open(str(stage_dir / f"{model}.safetensors"), "pt") as f:
            if not json.loads(f.metadata()["training"])["complete"]:
                raise RuntimeError(f"stage {i} stopped before its planned steps")
        (prev,) = stage_dir.glob(f"{model}-stage{i}-step*.pt")
    synthetic = out / f"stage{len(STAGES[model])}" / f"{model}.safetensors"
    if synthetic_only:
        reference = against if against is not None else SHIPPED / f"{model}.safetensors"
        return _compare(model, synthetic, reference, _synthetic_metrics)
    weights = synthetic
    for i, extra in enumerate(REAL_STAGES[model], start=1):
        real_dir = out / f"real{i}"
        real_dir.mkdir(parents=True, exist_ok=False)
        train_real.main(
            ["--model", model, "--init-from", str(weights), "--scratch", str(real_dir),
             "--out", str(real_dir), *extra]
        )  # fmt: skip
        weights = real_dir / f"{model}.safetensors"
    return _compare(model, weights, SHIPPED / f"{model}.safetensors", _validation_metrics)


def _compare(model: str, new_path: Path, shipped_path: Path, metrics) -> dict:  # noqa: ANN001
    new, shipped = _flat(metrics(new_path)), _flat(metrics(shipped_path))
    diffs = {k: round(new[k] - shipped[k], 4) for k in shipped if k in new}
    within = {k: abs(d) <= _tolerance(k) for k, d in diffs.items()}
    a, b = load_file(str(new_path)), load_file(str(shipped_path))
    max_weight_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in b)
    return {
        "model": model,
        "weights": str(new_path),
        "shipped": shipped,
        "reproduced": new,
        "difference": diffs,
        "tolerance": TOLERANCE,
        "within_tolerance": all(within.values()) and set(diffs) == set(shipped),
        "max_abs_weight_difference": max_weight_diff,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(STAGES), required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for the new weights")
    p.add_argument("--synthetic-only", action="store_true", help="stop after the synthetic stages")
    p.add_argument("--against", type=Path, help="weights to compare --synthetic-only with")
    args = p.parse_args(argv)
    report = reproduce(args.model, args.out, args.synthetic_only, args.against)
    print(json.dumps(report, indent=2))
    return 0 if report["within_tolerance"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
