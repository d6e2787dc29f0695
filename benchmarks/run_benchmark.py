"""Benchmark scribble-driven correction against rival methods with a robot user.

Usage::

    python benchmarks/run_benchmark.py [--data DIR] [--limit N] [--out DIR] [--threads 2]

Writes ``<out>/results.json`` (default ``benchmarks/results``), ``docs/benchmarks.md`` and the
``docs/benchmark_*.png`` plots. Not part of the test suite.
"""

from __future__ import annotations

import os
import sys


def _early_option(argv: list[str], name: str, default: int) -> int:
    """Read an integer option before numpy and torch start their thread pools."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith(f"{name}="):
            return int(arg.split("=", 1)[1])
    return default


_THREADS = _early_option(sys.argv, "--threads", 2)
_JOBS = _early_option(sys.argv, "--jobs", min(2, os.cpu_count() or 1))
_WORKER_THREADS = "SCRIBBLE_REFINE_BENCH_WORKER_THREADS"
"""Set for the worker processes, which run this module's top level again when spawned."""
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = os.environ.get(_WORKER_THREADS, str(_THREADS))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_data import ground_truth, list_samples, load_sample  # noqa: E402
from evaluate import (  # noqa: E402
    FIXED_KS,
    PAPER_DICE,
    aggregate,
    all_weights_eligible,
    evaluate_fixed,
    evaluate_method,
    instance_scores,
    make_methods,
    warm_up,
)

from napari_scribble_refine.evaluation.robot import RobotUser, sample_seed  # noqa: E402

SHARED_SESSION = ("ours", "ours-no-grow", "ours-paper", "ours-type-classifier")
"""Variants whose session is built with the initial prediction (its time is their setup)."""

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "nuclei"


class _Models(dict):
    """Models by kind ("grey", "rgb"), each loaded when first needed."""

    def __init__(self, grey: str, rgb: str, normalisation: str = "stored") -> None:
        super().__init__()
        self.names = {"grey": grey, "rgb": rgb}
        self.kwargs = {}
        if normalisation == "percentile":
            self.kwargs["normalisation"] = {"kind": "percentile", "low": 1.0, "high": 99.8}

    def __missing__(self, kind: str) -> object:
        from napari_scribble_refine.core.models.registry import load_model

        self[kind] = load_model(self.names[kind], **self.kwargs)
        return self[kind]


def _load_models(
    grey: str = "hovernet-fluo", rgb: str = "hovernet-he", normalisation: str = "stored"
) -> dict[str, object]:
    return _Models(grey, rgb, normalisation)


def _plan(args: argparse.Namespace) -> list[tuple[str, Path, bool]]:
    """(source, folder, run the all-weights variant?) for every sample, in report order."""
    sources = list_samples(args.data, args.limit)
    if args.sources:
        wanted = {s.strip() for s in args.sources.split(",")}
        sources = {k: v for k, v in sources.items() if k in wanted}
    plan = []
    for source, folders in sources.items():
        all_weights_runs = 0
        for folder in folders:
            eligible = all_weights_eligible(load_sample(folder))
            all_weights = eligible and all_weights_runs < args.all_weights_limit
            all_weights_runs += all_weights
            plan.append((source, folder, all_weights))
    return plan


_WORKER: dict = {}
"""Per-process state of a benchmark worker: its models and whether it has warmed up."""


def _init_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, args.threads // args.jobs))
    torch.manual_seed(args.seed)
    warnings.filterwarnings("ignore", category=UserWarning)
    _WORKER["models"] = _load_models(args.grey_model, args.rgb_model, args.model_normalisation)
    _WORKER["warm"] = False


