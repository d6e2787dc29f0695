"""Batch throughput of ``apply_model`` on real worker processes: 1 against 2 workers.

Prints one JSON object with:

* ``images_per_s_1_worker``, ``images_per_s_2_workers``: images per second of
  :func:`napari_scribble_refine.batch.apply_model` on a ``LocalCluster`` of that many
  single-threaded worker processes, measured after the cluster has started and every
  worker has loaded the model and run it once (so the timing holds the batch: reading,
  prediction, nuclei and the written files, plus ``apply_model``'s own checks in the main
  process, which load the model once and hash its weights file);
* ``batch_speedup_2_vs_1_workers``: their ratio (the goal on a 2-core machine is 1.7 or
  more);
* the set-up: images, their size, the model, the cores and the load average before each
  measurement (other work on the machine slows both runs, and the ratio with them).

Run: ``python benchmarks/bench_batch.py [--images 16] [--size 512] [--model hovernet-fluo]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_scribble_refine import batch
from napari_scribble_refine.core import RefineConfig, RefineSession
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence, synthetic_he

SEED = 40_000_000
"""Seeds of the benchmark images: SEED, SEED + 1, ..."""


def _warm(model: str, image: np.ndarray) -> None:
    """Load the model into the worker's cache and run it once (a task, like the batch's)."""
    torch.set_num_threads(1)
    job = batch._Job("", model, batch._fingerprint(model), False, None, "cpu")
    RefineSession(batch._worker_model(job), image, RefineConfig(device="cpu")).predict()


def batch_throughput(n_workers: int, paths: list[Path], model: str, out_dir: Path) -> float:
    """Measure the images per second of one batch on ``n_workers`` worker processes.

    Parameters
    ----------
    n_workers : int
        Single-threaded worker processes of the local cluster.
    paths : list of Path
        The TIFF images.
    model : str
        A built-in model name or a model file.
    out_dir : Path
        An empty, existing folder for the outputs.

    Returns
    -------
    float
        Images per second of :func:`~napari_scribble_refine.batch.apply_model`, timed
        after the cluster has started and each worker has loaded and run the model.

    Raises
    ------
    RuntimeError
        When an image was not written.
    """
    from distributed import Client, LocalCluster

    image = tifffile.imread(paths[0])[:256, :256]
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(n_workers)
        warm = [
            client.submit(_warm, model, image, workers=[address], pure=False)
            for address in client.scheduler_info()["workers"]
        ]
        client.gather(warm)
        start = time.perf_counter()
        report = batch.apply_model(model, paths, out_dir, scheduler=client)
        seconds = time.perf_counter() - start
    if report.failed or len(report.written) != len(paths):
        raise RuntimeError(f"the batch did not write every image: {report.summary()}")
    return len(paths) / seconds


def main() -> None:
    """Write the benchmark images, time 1 and 2 workers, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", default="hovernet-fluo")
    args = parser.parse_args()
    generate = synthetic_he if args.model == "hovernet-he" else synthetic_fluorescence
    result: dict = {
        "model": args.model,
        "images": args.images,
        "size": args.size,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = []
        for i in range(args.images):
            path = folder / f"bench{i:03d}.tif"
            tifffile.imwrite(path, generate((args.size, args.size), seed=SEED + i).image)
            paths.append(path)
        rates = {}
        for n in (1, 2):
            out = folder / f"out{n}"
            out.mkdir()
            result[f"load_average_before_{n}_worker{'s' if n > 1 else ''}"] = round(
                os.getloadavg()[0], 2
            )
            rates[n] = batch_throughput(n, paths, args.model, out)
    result["images_per_s_1_worker"] = round(rates[1], 3)
    result["images_per_s_2_workers"] = round(rates[2], 3)
    result["batch_speedup_2_vs_1_workers"] = round(rates[2] / rates[1], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
