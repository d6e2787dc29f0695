"""Re-train a built-in model from scratch and compare it with the shipped weights.

Runs every stage of the shipped recipe (the commands in the model card) into ``--out``,
then prints, as JSON, the held-out synthetic metrics of the new and the shipped weights,
their differences, the largest absolute weight difference, and whether every metric is
within the card's tolerance (±0.02 Dice, ±0.03 AJI / PQ, ±0.05 per-type F1). Exits 1 when a
metric is outside it::

    python scripts/reproduce_builtin.py --model hovernet-fluo --out /tmp/repro-fluo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_builtin  # noqa: E402

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


def reproduce(model: str, out: Path) -> dict:
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
    new_path = out / f"stage{len(STAGES[model])}" / f"{model}.safetensors"
    shipped_path = SHIPPED / f"{model}.safetensors"
    new, shipped = _flat(_synthetic_metrics(new_path)), _flat(_synthetic_metrics(shipped_path))
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
    args = p.parse_args(argv)
    report = reproduce(args.model, args.out)
    print(json.dumps(report, indent=2))
    return 0 if report["within_tolerance"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