def evaluate_sample(args: argparse.Namespace, source: str, folder: Path, all_weights: bool) -> dict:
    """Run every method with the robot on one sample (in a worker); return its record."""
    sample = load_sample(folder)
    model = _WORKER["models"]["rgb" if sample.rgb else "grey"]
    t0 = time.perf_counter()
    methods, problem, space = make_methods(sample, model, args, all_weights)
    setup_ours = time.perf_counter() - t0
    gt_cls = ground_truth(sample, space)
    if not _WORKER["warm"]:
        warm_up(methods, problem, gt_cls)
        _WORKER["warm"] = True
    seed = sample_seed(sample.name, args.seed)
    record = {
        "sample": sample.name,
        "source": source,
        "shape": list(sample.image.shape),
        "classes": space.names,
        "model": model.name,
        "setup_sec_ours": setup_ours,
        "threads": {"torch": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")},
        "methods": {},
        "fixed": {},
    }
    initial_scores = instance_scores(problem.initial, sample.labels)
    for name, factory in methods.items():
        robot = RobotUser(gt_cls, space.n_classes, seed=seed)
        record["methods"][name] = evaluate_method(
            factory,
            problem,
            robot,
            sample.labels,
            gt_cls,
            args.interactions,
            args.cap,
            initial_scores,
        )
        if name in SHARED_SESSION:  # their session (the trunk pass) was built above
            record["methods"][name]["setup_sec"] += setup_ours
        print(_progress(sample.name, name, record["methods"][name]), flush=True)
    if not args.no_fixed:
        robot = RobotUser(gt_cls, space.n_classes, seed=seed)
        record["fixed"] = evaluate_fixed(methods, problem, robot, gt_cls, FIXED_KS)
    return record


def _cost(folder: Path) -> int:
    """Pixels of a sample's image (the biggest start first, for an even load)."""
    from tifffile import TiffFile

    with TiffFile(folder / "image.tif") as tif:
        return int(np.prod(tif.pages[0].shape[:2]))


def run(args: argparse.Namespace) -> dict:
    """Run every method on every sample; return the results dictionary.

    Samples are shared among ``args.jobs`` worker processes of ``threads // jobs`` torch
    and BLAS threads each. Which worker takes which sample changes no figure but the
    seconds: each sample's robot and methods are seeded from the sample's name. (The thread
    count per worker, the CPU and the torch version can change floating-point sums, and
    with them the figures.)
    """
    started = time.time()
    load_start = os.getloadavg()
    plan = _plan(args)
    if args.jobs == 1:
        _init_worker(args)
        images = [evaluate_sample(args, *task) for task in plan]
    else:
        order = sorted(range(len(plan)), key=lambda i: -_cost(plan[i][1]))
        os.environ[_WORKER_THREADS] = str(max(1, args.threads // args.jobs))
        pool = ProcessPoolExecutor(
            args.jobs, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(args,)
        )
        try:
            futures = {i: pool.submit(evaluate_sample, args, *plan[i]) for i in order}
            del os.environ[_WORKER_THREADS]  # the workers have started
            images = [futures[i].result() for i in range(len(plan))]
        finally:
            os.environ.pop(_WORKER_THREADS, None)
            pool.shutdown(cancel_futures=True)
    elapsed = time.time() - started
    meta = machine_meta(args, load_start, elapsed)
    return {
        "meta": meta,
        "paper": {"source": "Sambaturu et al., MICCAI 2021, nucleus data", "dice": PAPER_DICE},
        **aggregate(images, args.interactions, args.cap),
        "images": images,
    }


def _progress(name: str, method: str, rec: dict) -> str:
    d = rec["dice"]
    secs = rec["sec"]
    med = f"{np.median(secs):.2f}s" if secs else "-"
    return (
        f"{name:45s} {method:18s} dice {d[0]:.3f} -> {d[min(3, len(d) - 1)]:.3f}@3 "
        f"-> {d[min(len(d) - 1, 10)]:.3f}@10  NoC90 {rec['noc90']}  {med}/call"
    )


def machine_meta(args: argparse.Namespace, load_start: tuple, elapsed: float) -> dict:
    """Describe the machine and the run."""
    import platform

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": " ".join(["python", "benchmarks/run_benchmark.py", *sys.argv[1:]]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "limit": args.limit,
        "limited_run": args.limit is not None,
        "data": str(args.data),
        "interactions": args.interactions,
        "noc_cap": args.cap,
        "seed": args.seed,
        "models": {"grey": args.grey_model, "rgb": args.rgb_model},
        "model_normalisation": args.model_normalisation,
        "threads": args.threads,
        "jobs": args.jobs,
        "torch_threads_per_job": max(1, args.threads // args.jobs),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(elapsed, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="<source>/<sample>/ folders")
    p.add_argument("--limit", type=int, default=None, help="first N samples of each source")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--docs", type=Path, default=REPO / "docs", help="report and plots folder")
    p.add_argument("--threads", type=int, default=_THREADS, help="CPU threads in all")
    p.add_argument(
        "--jobs",
        type=int,
        default=_JOBS,
        help="worker processes for the accuracy runs (threads // jobs torch threads each)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interactions", type=int, default=10, help="K")
    p.add_argument("--cap", type=int, default=20, help="NoC cap")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods")
    p.add_argument("--sources", default=None, help="comma-separated subset of sources")
    p.add_argument("--grey-model", default="hovernet-fluo", help="model for grey images")
    p.add_argument("--rgb-model", default="hovernet-he", help="model for RGB images")
    p.add_argument(
        "--model-normalisation",
        choices=("stored", "percentile"),
        default="stored",
        help="input scaling: what the weights file says, or 1st-99.8th percentile",
    )
    p.add_argument(
        "--all-weights-limit",
        type=int,
        default=2,
        help="run the all-weights variant on the first N samples up to 512² of each source",
    )
    p.add_argument("--no-fixed", action="store_true", help="skip the fixed-scribbles mode")
    p.add_argument(
        "--perf-sizes",
        default="256,512,1024,2048,4096",
        help="image sides for the seconds-vs-size table ('' to skip)",
    )
    p.add_argument("--no-core-bench", action="store_true", help="skip bench_refine.py")
    p.add_argument("--report-from", type=Path, default=None, help="only re-render a results.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write results, report and plots."""
    from performance import core_benchmark, size_scaling
    from plots import write_plots
    from report import verdict, write_report

    args = parse_args(argv)
    if args.report_from:  # re-render docs (e.g. after editing notes.md) without re-running
        results = json.loads(args.report_from.read_text())
        write_report(results, args.docs / "benchmarks.md", write_plots(results, args.docs))
        return
    t_start = time.time()
    warnings.filterwarnings("ignore", category=UserWarning)
    args.jobs = max(1, min(args.jobs, args.threads))
    results = run(args)
    torch.set_num_threads(args.threads)
    models = _load_models(args.grey_model, args.rgb_model, args.model_normalisation)
    sizes = [int(s) for s in args.perf_sizes.split(",") if s.strip()]
    results["performance"] = {
        "size_scaling": size_scaling(sizes, args.threads, models["grey"], args.seed)
        if sizes
        else [],
        "core_benchmark": None if args.no_core_bench else core_benchmark(REPO, args.threads),
    }
    results["meta"]["wall_seconds_total"] = round(time.time() - t_start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(_rounded(results), indent=1, default=_json_default)
    )
    plots = write_plots(results, args.docs)
    write_report(results, args.docs / "benchmarks.md", plots)
    print(
        f"wrote {args.out / 'results.json'}, {args.docs / 'benchmarks.md'} and {len(plots)} plots"
    )
    print("\n".join(verdict(results)))


def _rounded(obj: object, digits: int = 4) -> object:
    """Round floats (and NaN to None) throughout, to keep results.json small and diffable."""
    if isinstance(obj, float | np.floating):
        return None if not np.isfinite(obj) else round(float(obj), digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rounded(v, digits) for v in obj]
    return obj


def _json_default(obj: object) -> object:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if np.isnan(obj) else round(float(obj), 5)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj))


if __name__ == "__main__":
    main()
