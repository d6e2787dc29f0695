"""Refinement cost against image size, a 20,000² image read lazily, and batch throughput.

Usage::

    python benchmarks/bench_scale.py [--sizes 512 2048 4096] [--big 20000] [--threads 2]
        [--no-batch]

Each size runs in its own process (so peak memory is its own) with ``hovernet-fluo`` on an
image tiled from synthetic fluorescence scenes. The same robot strokes are drawn in the
image's centre, and a :class:`~napari_scribble_refine.core.slide.SlideSession` refines on
the working region around them (their box plus its context): ``interaction_s`` is the
median over three interactions of a refinement and its prediction. The large image is a
zarr array written to a temporary folder; ``first_prediction_s_20000`` is the time from
opening it to the class map of a 2048² region at its centre (the trunk runs on the tiles
under it only: four 1024² tiles, since the tile grid is laid on the first region asked
for), and ``pan_prediction_s_20000`` the class map of the next 2048² region beside it,
half a tile off that grid (six new tiles); ``peak_rss_gb_20000`` is the process's peak
memory. A (16, 4096, 4096) zarr stack
is worked on slice by slice through the same tiles (``stack``, ``peak_rss_gb_stack``).
``write_s_per_megapixel_4096``: seconds per megapixel of ``write_prediction`` (the whole
4096² result with the tuned head, chunk by chunk).
Batch throughput with one and two local dask.distributed workers comes from
``bench_batch.py``. Prints one JSON
object with the goals beside the figures (issue 10).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCENE = 512
"""Side of the synthetic scenes the images are tiled from."""

N_SCENES = 8
"""Distinct scenes; a large image repeats them in a shuffled order."""

INTERACTIONS = 3


def _scenes() -> list:
    from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

    return [synthetic_fluorescence((SCENE, SCENE), seed=1000 + i) for i in range(N_SCENES)]


def _layout(size: int, seed: int | None = None) -> np.ndarray:
    """Which scene fills each cell of a size² image (the centre cell is always scene 0)."""
    n = -(-size // SCENE)
    order = np.random.default_rng(size if seed is None else seed).integers(0, N_SCENES, (n, n))
    order[n // 2, n // 2] = 0
    return order


def _centre(size: int) -> tuple[int, int]:
    n = -(-size // SCENE)
    return (n // 2) * SCENE, (n // 2) * SCENE


def _in_memory(size: int, scenes: list) -> tuple[np.ndarray, np.ndarray]:
    order = _layout(size)
    image = np.block([[scenes[k].image for k in row] for row in order])[:size, :size]
    truth = np.block([[(scenes[k].types > 0).astype(np.uint8) for k in row] for row in order])
    return np.ascontiguousarray(image), truth[:size, :size]


def _zarr(size: int, scenes: list, folder: Path) -> tuple[object, np.ndarray]:
    import dask.array as da
    import zarr

    order = _layout(size)
    blocks = [[da.from_array(scenes[k].image, chunks=SCENE) for k in row] for row in order]
    image = da.block(blocks)[:size, :size].rechunk(1024)
    path = folder / "big.zarr"
    da.to_zarr(image, str(path), overwrite=True)
    truth = np.zeros((SCENE, SCENE), np.uint8)
    truth[:] = scenes[0].types > 0
    return zarr.open_array(str(path), mode="r"), truth


def _strokes(session: object, truth_centre: np.ndarray, size: int, k: int, marks: np.ndarray):
    """Robot strokes of interaction ``k`` in the centre scene, added to ``marks``."""
    from napari_scribble_refine.evaluation.robot import RobotUser

    y, x = _centre(size)
    box = (slice(y, y + SCENE), slice(x, x + SCENE))
    predicted = session.predict(box)
    robot = RobotUser(truth_centre, 2, seed=7)
    crop, strokes = robot.interact(predicted, np.asarray(marks[box]), k)
    marks[box] = crop
    return len(strokes)


def _one(size: int, threads: int) -> dict:
    """Measure one image size (run in a child process)."""
    import torch

    from napari_scribble_refine.core import load_model
    from napari_scribble_refine.core.slide import SlideSession

    torch.set_num_threads(threads)
    scenes = _scenes()
    model = load_model("hovernet-fluo")
    out: dict = {"size": size}
    with tempfile.TemporaryDirectory() as tmp:
        if size > 8192:
            image, truth = _zarr(size, scenes, Path(tmp))
        else:
            image, full_truth = _in_memory(size, scenes)
            y, x = _centre(size)
            truth = full_truth[y : y + SCENE, x : x + SCENE]
        start = time.perf_counter()
        session = SlideSession(model, image)
        y, x = _centre(size)
        half = 1024
        view = (
            slice(max(0, y + SCENE // 2 - half), min(size, y + SCENE // 2 + half)),
            slice(max(0, x + SCENE // 2 - half), min(size, x + SCENE // 2 + half)),
        )
        session.predict(view)
        out["first_prediction_s"] = round(time.perf_counter() - start, 2)
        out["first_prediction_region"] = [
            view[0].stop - view[0].start,
            view[1].stop - view[1].start,
        ]
        out["trunk_tiles"] = session.features.computed
        if size > 2 * half:  # pan: a 2048² region half a tile off the first one's grid
            shift = 2 * half + 512 if view[1].stop + 2 * half + 512 <= size else -(2 * half + 512)
            pan = (view[0], slice(view[1].start + shift, view[1].stop + shift))
            pan = (view[0], slice(max(0, pan[1].start), min(size, pan[1].stop)))
            start = time.perf_counter()
            session.predict(pan)
            out["pan_prediction_s"] = round(time.perf_counter() - start, 2)
            out["trunk_tiles_pan"] = session.features.computed - out["trunk_tiles"]
        marks = np.zeros((size, size), np.uint8)
        seconds = []
        scene = (slice(y, y + SCENE), slice(x, x + SCENE))  # what the user looks at
        for k in range(1, INTERACTIONS + 1):
            if _strokes(session, truth, size, k, marks) == 0:
                break
            start = time.perf_counter()
            session.run(marks, region=scene)
            seconds.append(time.perf_counter() - start)
        region = session.working_region
        out["interaction_s"] = [round(s, 3) for s in seconds]
        out["interaction_median_s"] = round(float(np.median(seconds)), 3)
        out["working_region"] = [s.stop - s.start for s in region]
        out["trunk_tiles_after"] = session.features.computed
        out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        if size == 4096:  # the whole result, chunk by chunk, with the tuned head
            start = time.perf_counter()
            session.write_prediction(Path(tmp) / "result.zarr")
            seconds = time.perf_counter() - start
            out["write_s_per_megapixel"] = round(seconds / (size * size / 1e6), 2)
        session.close()
    return out


def _stack(threads: int, depth: int = 16, size: int = 4096) -> dict:
    """Measure a (depth, size, size) zarr stack: a region of its middle slice, strokes there."""
    import dask.array as da
    import torch

    from napari_scribble_refine.core import load_model
    from napari_scribble_refine.core.slide import SlideSession
    from napari_scribble_refine.evaluation.robot import RobotUser

    torch.set_num_threads(threads)
    scenes = _scenes()
    planes = [
        da.block([[da.from_array(scenes[k].image, chunks=SCENE) for k in row] for row in order])
        for order in (_layout(size, seed=size + z) for z in range(depth))
    ]
    stack = da.stack(planes).rechunk((1, 1024, 1024))
    out: dict = {"shape": [depth, size, size]}
    with tempfile.TemporaryDirectory() as tmp:
        import zarr

        da.to_zarr(stack, str(Path(tmp) / "stack.zarr"), overwrite=True)
        image = zarr.open_array(str(Path(tmp) / "stack.zarr"), mode="r")
        z, (y, x) = depth // 2, _centre(size)
        start = time.perf_counter()
        session = SlideSession(load_model("hovernet-fluo"), image, rgb=False)
        scene = (slice(z, z + 1), slice(y, y + SCENE), slice(x, x + SCENE))
        session.predict((slice(z, z + 1), slice(y - 768, y + 1280), slice(x - 768, x + 1280)))
        out["first_prediction_s"] = round(time.perf_counter() - start, 2)
        truth = (scenes[0].types > 0).astype(np.uint8)
        marks = np.zeros((depth, size, size), np.uint8)
        seconds = []
        for k in range(1, INTERACTIONS + 1):
            predicted = session.predict(scene)[0]
            crop, strokes = RobotUser(truth, 2, seed=7).interact(predicted, marks[scene][0], k)
            if not strokes:
                break
            marks[z, y : y + SCENE, x : x + SCENE] = crop
            start = time.perf_counter()
            session.run(marks, region=scene)
            seconds.append(time.perf_counter() - start)
        out["interaction_median_s"] = round(float(np.median(seconds)), 3)
        out["trunk_tiles"] = session.features.computed
        out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 2048, 4096])
    parser.add_argument("--big", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-batch", action="store_true")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stack", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(_one(args.one, args.threads)))
        return
    if args.stack:
        print(json.dumps(_stack(args.threads)))
        return
    runs = {}
    for size in [*args.sizes, args.big]:
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs[size] = json.loads(child.stdout.strip().splitlines()[-1])
        print(json.dumps(runs[size]), file=sys.stderr)
    child = subprocess.run(
        [sys.executable, __file__, "--stack", "--threads", str(args.threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    stack = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(stack), file=sys.stderr)
    result: dict = {"threads": args.threads, "runs": runs, "stack": stack}
    small, large, big = min(args.sizes), max(args.sizes), runs[args.big]
    ratio = runs[large]["interaction_median_s"] / runs[small]["interaction_median_s"]
    result[f"interaction_ratio_{large}_vs_{small}"] = round(ratio, 2)
    result[f"first_prediction_s_{args.big}"] = big["first_prediction_s"]
    result[f"pan_prediction_s_{args.big}"] = big.get("pan_prediction_s")
    result[f"interaction_s_{args.big}"] = big["interaction_median_s"]
    result[f"peak_rss_gb_{args.big}"] = big["peak_rss_gb"]
    result["peak_rss_gb_stack"] = stack["peak_rss_gb"]
    if "write_s_per_megapixel" in runs.get(4096, {}):
        result["write_s_per_megapixel_4096"] = runs[4096]["write_s_per_megapixel"]
    result["goals"] = {
        f"interaction_ratio_{large}_vs_{small}": "<= 1.5",
        f"first_prediction_s_{args.big}": "<= 10",
        f"interaction_s_{args.big}": "<= 1",
        f"peak_rss_gb_{args.big}": "<= 4",
        "peak_rss_gb_stack": "<= 4 (the memory budget holds for a (16, 4096, 4096) stack)",
        "batch_speedup_2_vs_1_workers": ">= 1.7",
    }
    if not args.no_batch:
        child = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("bench_batch.py"))],
            capture_output=True,
            text=True,
            check=True,
        )
        batch = json.loads(child.stdout.strip().splitlines()[-1])
        result["batch"] = batch
        result["batch_speedup_2_vs_1_workers"] = batch["batch_speedup_2_vs_1_workers"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
