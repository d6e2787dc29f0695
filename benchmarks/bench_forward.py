"""Forward time of the built-in models: float32 against bfloat16 trunk, in one run.

Prints one JSON object with, per built-in model:

* ``seconds_512``: median seconds of the frozen trunk's forward
  (:meth:`HoVerNetModel.features`, what a session computes once per image) on a 512x512
  synthetic image, for ``precision`` ``"float32"`` and ``"bfloat16"``, and their ratio;
* ``default``: the precision ``"auto"`` picks on this CPU, and its seconds;
* ``agreement``: on 16 held-out synthetic scenes (256x256, the training script's
  evaluation seeds), the fraction of pixels whose class is the same in both precisions,
  and the foreground Dice and AJI against the ground truth in each.

Run: ``python benchmarks/bench_forward.py [--threads 2] [--repeats 5]``. Timings move with
the machine's load (printed), so compare the ratio measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from napari_scribble_refine.core.models.hovernet_adapter import HoVerNetModel, cpu_has_native_bf16
from napari_scribble_refine.core.models.registry import load_model
from napari_scribble_refine.evaluation.metrics import aggregated_jaccard_index, dice
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence, synthetic_he

GENERATORS = {"hovernet-fluo": synthetic_fluorescence, "hovernet-he": synthetic_he}
EVAL_SEEDS = range(10_000_000, 10_000_016)
PRECISIONS = ("float32", "bfloat16")


def _time_features(model: HoVerNetModel, image: np.ndarray, repeats: int) -> float:
    with torch.inference_mode():
        model.features(image)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.features(image)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _predict(model: HoVerNetModel, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        feats = model.features(image)
        logits = model.head(feats)
        classes = model.class_map(logits)[0].numpy()
        return classes, np.asarray(model.instances(classes, logits, feats))


def bench_model(name: str, repeats: int) -> dict:
    """Time and compare both precisions for one built-in model."""
    models = {p: load_model(name, precision=p) for p in PRECISIONS}
    generate = GENERATORS[name]
    image = generate((512, 512), seed=7).image
    seconds = {p: round(_time_features(m, image, repeats), 4) for p, m in models.items()}
    same, scores = [], {p: {"dice": [], "aji": []} for p in PRECISIONS}
    for seed in EVAL_SEEDS:
        sample = generate((256, 256), seed=seed)
        out = {p: _predict(m, sample.image) for p, m in models.items()}
        same.append(float(np.mean(out["float32"][0] == out["bfloat16"][0])))
        for p, (_, inst) in out.items():
            scores[p]["dice"].append(dice(inst > 0, sample.instances > 0))
            scores[p]["aji"].append(aggregated_jaccard_index(inst, sample.instances))
    default = "bfloat16" if load_model(name).trunk_uses_bf16(torch.device("cpu")) else "float32"
    return {
        "seconds_512": seconds,
        "speedup_bf16": round(seconds["float32"] / seconds["bfloat16"], 2),
        "default": {"precision": default, "seconds_512": seconds[default]},
        "agreement": {
            "same_class_fraction": round(float(np.mean(same)), 5),
            **{
                p: {k: round(float(np.mean(v)), 4) for k, v in s.items()} for p, s in scores.items()
            },
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", nargs="+", default=sorted(GENERATORS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    for name in args.models:
        result[name] = bench_model(name, args.repeats)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
